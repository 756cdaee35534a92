//! Drawing a placed scene: textured background, grey clutter, antialiased shapes, labels.

use crate::font;
use crate::rng::Rng;
use crate::scene::{Background, Scene, Shape, GRID, IMAGE, LABEL_H, LABEL_W, PATCH};
use image::{Rgb, RgbImage};

/// Subsamples per pixel side for coverage (4 x 4 = 16 per pixel).
const SUB: i32 = 4;

fn shade(base: [u8; 3], delta: i32) -> Rgb<u8> {
    Rgb(base.map(|v| (v as i32 + delta).clamp(0, 255) as u8))
}

fn background(img: &mut RgbImage, base: [u8; 3], bg: Background) {
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (x, y) = (x as i32, y as i32);
        let delta = match bg {
            Background::Gradient { vertical, amp } => {
                let t = if vertical { y } else { x };
                t * 2 * amp / IMAGE - amp
            }
            Background::Stripes { period, dir, amp } => {
                let t = match dir {
                    0 => x,
                    1 => y,
                    2 => x + y,
                    _ => x - y + IMAGE,
                };
                if t % period < period / 2 {
                    -amp
                } else {
                    0
                }
            }
            Background::Checks { cell, off, amp } => {
                if ((x + off[0]) / cell + (y + off[1]) / cell) % 2 == 0 {
                    amp
                } else {
                    -amp
                }
            }
        };
        *px = shade(base, delta);
    }
}

fn put(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
    if (0..IMAGE).contains(&x) && (0..IMAGE).contains(&y) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A few thin grey lines and small grey dots, darker than the background: nothing like an
/// object (no colour, at most 2 px thick).
fn clutter(img: &mut RgbImage, base: [u8; 3], rng: &mut Rng) {
    for _ in 0..rng.range(2, 5) {
        let c = shade(base, -rng.range(40, 70));
        let (x0, y0) = (rng.range(0, IMAGE - 1), rng.range(0, IMAGE - 1));
        let (dx, dy) = (rng.range(-100, 100), rng.range(-100, 100));
        let n = dx.abs().max(dy.abs()).max(1);
        for i in 0..=n {
            put(img, x0 + dx * i / n, y0 + dy * i / n, c);
        }
    }
    for _ in 0..rng.range(3, 10) {
        let c = shade(base, -rng.range(40, 70));
        let (x, y) = (rng.range(0, IMAGE - 2), rng.range(0, IMAGE - 2));
        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x + ox, y + oy, c);
        }
    }
}

/// Whether the point (`u`, `v`), relative to the centre of a box of half-side `r`, is inside.
fn inside(shape: Shape, u: f32, v: f32, r: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match shape {
        Shape::Circle => u * u + v * v <= r * r,
        Shape::Square => au <= 0.85 * r && av <= 0.85 * r,
        // Apex up at the top edge, base along the bottom edge.
        Shape::Triangle => v <= r && au <= (v + r) * 0.5,
        Shape::Diamond => au + av <= r,
        Shape::Cross => {
            let t = r / 3.0;
            (au <= t && av <= r) || (av <= t && au <= r)
        }
    }
}

/// Draws the scene and fills in each object's drawn box and patch cells.
pub fn render(scene: &mut Scene, rng: &mut Rng) -> RgbImage {
    let mut img = RgbImage::new(IMAGE as u32, IMAGE as u32);
    background(&mut img, scene.base, scene.background);
    clutter(&mut img, scene.base, rng);
    for o in &mut scene.objects {
        let r = o.side as f32 * 0.5;
        let (cx, cy) = (o.x0 as f32 + r, o.y0 as f32 + r);
        let mut bbox = [i32::MAX, i32::MAX, i32::MIN, i32::MIN];
        let mut cells = Vec::new();
        for y in o.y0..o.y0 + o.side {
            for x in o.x0..o.x0 + o.side {
                let mut hits = 0;
                for sy in 0..SUB {
                    for sx in 0..SUB {
                        let u = x as f32 + (sx as f32 + 0.5) / SUB as f32 - cx;
                        let v = y as f32 + (sy as f32 + 0.5) / SUB as f32 - cy;
                        hits += inside(o.shape, u, v, r) as i32;
                    }
                }
                if hits == 0 {
                    continue;
                }
                let n = SUB * SUB;
                let px = img.get_pixel_mut(x as u32, y as u32);
                for (p, &c) in px.0.iter_mut().zip(&o.rgb) {
                    *p = ((*p as i32 * (n - hits) + c as i32 * hits + n / 2) / n) as u8;
                }
                if 2 * hits >= n {
                    bbox = [
                        bbox[0].min(x),
                        bbox[1].min(y),
                        bbox[2].max(x + 1),
                        bbox[3].max(y + 1),
                    ];
                    let cell = ((y / PATCH) * GRID + x / PATCH) as u16;
                    if !cells.contains(&cell) {
                        cells.push(cell);
                    }
                }
            }
        }
        cells.sort_unstable();
        o.bbox = bbox;
        o.cells = cells;
    }
    for l in &scene.labels {
        let [x0, y0, x1, y1] = l.bbox();
        for y in y0..y1 {
            for x in x0..x1 {
                let edge = x == x0 || y == y0 || x == x1 - 1 || y == y1 - 1;
                put(
                    &mut img,
                    x,
                    y,
                    if edge {
                        Rgb([110, 110, 110])
                    } else {
                        Rgb([250, 250, 246])
                    },
                );
            }
        }
        let glyph = font::glyph(l.ch).expect("label characters come from the charset");
        let (gx, gy) = (
            x0 + (LABEL_W - font::WIDTH as i32) / 2,
            y0 + (LABEL_H - font::HEIGHT as i32) / 2,
        );
        for (row, bits) in glyph.iter().enumerate() {
            for (col, &ink) in bits.iter().enumerate() {
                if ink {
                    put(
                        &mut img,
                        gx + col as i32,
                        gy + row as i32,
                        Rgb([25, 25, 25]),
                    );
                }
            }
        }
    }
    img
}

/// The patch cells (`row * GRID + col`) a box `[x0, y0, x1, y1)` touches.
pub fn box_cells(b: [i32; 4]) -> Vec<u16> {
    let mut out = Vec::new();
    for row in b[1] / PATCH..=(b[3] - 1) / PATCH {
        for col in b[0] / PATCH..=(b[2] - 1) / PATCH {
            out.push((row * GRID + col) as u16);
        }
    }
    out
}
