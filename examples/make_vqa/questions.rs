//! Question templates, their answers on a drawn scene, and every question a scene answers.

use crate::scene::{Color, Scene, Shape, Size, CLEAR};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Color,
    Count,
    Exist,
    Spatial,
    Text,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Color,
        Kind::Count,
        Kind::Exist,
        Kind::Spatial,
        Kind::Text,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Color => "color",
            Kind::Count => "count",
            Kind::Exist => "exist",
            Kind::Spatial => "spatial",
            Kind::Text => "text",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    /// The answer naming this relation.
    pub fn name(self) -> &'static str {
        match self {
            Relation::LeftOf => "left",
            Relation::RightOf => "right",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    pub fn axis(self) -> Axis {
        match self {
            Relation::LeftOf | Relation::RightOf => Axis::Horizontal,
            Relation::Above | Relation::Below => Axis::Vertical,
        }
    }

    /// Whether box `a` is clearly (at least [`CLEAR`] px) in this relation to box `b`; boxes
    /// are `[x0, y0, x1, y1)`.
    pub fn holds(self, a: &[i32; 4], b: &[i32; 4]) -> bool {
        match self {
            Relation::LeftOf => a[2] + CLEAR <= b[0],
            Relation::RightOf => b[2] + CLEAR <= a[0],
            Relation::Above => a[3] + CLEAR <= b[1],
            Relation::Below => b[3] + CLEAR <= a[1],
        }
    }
}

/// The axis a spatial question asks about; the answer names the relation that holds on it.
/// (Asked as yes/no, "is A left of B", the answer is the exclusive-or of the relation word and
/// the objects' order, which the demo decoder never learnt; see the README.)
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Axis {
    Horizontal,
    Vertical,
}

impl Axis {
    pub const ALL: [Axis; 2] = [Axis::Horizontal, Axis::Vertical];

    pub fn words(self) -> &'static str {
        match self {
            Axis::Horizontal => "left or right of",
            Axis::Vertical => "above or below",
        }
    }
}

/// Which label a text question reads: the only one, or the left or right of two.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Which {
    Only,
    Left,
    Right,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Query {
    /// The colour of the one object of this shape (and size, when given).
    Color {
        shape: Shape,
        size: Option<Size>,
    },
    CountShape(Shape),
    CountColor(Color),
    Exist(Color, Shape),
    Spatial {
        a: (Color, Shape),
        axis: Axis,
        b: (Color, Shape),
    },
    Text(Which),
}

impl Query {
    pub fn kind(&self) -> Kind {
        match self {
            Query::Color { .. } => Kind::Color,
            Query::CountShape(_) | Query::CountColor(_) => Kind::Count,
            Query::Exist(..) => Kind::Exist,
            Query::Spatial { .. } => Kind::Spatial,
            Query::Text(_) => Kind::Text,
        }
    }

    pub fn text(&self) -> String {
        match *self {
            Query::Color { shape, size: None } => format!("What color is the {}?", shape.name()),
            Query::Color {
                shape,
                size: Some(size),
            } => {
                format!("What color is the {} {}?", size.name(), shape.name())
            }
            Query::CountShape(shape) => format!("How many {} are there?", shape.plural()),
            Query::CountColor(color) => format!("How many {} objects are there?", color.name()),
            Query::Exist(color, shape) => {
                let article = if color == Color::Orange { "an" } else { "a" };
                format!("Is there {article} {} {}?", color.name(), shape.name())
            }
            Query::Spatial { a, axis, b } => format!(
                "Is the {} {} {} the {} {}?",
                a.0.name(),
                a.1.name(),
                axis.words(),
                b.0.name(),
                b.1.name()
            ),
            Query::Text(Which::Only) => "What character is on the label?".to_string(),
            Query::Text(Which::Left) => "What character is on the left label?".to_string(),
            Query::Text(Which::Right) => "What character is on the right label?".to_string(),
        }
    }

    /// The answer on `scene` (after drawing), or `None` where the question would be ambiguous:
    /// a colour question whose object is not unique (or names a size it does not need), a
    /// spatial question about objects that are not unique or not clearly apart on its axis, a
    /// text question that does not match the labels.
    pub fn answer(&self, scene: &Scene) -> Option<String> {
        let objects = &scene.objects;
        match *self {
            Query::Color { shape, size } => {
                let same_shape: Vec<_> = objects.iter().filter(|o| o.shape == shape).collect();
                let matching: Vec<_> = same_shape
                    .iter()
                    .filter(|o| size.is_none_or(|s| o.size == s))
                    .collect();
                let needs_size = same_shape.len() > 1;
                (matching.len() == 1 && needs_size == size.is_some())
                    .then(|| matching[0].color.name().to_string())
            }
            Query::CountShape(shape) => Some(
                objects
                    .iter()
                    .filter(|o| o.shape == shape)
                    .count()
                    .to_string(),
            ),
            Query::CountColor(color) => Some(
                objects
                    .iter()
                    .filter(|o| o.color == color)
                    .count()
                    .to_string(),
            ),
            Query::Exist(color, shape) => {
                let yes = objects.iter().any(|o| (o.color, o.shape) == (color, shape));
                Some(if yes { "yes" } else { "no" }.to_string())
            }
            Query::Spatial { a, axis, b } => {
                let find = |(c, s): (Color, Shape)| {
                    let mut it = objects.iter().filter(move |o| (o.color, o.shape) == (c, s));
                    let first = it.next()?;
                    it.next().is_none().then_some(first)
                };
                let (oa, ob) = (find(a)?, find(b)?);
                Relation::ALL
                    .into_iter()
                    .find(|rel| rel.axis() == axis && rel.holds(&oa.bbox, &ob.bbox))
                    .map(|rel| rel.name().to_string())
            }
            Query::Text(which) => {
                let labels = &scene.labels;
                let label = match (which, labels.len()) {
                    (Which::Only, 1) => &labels[0],
                    (Which::Left | Which::Right, 2) => {
                        let (l, r) = (&labels[0], &labels[1]);
                        if !Relation::LeftOf.holds(&l.bbox(), &r.bbox()) {
                            return None;
                        }
                        if which == Which::Left {
                            l
                        } else {
                            r
                        }
                    }
                    _ => return None,
                };
                Some(label.ch.to_ascii_lowercase().to_string())
            }
        }
    }
}

/// Every question `scene` answers unambiguously, with its answer, in a fixed order.
pub fn candidates(scene: &Scene) -> Vec<(Query, String)> {
    let mut queries = Vec::new();
    for shape in Shape::ALL {
        queries.push(Query::Color { shape, size: None });
        for size in Size::ALL {
            queries.push(Query::Color {
                shape,
                size: Some(size),
            });
        }
        queries.push(Query::CountShape(shape));
    }
    for color in Color::ALL {
        queries.push(Query::CountColor(color));
        for shape in Shape::ALL {
            queries.push(Query::Exist(color, shape));
        }
    }
    for oa in &scene.objects {
        for ob in &scene.objects {
            if std::ptr::eq(oa, ob) {
                continue;
            }
            for axis in Axis::ALL {
                let (a, b) = ((oa.color, oa.shape), (ob.color, ob.shape));
                queries.push(Query::Spatial { a, axis, b });
            }
        }
    }
    for which in [Which::Only, Which::Left, Which::Right] {
        queries.push(Query::Text(which));
    }
    let mut out: Vec<(Query, String)> = Vec::new();
    for q in queries {
        if out.iter().any(|(p, _)| *p == q) {
            continue;
        }
        if let Some(answer) = q.answer(scene) {
            out.push((q, answer));
        }
    }
    out
}
