//! The world: shapes, colours, sizes, labels, and scenes built to answer a planned question.

use crate::questions::{Kind, Query, Relation, Which};
use crate::rng::Rng;

/// Image side in pixels, patch side, patches per side (CLIP ViT-L/14 at 336 px).
pub const IMAGE: i32 = 336;
pub const PATCH: i32 = 14;
pub const GRID: i32 = IMAGE / PATCH;

/// Most objects in a scene, and most of them large.
pub const MAX_OBJECTS: usize = 8;
const MAX_LARGE: usize = 3;
/// Empty pixels between any two things' boxes, and between a box and the image edge.
const GAP: i32 = 6;
const BORDER: i32 = 4;
/// Pixels between two boxes for a spatial relation to count as clear (one patch).
pub const CLEAR: i32 = PATCH;
/// A label: a 5 x 7 px character on a card that is exactly one patch, on the patch grid: the
/// finest detail there is (one visual token of 576), and one a small tower learns to read in
/// minutes (a glyph split over patches at random offsets takes it hours).
pub const LABEL_W: i32 = PATCH;
pub const LABEL_H: i32 = PATCH;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
        Shape::Cross,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Diamond => "diamonds",
            Shape::Cross => "crosses",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Color {
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }

    /// The nominal colour; each object is jittered by up to [`JITTER`] per channel.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [205, 35, 35],
            Color::Green => [40, 160, 60],
            Color::Blue => [40, 80, 215],
            Color::Yellow => [240, 210, 20],
            Color::Purple => [140, 55, 180],
            Color::Orange => [245, 125, 20],
        }
    }
}

pub const JITTER: i32 = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// Side of the object's square box in pixels, inclusive range.
    pub fn sides(self) -> (i32, i32) {
        match self {
            Size::Small => (20, 28),
            Size::Large => (60, 84),
        }
    }
}

pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    pub side: i32,
    /// Top-left corner of the object's `side` x `side` box.
    pub x0: i32,
    pub y0: i32,
    pub rgb: [u8; 3],
    /// Filled in by drawing: the box `[x0, y0, x1, y1)` of the pixels at least half covered,
    /// and the patches (`row * GRID + col`) holding such pixels.
    pub bbox: [i32; 4],
    pub cells: Vec<u16>,
}

impl Object {
    pub fn center(&self) -> [i32; 2] {
        [self.x0 + self.side / 2, self.y0 + self.side / 2]
    }
}

pub struct Label {
    pub ch: char,
    pub x0: i32,
    pub y0: i32,
}

impl Label {
    pub fn bbox(&self) -> [i32; 4] {
        [self.x0, self.y0, self.x0 + LABEL_W, self.y0 + LABEL_H]
    }

    pub fn center(&self) -> [i32; 2] {
        [self.x0 + LABEL_W / 2, self.y0 + LABEL_H / 2]
    }
}

#[derive(Clone, Copy)]
pub enum Background {
    /// Linear ramp of +-`amp` levels across the image.
    Gradient { vertical: bool, amp: i32 },
    /// Bands `period` px apart, darker by `amp`; `dir` 0 vertical, 1 horizontal, 2 and 3
    /// diagonal.
    Stripes { period: i32, dir: u8, amp: i32 },
    /// A checkerboard of `cell` px squares offset by `off`, +-`amp` levels.
    Checks { cell: i32, off: [i32; 2], amp: i32 },
}

impl Background {
    pub fn name(&self) -> &'static str {
        match self {
            Background::Gradient { .. } => "gradient",
            Background::Stripes { .. } => "stripes",
            Background::Checks { .. } => "checks",
        }
    }
}

pub struct Scene {
    pub base: [u8; 3],
    pub background: Background,
    pub objects: Vec<Object>,
    pub labels: Vec<Label>,
}

struct ObjectSpec {
    shape: Shape,
    color: Color,
    size: Size,
}

/// What a scene must hold before it is placed: objects, labels left to right, and at most one
/// relation between the first two objects (`relation(box of 0, box of 1)` must hold clearly).
pub struct Spec {
    objects: Vec<ObjectSpec>,
    relation: Option<Relation>,
    labels: Vec<char>,
}

fn other<T: Copy + PartialEq>(rng: &mut Rng, all: &[T], not: T) -> T {
    loop {
        let v = rng.pick(all);
        if v != not {
            return v;
        }
    }
}

fn random_size(objects: &[ObjectSpec], rng: &mut Rng) -> Size {
    let large = objects.iter().filter(|o| o.size == Size::Large).count();
    if large < MAX_LARGE && rng.chance(2, 5) {
        Size::Large
    } else {
        Size::Small
    }
}

/// Adds random objects allowed by `ok` until there are `total`.
fn fill(
    objects: &mut Vec<ObjectSpec>,
    total: usize,
    rng: &mut Rng,
    ok: impl Fn(Shape, Color) -> bool,
) {
    while objects.len() < total {
        let (shape, color) = (rng.pick(&Shape::ALL), rng.pick(&Color::ALL));
        if ok(shape, color) {
            let size = random_size(objects, rng);
            objects.push(ObjectSpec { shape, color, size });
        }
    }
}

