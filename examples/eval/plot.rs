//! The sweep's plot: accuracy against visual tokens (log scale), one coloured line per method,
//! with axes, ticks and a legend, drawn pixel by pixel with `image` and a 3x5 bitmap font.

use image::{Rgb, RgbImage};
use std::path::Path;

pub struct Line {
    pub name: String,
    /// (visual tokens, accuracy in 0..1)
    pub points: Vec<(f64, f64)>,
}

const W: u32 = 900;
const H: u32 = 520;
/// Plot area: left, top, right, bottom.
const AREA: (i32, i32, i32, i32) = (70, 40, 690, 460);
const SCALE: i32 = 2;

const PALETTE: [[u8; 3]; 14] = [
    [214, 39, 40],
    [31, 119, 180],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [0, 0, 0],
    [120, 30, 120],
    [0, 90, 50],
    [200, 160, 0],
];

pub fn accuracy_vs_tokens(path: &Path, lines: &[Line], full: usize) -> Result<(), String> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (l, t, r, b) = AREA;
    let lo = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|p| p.0))
        .fold(full as f64, f64::min)
        .max(1.0);
    let (x0, x1) = ((lo * 0.8).log2(), (full as f64 * 1.15).log2());
    let x_at = |tokens: f64| l + ((tokens.log2() - x0) / (x1 - x0) * (r - l) as f64) as i32;
    let y_at = |acc: f64| b - (acc.clamp(0.0, 1.0) * (b - t) as f64) as i32;
    let grey = Rgb([210, 210, 210]);
    let ink = Rgb([0, 0, 0]);
    // Grid, ticks and labels: accuracy every 10%, tokens where the sweep measured.
    for tenth in 0..=10 {
        let y = y_at(tenth as f64 / 10.0);
        hline(&mut img, l, r, y, grey);
        text(
            &mut img,
            l - 8 - text_width(&format!("{}", tenth * 10)),
            y - 5,
            &format!("{}", tenth * 10),
            ink,
        );
    }
    let mut ticks: Vec<usize> = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|p| p.0 as usize))
        .chain([full])
        .collect();
    ticks.sort();
    ticks.dedup();
    for v in ticks {
        let x = x_at(v as f64);
        vline(&mut img, x, t, b, grey);
        let label = v.to_string();
        text(&mut img, x - text_width(&label) / 2, b + 8, &label, ink);
    }
    hline(&mut img, l, r, b, ink);
    vline(&mut img, l, t, b, ink);
    text(&mut img, l, 12, "accuracy % vs visual tokens kept", ink);
    text(
        &mut img,
        (l + r) / 2 - text_width("visual tokens") / 2,
        b + 26,
        "visual tokens",
        ink,
    );
    for (i, line) in lines.iter().enumerate() {
        let c = Rgb(PALETTE[i % PALETTE.len()]);
        let mut pts: Vec<(i32, i32)> = line
            .points
            .iter()
            .map(|&(x, y)| (x_at(x), y_at(y)))
            .collect();
        pts.sort();
        for w in pts.windows(2) {
            segment(&mut img, w[0], w[1], c);
        }
        for &(x, y) in &pts {
            square(&mut img, x, y, 3, c);
        }
        let ly = t + 4 + i as i32 * 22;
        square(&mut img, r + 24, ly + 5, 5, c);
        text(&mut img, r + 36, ly, &line.name, ink);
    }
    img.save(path).map_err(|e| e.to_string())
}

fn put(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < W && (y as u32) < H {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn hline(img: &mut RgbImage, x0: i32, x1: i32, y: i32, c: Rgb<u8>) {
    (x0..=x1).for_each(|x| put(img, x, y, c));
}

fn vline(img: &mut RgbImage, x: i32, y0: i32, y1: i32, c: Rgb<u8>) {
    (y0..=y1).for_each(|y| put(img, x, y, c));
}

fn square(img: &mut RgbImage, x: i32, y: i32, half: i32, c: Rgb<u8>) {
    for dy in -half..=half {
        hline(img, x - half, x + half, y + dy, c);
    }
}

/// A two-pixel-wide straight segment.
fn segment(img: &mut RgbImage, (x0, y0): (i32, i32), (x1, y1): (i32, i32), c: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for s in 0..=steps {
        let x = x0 + (x1 - x0) * s / steps;
        let y = y0 + (y1 - y0) * s / steps;
        square(img, x, y, 1, c);
    }
}

fn text_width(s: &str) -> i32 {
    s.chars().count() as i32 * 4 * SCALE
}

fn text(img: &mut RgbImage, x: i32, y: i32, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let bits = glyph(ch.to_ascii_lowercase());
        for row in 0..5 {
            for col in 0..3 {
                if bits >> (14 - (row * 3 + col)) & 1 == 1 {
                    let (px, py) = (x + (i as i32 * 4 + col) * SCALE, y + row * SCALE);
                    for d in 0..SCALE * SCALE {
                        put(img, px + d % SCALE, py + d / SCALE, c);
                    }
                }
            }
        }
    }
}

/// 3x5 glyphs, rows top to bottom, three bits each (most significant = left); unknown
/// characters are blank.
fn glyph(c: char) -> u16 {
    let rows: [u8; 5] = match c {
        'a' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'b' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'c' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'd' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'e' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'f' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'g' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'h' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'i' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'j' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'k' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'l' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'm' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'n' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'o' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'p' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'r' => [0b110, 0b101, 0b110, 0b101, 0b101],
        's' => [0b011, 0b100, 0b010, 0b001, 0b110],
        't' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'u' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'v' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'w' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'x' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b110, 0b001, 0b010, 0b100, 0b111],
        '3' => [0b110, 0b001, 0b010, 0b001, 0b110],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b110, 0b001, 0b110],
        '6' => [0b011, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b110],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        _ => [0; 5],
    };
    rows.iter().fold(0u16, |acc, &r| (acc << 3) | u16::from(r))
}
