//! The robustness graph: relative error of G (log scale) against stored bits per value, one line
//! per calibration method, the seed's reported points marked. SVG and PNG through plotters.
//!
//! Text needs a font: a bundled DejaVu Serif (see `fonts/DejaVu-LICENSE.txt`) is registered
//! with plotters' pure-Rust `ab_glyph` renderer, so no system font library or installed font is
//! needed on any machine.

use anyhow::{anyhow, Result};
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("fonts/DejaVuSerif.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1100, 700);

/// One configuration on the graph.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub bits: f64,
    pub err_pct: f64,
}

/// One method: a line through its points of each precision (lines never join INT4 to INT8:
/// there is no format between them).
pub struct Series {
    pub name: String,
    pub lines: Vec<Vec<Point>>,
}

fn register() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut ok = true;
    ONCE.call_once(|| ok = register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the bundled font could not be loaded"))
    }
}

pub fn svg(path: &Path, caption: &str, x_desc: &str, note: &str, series: &[Series], seed: &[(Point, String)]) -> Result<()> {
    register()?;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(&root, caption, x_desc, note, series, seed).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

pub fn png(path: &Path, caption: &str, x_desc: &str, note: &str, series: &[Series], seed: &[(Point, String)]) -> Result<()> {
    register()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(&root, caption, x_desc, note, series, seed).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

/// 1, 2, 3, 5 times powers of ten inside [lo, hi]: round labels on a log axis.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade <= hi {
        for m in [1.0, 2.0, 3.0, 5.0] {
            // Rounded so that labels print as 0.3, not 0.30000000000000004.
            let t = format!("{:.6e}", m * decade).parse::<f64>().unwrap_or(m * decade);
            if (lo..=hi).contains(&t) {
                out.push(t);
            }
        }
        decade *= 10.0;
    }
    out
}

/// Line colour of a series, by name, so that a method keeps its colour whatever else runs.
fn colour(name: &str, i: usize) -> RGBColor {
    match name.split(':').next().unwrap_or(name) {
        "absmax" => RGBColor(214, 39, 40),
        "percentile" => RGBColor(255, 127, 14),
        "mse" => RGBColor(31, 119, 180),
        "minmax" => RGBColor(148, 103, 189),
        "kl" => RGBColor(140, 86, 75),
        "output" => RGBColor(44, 160, 44),
        "dynamic" => RGBColor(23, 190, 207),
        "fp16" => RGBColor(127, 127, 127),
        "bf16" => RGBColor(188, 189, 34),
        _ => {
            let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
            RGBColor(r, g, b)
        }
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    caption: &str,
    x_desc: &str,
    note: &str,
    series: &[Series],
    seed: &[(Point, String)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let all = series.iter().flat_map(|s| s.lines.iter().flatten()).chain(seed.iter().map(|(p, _)| p)).filter(|p| p.err_pct > 0.0 && p.err_pct.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for p in all {
        x0 = x0.min(p.bits);
        x1 = x1.max(p.bits);
        y0 = y0.min(p.err_pct);
        y1 = y1.max(p.err_pct);
    }
    if !(x0 <= x1 && y0 <= y1) {
        (x0, x1, y0, y1) = (4.0, 8.0, 0.1, 10.0);
    }
    let (x0, x1) = ((x0 - 0.5).max(0.0), x1 + 0.5);
    let (y0, y1) = (y0 / 1.6, y1 * 1.6);

    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FAMILY, 18))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("relative error of G, % (log scale)")
        .axis_desc_style((FAMILY, 15))
        .label_style((FAMILY, 13))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;

    for (i, s) in series.iter().enumerate() {
        let c = colour(&s.name, i);
        for (k, line) in s.lines.iter().enumerate() {
            let pts: Vec<(f64, f64)> = line.iter().filter(|p| p.err_pct > 0.0).map(|p| (p.bits, p.err_pct)).collect();
            let drawn = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            if k == 0 {
                drawn.label(s.name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
    }
    chart
        .draw_series(seed.iter().map(|(p, _)| Cross::new((p.bits, p.err_pct), 9, BLACK.stroke_width(3))))?
        .label("seed as reported (its workload)")
        .legend(|(x, y)| Cross::new((x + 12, y), 6, BLACK.stroke_width(2)));
    chart.draw_series(
        seed.iter().map(|(p, label)| Text::new(format!("{label} {} %", p.err_pct), (p.bits + 0.08, p.err_pct * 1.12), (FAMILY, 14))),
    )?;
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    if !note.is_empty() {
        // Top left of the plotting area, where the lowest-bit, highest-error corner is empty.
        chart.draw_series(std::iter::once(Text::new(note.to_string(), (x0 + 0.05 * (x1 - x0), y0 * (y1 / y0).powf(0.04)), (FAMILY, 13))))?;
    }
    Ok(())
}