fn push(objects: &mut Vec<ObjectSpec>, shape: Shape, color: Color, rng: &mut Rng) {
    let size = random_size(objects, rng);
    objects.push(ObjectSpec { shape, color, size });
}

/// 0 labels 2/5 of the time, 1 or 2 otherwise, with distinct characters.
fn random_labels(rng: &mut Rng) -> Vec<char> {
    let n = match rng.below(10) {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2,
    };
    let chars: Vec<char> = crate::font::CHARSET.chars().collect();
    let mut out: Vec<char> = Vec::new();
    while out.len() < n {
        let c = rng.pick(&chars);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// How many answers a planned question of `kind` can have: colours, counts 0 to
/// [`MAX_OBJECTS`], yes and no, the four relations, characters.
pub fn answer_count(kind: Kind) -> usize {
    match kind {
        Kind::Color => Color::ALL.len(),
        Kind::Count => MAX_OBJECTS + 1,
        Kind::Exist => 2,
        Kind::Spatial => Relation::ALL.len(),
        Kind::Text => crate::font::CHARSET.len(),
    }
}

/// A question of `kind` whose answer is number `slot` of [`answer_count`] (yes before no;
/// relations in [`Relation::ALL`] order), and a scene spec that makes it true.
pub fn plan(kind: Kind, slot: usize, rng: &mut Rng) -> (Spec, Query, String) {
    let mut objects = Vec::new();
    let mut relation = None;
    let mut labels = random_labels(rng);
    let total =
        |rng: &mut Rng, least: usize| rng.range(least.max(1) as i32, MAX_OBJECTS as i32) as usize;
    let (query, answer) = match kind {
        Kind::Color => {
            let (shape, color) = (rng.pick(&Shape::ALL), Color::ALL[slot]);
            let size = rng.pick(&Size::ALL);
            objects.push(ObjectSpec { shape, color, size });
            // Half the time a second object of the same shape, the other size and another
            // colour, so the question has to name the size.
            let with_size = rng.chance(1, 2);
            if with_size {
                let size = if size == Size::Small {
                    Size::Large
                } else {
                    Size::Small
                };
                let color = other(rng, &Color::ALL, color);
                objects.push(ObjectSpec { shape, color, size });
            }
            let n = total(rng, objects.len());
            fill(&mut objects, n, rng, |s, _| s != shape);
            let size = with_size.then_some(size);
            (Query::Color { shape, size }, color.name().to_string())
        }
        Kind::Count => {
            let count = slot;
            let n = total(rng, count);
            if rng.chance(1, 2) {
                let shape = rng.pick(&Shape::ALL);
                for _ in 0..count {
                    let color = rng.pick(&Color::ALL);
                    push(&mut objects, shape, color, rng);
                }
                fill(&mut objects, n, rng, |s, _| s != shape);
                (Query::CountShape(shape), count.to_string())
            } else {
                let color = rng.pick(&Color::ALL);
                for _ in 0..count {
                    let shape = rng.pick(&Shape::ALL);
                    push(&mut objects, shape, color, rng);
                }
                fill(&mut objects, n, rng, |_, c| c != color);
                (Query::CountColor(color), count.to_string())
            }
        }
        Kind::Exist => {
            let (shape, color) = (rng.pick(&Shape::ALL), rng.pick(&Color::ALL));
            let yes = slot == 0;
            if yes {
                push(&mut objects, shape, color, rng);
            } else if rng.chance(1, 2) {
                // POPE's adversarial probe: the shape and the colour are both there, apart.
                let c = other(rng, &Color::ALL, color);
                push(&mut objects, shape, c, rng);
                let s = other(rng, &Shape::ALL, shape);
                push(&mut objects, s, color, rng);
            }
            let n = total(rng, objects.len());
            fill(&mut objects, n, rng, |s, c| yes || (s, c) != (shape, color));
            let answer = if yes { "yes" } else { "no" };
            (Query::Exist(color, shape), answer.to_string())
        }
        Kind::Spatial => {
            let a = (rng.pick(&Shape::ALL), rng.pick(&Color::ALL));
            let b = other(rng, &combos(), a);
            push(&mut objects, a.0, a.1, rng);
            push(&mut objects, b.0, b.1, rng);
            let rel = Relation::ALL[slot];
            relation = Some(rel);
            let n = total(rng, 2);
            fill(&mut objects, n, rng, |s, c| (s, c) != a && (s, c) != b);
            let query = Query::Spatial {
                a: (a.1, a.0),
                axis: rel.axis(),
                b: (b.1, b.0),
            };
            (query, rel.name().to_string())
        }
        Kind::Text => {
            let chars: Vec<char> = crate::font::CHARSET.chars().collect();
            let target = chars[slot];
            let n = total(rng, 0);
            fill(&mut objects, n, rng, |_, _| true);
            let which = if rng.chance(1, 2) {
                labels = vec![target];
                Which::Only
            } else {
                let second = other(rng, &chars, target);
                if rng.chance(1, 2) {
                    labels = vec![target, second];
                    Which::Left
                } else {
                    labels = vec![second, target];
                    Which::Right
                }
            };
            (Query::Text(which), target.to_ascii_lowercase().to_string())
        }
    };
    let spec = Spec {
        objects,
        relation,
        labels,
    };
    (spec, query, answer)
}

fn combos() -> Vec<(Shape, Color)> {
    Shape::ALL
        .iter()
        .flat_map(|&s| Color::ALL.iter().map(move |&c| (s, c)))
        .collect()
}

fn apart(a: &[i32; 4], b: &[i32; 4]) -> bool {
    a[2] + GAP <= b[0] || b[2] + GAP <= a[0] || a[3] + GAP <= b[1] || b[3] + GAP <= a[1]
}

/// A free spot for a `w` x `h` box (its corner on the patch grid if `grid`), or `None` after
/// enough tries.
fn spot(
    placed: &[[i32; 4]],
    w: i32,
    h: i32,
    grid: bool,
    rng: &mut Rng,
    ok: impl Fn(&[i32; 4]) -> bool,
) -> Option<[i32; 4]> {
    for _ in 0..200 {
        let (mut x, mut y) = (
            rng.range(BORDER, IMAGE - BORDER - w),
            rng.range(BORDER, IMAGE - BORDER - h),
        );
        if grid {
            let up = |v: i32| (v + PATCH - 1) / PATCH * PATCH;
            (x, y) = (up(x), up(y));
            if x + w > IMAGE - BORDER || y + h > IMAGE - BORDER {
                continue;
            }
        }
        let b = [x, y, x + w, y + h];
        if ok(&b) && placed.iter().all(|p| apart(p, &b)) {
            return Some(b);
        }
    }
    None
}

/// Lays the spec out without overlaps (large objects first), or `None` if it does not fit.
pub fn place(spec: &Spec, rng: &mut Rng) -> Option<Scene> {
    let sides: Vec<i32> = spec
        .objects
        .iter()
        .map(|o| {
            let (lo, hi) = o.size.sides();
            rng.range(lo, hi)
        })
        .collect();
    let mut order: Vec<usize> = (0..spec.objects.len()).collect();
    let fixed = if spec.relation.is_some() { 2 } else { 0 };
    order[fixed..].sort_by_key(|&i| std::cmp::Reverse(sides[i]));
    'attempt: for _ in 0..50 {
        let mut placed: Vec<[i32; 4]> = Vec::new();
        let mut boxes = vec![[0; 4]; spec.objects.len()];
        for &i in &order {
            let s = sides[i];
            let b = match (i, spec.relation) {
                (1, Some(rel)) => spot(&placed, s, s, false, rng, |b| rel.holds(&boxes[0], b)),
                _ => spot(&placed, s, s, false, rng, |_| true),
            };
            let Some(b) = b else { continue 'attempt };
            boxes[i] = b;
            placed.push(b);
        }
        let mut label_boxes: Vec<[i32; 4]> = Vec::new();
        for _ in &spec.labels {
            let left = label_boxes.last().copied();
            let b = spot(&placed, LABEL_W, LABEL_H, true, rng, |b| {
                left.is_none_or(|l| Relation::LeftOf.holds(&l, b))
            });
            let Some(b) = b else { continue 'attempt };
            label_boxes.push(b);
            placed.push(b);
        }
        let objects = spec
            .objects
            .iter()
            .zip(&boxes)
            .zip(&sides)
            .map(|((o, b), &side)| {
                let rgb = o
                    .color
                    .rgb()
                    .map(|v| (v as i32 + rng.range(-JITTER, JITTER)).clamp(0, 255) as u8);
                Object {
                    shape: o.shape,
                    color: o.color,
                    size: o.size,
                    side,
                    x0: b[0],
                    y0: b[1],
                    rgb,
                    bbox: [0; 4],
                    cells: Vec::new(),
                }
            })
            .collect();
        let labels = spec
            .labels
            .iter()
            .zip(&label_boxes)
            .map(|(&ch, b)| Label {
                ch,
                x0: b[0],
                y0: b[1],
            })
            .collect();
        let gray = rng.range(212, 238);
        let base = [0; 3].map(|_: u8| (gray + rng.range(-8, 8)) as u8);
        let background = match rng.below(3) {
            0 => Background::Gradient {
                vertical: rng.chance(1, 2),
                amp: rng.range(8, 16),
            },
            1 => Background::Stripes {
                period: rng.range(10, 22),
                dir: rng.below(4) as u8,
                amp: rng.range(5, 9),
            },
            _ => Background::Checks {
                cell: rng.range(20, 44),
                off: [rng.range(0, 43), rng.range(0, 43)],
                amp: rng.range(4, 8),
            },
        };
        return Some(Scene {
            base,
            background,
            objects,
            labels,
        });
    }
    None
}
