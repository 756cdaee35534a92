//! The sweep's figure: two panels, accuracy against the visual tokens kept (log scale) and
//! against the LLM-prefill TFLOPs, one line per method starting at the unreduced point, with a
//! legend. Drawn by plotters into an RGB buffer in DejaVu Sans, saved as PNG by `image`.

use plotters::prelude::*;
use std::path::Path;

/// One measurement: (visual tokens kept, LLM-prefill TFLOPs, accuracy in 0..1).
pub type Point = (f64, f64, f64);

pub struct Line {
    pub name: String,
    pub points: Vec<Point>,
}

/// The figure's size in pixels.
pub const SIZE: (u32, u32) = (1400, 560);

const FONT: &str = "sans-serif";

fn colour(i: usize) -> RGBColor {
    const PALETTE: [(u8, u8, u8); 17] = [
        (214, 39, 40),
        (31, 119, 180),
        (44, 160, 44),
        (255, 127, 14),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (0, 0, 0),
        (120, 30, 120),
        (0, 90, 50),
        (200, 160, 0),
        (255, 152, 150),
        (152, 223, 138),
        (110, 160, 230),
    ];
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// Writes the two-panel figure of `lines` to `path` (PNG).
pub fn sweep(path: &Path, lines: &[Line]) -> Result<(), String> {
    // Registering twice is harmless; the font is compiled in, so it cannot be missing.
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "bundled DejaVu Sans did not load".to_string())?;
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    draw(&mut buf, lines).map_err(|e| format!("drawing the plot: {e}"))?;
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer has the figure's size");
    img.save(path).map_err(|e| e.to_string())
}

fn draw(buf: &mut [u8], lines: &[Line]) -> Result<(), Box<dyn std::error::Error>> {
    let all = || lines.iter().flat_map(|l| l.points.iter().copied());
    let (lo_tokens, hi_tokens) =
        all().fold((f64::MAX, 1.0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let hi_flops = all().fold(0.0f64, |hi, p| hi.max(p.1));
    let root = BitMapBackend::with_buffer(buf, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let x_tokens = (lo_tokens.max(1.0) * 0.8)..(hi_tokens * 1.15);
    let x_flops = 0.0..(hi_flops * 1.05).max(1e-9);
    let tokens = Axis {
        title: "accuracy vs visual tokens",
        label: "visual tokens kept (log scale)",
        of: |p| p.0,
        format: |v| format!("{v:.0}"),
    };
    let flops = Axis {
        title: "accuracy vs LLM-prefill compute",
        label: "LLM-prefill TFLOPs",
        of: |p| p.1,
        format: |v| format!("{v:.2e}"),
    };
    panel(&left, &tokens, x_tokens.log_scale(), lines, true)?;
    panel(&right, &flops, x_flops, lines, false)?;
    root.present()?;
    Ok(())
}

/// A panel's x axis: what it shows and how its ticks read.
struct Axis {
    title: &'static str,
    label: &'static str,
    of: fn(&Point) -> f64,
    format: fn(&f64) -> String,
}

/// One panel: accuracy (%) against `x.of` each point, a line per method.
fn panel<DB, X>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: &Axis,
    x_range: X,
    lines: &[Line],
    legend: bool,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(x.title, (FONT, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc(x.label)
        .y_desc("accuracy %")
        .x_label_formatter(&x.format)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let c = colour(i);
        let mut pts: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|p| ((x.of)(p), 100.0 * p.2))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let series = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        if legend {
            series.label(line.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
            });
        }
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}
