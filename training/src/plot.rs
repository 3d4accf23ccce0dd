//! PNG charts of a run: training curves from `metrics.jsonl`, score histograms (e.g. reward-model
//! scores of chosen vs rejected answers), and grouped bars (e.g. accuracy per preference-rating bin,
//! Llama 2 Table 8, or helpful/safe/false-refusal rates per pipeline stage).
//!
//! Text is drawn with `plotters`' pure-Rust `ab_glyph` backend so that building needs no system
//! library (fontconfig/freetype); the font is read at run time from `RLHF_FONT` or DejaVu Sans.
//! Without a font the charts are still drawn, only without any text, and a warning is logged once.
//! Every file is rendered to a temporary sibling and renamed, so a reader never sees half a PNG.
use crate::error::{Result, TrainError};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// One named curve of a line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Size of a single chart in pixels.
const SIZE: (u32, u32) = (900, 600);
/// A metrics grid cell; the grid adds a title band on top.
const CELL: (u32, u32) = (450, 300);
const TITLE_BAND: u32 = 44;
/// The family name fonts are registered under and drawn with.
const FONT: &str = "sans-serif";
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Tableau 10: distinguishable, and still readable when mixed with white for overlaid areas.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Series with at most this many points also get a marker per point (a single point is otherwise invisible).
const MARKER_MAX_POINTS: usize = 40;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Line chart of several series with a legend; ranges fit the finite points (others are ignored).
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    render(path, SIZE, fonts_loaded(), |root, text| draw_line_chart(root, text, title, x_label, y_label, series))
}

/// One small line chart per key of `keys` found in the records of a metrics file (x = `step`), two
/// per row under `title`. Keys no record holds as a number are skipped; if none is found nothing is
/// written and `Ok(false)` is returned.
pub fn metrics_grid(metrics_jsonl: &Path, path: &Path, keys: &[&str], title: &str) -> Result<bool> {
    let records = crate::metrics::read_metrics(metrics_jsonl)?;
    let panels: Vec<(&str, Vec<(f64, f64)>)> = keys
        .iter()
        .map(|&k| {
            let pts = records.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(k)?.as_f64()?))).collect::<Vec<_>>();
            (k, pts)
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    if panels.is_empty() {
        return Ok(false);
    }
    let cols = if panels.len() == 1 { 1 } else { 2 };
    let rows = panels.len().div_ceil(cols);
    let cell_h = if panels.len() == 1 { SIZE.1 - TITLE_BAND } else { CELL.1 };
    let size = (SIZE.0, TITLE_BAND + rows as u32 * cell_h);
    render(path, size, fonts_loaded(), |root, text| draw_metrics_grid(root, text, title, &panels, rows, cols))?;
    Ok(true)
}

/// Overlaid histograms sharing `bins` equal-width bins over the finite values of all series:
/// translucent bars with a solid step outline per series, so overlaps stay visible.
pub fn histogram(path: &Path, title: &str, x_label: &str, series: &[(String, Vec<f64>)], bins: usize) -> Result<()> {
    render(path, SIZE, fonts_loaded(), |root, text| draw_histogram(root, text, title, x_label, series, bins))
}

/// Grouped bars: one group per entry of `groups`, one bar per series inside it (a series' `i`-th
/// value belongs to `groups[i]`; missing or non-finite values leave a gap), each labelled with its
/// value when there are at most 24 bars. The y axis is [0, 1] when every value
/// lies there (accuracies, rates), else the data range including 0.
pub fn bar_chart(path: &Path, title: &str, y_label: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> Result<()> {
    render(path, SIZE, fonts_loaded(), |root, text| draw_bar_chart(root, text, title, y_label, groups, series))
}

/// Registers the run-time font once; false (with a warning) when none could be loaded.
fn fonts_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("RLHF_FONT").map(PathBuf::from).into_iter().collect();
        candidates.push(PathBuf::from(DEFAULT_FONT));
        for p in &candidates {
            match std::fs::read(p) {
                Ok(bytes) => {
                    // `register_font` keeps a `'static` reference; this runs once per process.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                        return true;
                    }
                    tracing::warn!("{}: not a TrueType/OpenType font", p.display());
                }
                Err(e) => tracing::debug!("font {}: {e}", p.display()),
            }
        }
        tracing::warn!("no font found (set RLHF_FONT to a .ttf file, e.g. DejaVuSans.ttf); plots are drawn without text");
        false
    })
}

/// Renders into `<dir>/.<name>.<pid>-<n>.tmp.png` (the extension picks the encoder; `n` tells apart
/// threads writing the same path) and renames it over `path`.
fn render(path: &Path, (w, h): (u32, u32), text: bool, draw: impl FnOnce(&Area, bool) -> DrawResult) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plot".into());
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tmp = dir.join(format!(".{name}.{}-{}.tmp.png", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let drawn = {
        let root = BitMapBackend::new(&tmp, (w, h)).into_drawing_area();
        // The backend also saves when dropped, so it must be gone before a failed temp file is removed.
        (|| -> DrawResult {
            root.fill(&WHITE)?;
            draw(&root, text)?;
            root.present()?;
            Ok(())
        })()
    };
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::Plot(format!("{}: {e}", path.display())));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TrainError::io(path, e)
    })
}

/// `(lo, hi)` widened by `pad` of its span on both sides; a single value gets a span around it and
/// an empty range (no finite data) becomes [0, 1].
fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * lo.abs().max(hi.abs()) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let p = (hi - lo) * pad;
    (lo - p, hi + p)
}

fn finite_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// The title band (when text is drawn) and the area left below it.
fn titled<'a>(root: &Area<'a>, text: bool, title: &str) -> DrawResult<Area<'a>> {
    if text && !title.is_empty() {
        let (band, rest) = root.split_vertically(TITLE_BAND);
        band.draw(&Text::new(
            title.to_string(),
            (band.dim_in_pixel().0 as i32 / 2, TITLE_BAND as i32 / 2),
            (FONT, 26).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
        Ok(rest)
    } else {
        Ok(root.clone())
    }
}

/// How a legend entry shows its series: a line, a solid bar, or a translucent histogram fill.
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Bar,
    Fill,
}

/// Splits a legend column off the right of `area` (so it never covers data) and draws the entries
/// into it; returns the plotting part. Nothing is split off without text or without entries.
fn with_legend<'a>(area: &Area<'a>, text: bool, entries: &[(String, RGBColor)], mark: Mark) -> DrawResult<Area<'a>> {
    if !text || entries.is_empty() {
        return Ok(area.clone());
    }
    let style = (FONT, 16).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let names: Vec<String> = entries
        .iter()
        .map(|(n, _)| if n.chars().count() > 28 { format!("{}…", n.chars().take(27).collect::<String>()) } else { n.clone() })
        .collect();
    let mut text_w = 0;
    for n in &names {
        text_w = text_w.max(area.estimate_text_size(n, &style)?.0);
    }
    let (w, _) = area.dim_in_pixel();
    let legend_w = (text_w + 56).min(w / 3);
    let (plot, legend) = area.split_horizontally(w - legend_w);
    let top = 30;
    for (i, (name, (_, c))) in names.iter().zip(entries).enumerate() {
        let y = top + i as i32 * 26;
        match mark {
            Mark::Line => legend.draw(&PathElement::new(vec![(8, y), (34, y)], c.stroke_width(3)))?,
            Mark::Bar => legend.draw(&Rectangle::new([(12, y - 7), (30, y + 7)], c.filled()))?,
            Mark::Fill => {
                legend.draw(&Rectangle::new([(12, y - 7), (30, y + 7)], c.mix(0.3).filled()))?;
                legend.draw(&Rectangle::new([(12, y - 7), (30, y + 7)], c.stroke_width(2)))?;
            }
        }
        legend.draw(&Text::new(name.clone(), (42, y), style.clone()))?;
    }
    Ok(plot)
}

fn draw_line_chart(root: &Area, text: bool, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> DrawResult {
    let area = titled(root, text, title)?;
    let entries: Vec<(String, RGBColor)> =
        series.iter().enumerate().filter(|(_, s)| !s.name.is_empty()).map(|(i, s)| (s.name.clone(), color(i))).collect();
    let plot = with_legend(&area, text, &entries, Mark::Line)?;
    let curves: Vec<Vec<(f64, f64)>> =
        series.iter().map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()).collect();
    draw_curves(&plot, text, None, x_label, y_label, &curves, 16)
}

/// Axes, grid and one curve per entry of `curves` (points already finite) on `area`.
fn draw_curves(
    area: &Area,
    text: bool,
    caption: Option<&str>,
    x_label: &str,
    y_label: &str,
    curves: &[Vec<(f64, f64)>],
    font_size: u32,
) -> DrawResult {
    let (x0, x1) = padded_bounds(curves.iter().flatten().map(|p| p.0), 0.0);
    let (y0, y1) = padded_bounds(curves.iter().flatten().map(|p| p.1), 0.05);
    let whole_x = curves.iter().flatten().all(|p| p.0.fract() == 0.0);
    let ticks = if font_size < 16 { 6 } else { 10 };
    let (x, y) = (Axis::linear(x0, x1, ticks, whole_x), Axis::linear(y0, y1, ticks, false));
    let (fx, fy) = (x.formatter(), y.formatter());
    let mut builder = ChartBuilder::on(area);
    builder.margin(12).margin_right(24);
    if text {
        if let Some(c) = caption {
            builder.caption(c, (FONT, font_size + 3));
        }
        let y_area = y.label_area(area, font_size - 2, if y_label.is_empty() { 0 } else { font_size })?;
        builder.x_label_area_size(font_size * 3).y_label_area_size(y_area);
    }
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.bold_line_style(BLACK.mix(0.12)).light_line_style(BLACK.mix(0.04));
    if text {
        mesh.label_style((FONT, font_size - 2)).axis_desc_style((FONT, font_size)).x_label_formatter(&fx).y_label_formatter(&fy);
        if !x_label.is_empty() {
            mesh.x_desc(x_label);
        }
        if !y_label.is_empty() {
            mesh.y_desc(y_label);
        }
    }
    mesh.draw()?;
    for (i, pts) in curves.iter().enumerate() {
        let c = color(i);
        chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
        if pts.len() <= MARKER_MAX_POINTS {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
    }
    Ok(())
}

fn padded_bounds(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = finite_bounds(values);
    padded(lo, hi, pad)
}

fn draw_metrics_grid(root: &Area, text: bool, title: &str, panels: &[(&str, Vec<(f64, f64)>)], rows: usize, cols: usize) -> DrawResult {
    let area = titled(root, text, title)?;
    for (cell, (key, pts)) in area.split_evenly((rows, cols)).iter().zip(panels) {
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        draw_curves(cell, text, Some(key), "step", "", &[pts], 14)?;
    }
    Ok(())
}

fn draw_histogram(root: &Area, text: bool, title: &str, x_label: &str, series: &[(String, Vec<f64>)], bins: usize) -> DrawResult {
    let bins = bins.max(1);
    let (lo, hi) = finite_bounds(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let (lo, hi) = if lo < hi { (lo, hi) } else { padded(lo, hi, 0.0) };
    let width = (hi - lo) / bins as f64;
    let counts: Vec<Vec<u64>> = series
        .iter()
        .map(|(_, vals)| {
            let mut c = vec![0u64; bins];
            for v in vals.iter().filter(|v| v.is_finite()) {
                c[(((v - lo) / width) as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let max_count = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;

    let area = titled(root, text, title)?;
    let entries: Vec<(String, RGBColor)> = series
        .iter()
        .enumerate()
        .map(|(i, (n, v))| (format!("{n} (n={})", v.iter().filter(|v| v.is_finite()).count()), color(i)))
        .collect();
    let plot = with_legend(&area, text, &entries, Mark::Fill)?;
    let (x, y) = (Axis::linear(lo, hi, 10, false), Axis::linear(0.0, max_count * 1.06, 10, true));
    let (fx, fy) = (x.formatter(), y.formatter());
    let mut builder = ChartBuilder::on(&plot);
    builder.margin(12).margin_right(24);
    if text {
        builder.x_label_area_size(48).y_label_area_size(y.label_area(&plot, 14, 16)?);
    }
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.bold_line_style(BLACK.mix(0.12)).light_line_style(BLACK.mix(0.04)).disable_x_mesh();
    if text {
        mesh.label_style((FONT, 14)).axis_desc_style((FONT, 16)).y_desc("count").x_label_formatter(&fx).y_label_formatter(&fy);
        if !x_label.is_empty() {
            mesh.x_desc(x_label);
        }
    }
    mesh.draw()?;
    let edge = |b: usize| lo + b as f64 * width;
    for (i, c) in counts.iter().enumerate() {
        let col = color(i);
        chart.draw_series(
            c.iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(b, &n)| Rectangle::new([(edge(b), 0.0), (edge(b + 1), n as f64)], col.mix(0.3).filled())),
        )?;
    }
    // Outlines after all fills, so no series' fill hides another's edge.
    for (i, c) in counts.iter().enumerate() {
        let mut step = vec![(lo, 0.0)];
        for (b, &n) in c.iter().enumerate() {
            step.push((edge(b), n as f64));
            step.push((edge(b + 1), n as f64));
        }
        step.push((hi, 0.0));
        chart.draw_series(LineSeries::new(step, color(i).stroke_width(2)))?;
    }
    Ok(())
}

fn draw_bar_chart(root: &Area, text: bool, title: &str, y_label: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> DrawResult {
    let value = |s: &(String, Vec<f64>), g: usize| s.1.get(g).copied().filter(|v| v.is_finite());
    let values: Vec<f64> = series.iter().flat_map(|s| (0..groups.len()).filter_map(move |g| value(s, g))).collect();
    let (lo, hi) = finite_bounds(values.iter().copied());
    let unit = lo >= 0.0 && hi <= 1.0;
    // No finite value at all also counts as `unit` (lo = +inf, hi = -inf).
    let (y0, y1) = if unit {
        (0.0, 1.0)
    } else {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let (lo, hi) = padded(lo, hi, 0.0);
        let pad = (hi - lo) * 0.08;
        (if lo < 0.0 { lo - pad } else { lo }, if hi > 0.0 { hi + pad } else { hi })
    };

    let area = titled(root, text, title)?;
    let entries: Vec<(String, RGBColor)> = series.iter().enumerate().map(|(i, (n, _))| (n.clone(), color(i))).collect();
    let plot = with_legend(&area, text, &entries, Mark::Bar)?;
    let n = groups.len().max(1);
    let y = Axis::linear(y0, y1, 10, false);
    let fy = y.formatter();
    let y_area = if text { y.label_area(&plot, 15, if y_label.is_empty() { 0 } else { 16 })? } else { 0 };
    // Group names longer than their group's width are shortened so neighbours never overlap.
    let group_w = (plot.dim_in_pixel().0.saturating_sub(y_area + 36) / n as u32).saturating_sub(8);
    let mut names = Vec::with_capacity(groups.len());
    for g in groups {
        names.push(if text { fit_text(&plot, g, &(FONT, 15).into_font().into(), group_w)? } else { g.clone() });
    }
    let mut builder = ChartBuilder::on(&plot);
    builder.margin(12).margin_right(24);
    if text {
        builder.x_label_area_size(40).y_label_area_size(y_area);
    }
    let mut chart = builder.build_cartesian_2d(Axis::groups(n), y)?;
    let mut mesh = chart.configure_mesh();
    mesh.bold_line_style(BLACK.mix(0.12)).light_line_style(BLACK.mix(0.04)).disable_x_mesh();
    let name_of = |x: &f64| names.get(x.floor().max(0.0) as usize).cloned().unwrap_or_default();
    if text {
        mesh.label_style((FONT, 15)).axis_desc_style((FONT, 16)).x_label_formatter(&name_of).y_label_formatter(&fy);
        if !y_label.is_empty() {
            mesh.y_desc(y_label);
        }
    }
    mesh.draw()?;
    let k = series.len().max(1);
    let bar_w = 0.8 / k as f64;
    let label_each = text && groups.len() * k <= 24;
    let label_style = (FONT, 13).into_font().color(&BLACK.mix(0.8));
    for (j, s) in series.iter().enumerate() {
        let col = color(j);
        for g in 0..groups.len() {
            let Some(v) = value(s, g) else { continue };
            let x0 = g as f64 + 0.1 + j as f64 * bar_w;
            let x1 = x0 + bar_w * 0.9;
            chart.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x1, v)], col.filled())))?;
            if label_each {
                let s = if unit { format!("{v:.2}") } else { format_sig(v) };
                let (dy, vpos) = if v >= 0.0 { (-3, VPos::Bottom) } else { (3, VPos::Top) };
                let at = ((x0 + x1) / 2.0, v);
                chart.draw_series(std::iter::once(
                    EmptyElement::at(at) + Text::new(s, (0, dy), label_style.clone().pos(Pos::new(HPos::Center, vpos))),
                ))?;
            }
        }
    }
    Ok(())
}

/// `s`, cut and ended with "…" where wider than `max_w` pixels.
fn fit_text(area: &Area, s: &str, style: &TextStyle, max_w: u32) -> DrawResult<String> {
    if area.estimate_text_size(s, style)?.0 <= max_w {
        return Ok(s.to_string());
    }
    let chars: Vec<char> = s.chars().collect();
    for keep in (1..chars.len()).rev() {
        let cut = format!("{}…", chars[..keep].iter().collect::<String>().trim_end());
        if area.estimate_text_size(&cut, style)?.0 <= max_w {
            return Ok(cut);
        }
    }
    Ok("…".into())
}

/// A linear axis whose ticks are chosen here rather than by plotters, so that labels can be printed
/// to the precision of the tick step (plotters' own f64 labels print e.g. `0.00002` for every tick
/// of a 1e-5..2e-5 learning-rate axis, and mix `0.5` with `0.49`).
struct Axis {
    lo: f64,
    hi: f64,
    /// Labelled ticks with a bold grid line.
    ticks: Vec<f64>,
    /// Light grid lines between the ticks.
    light: Vec<f64>,
    /// Distance between ticks (0 when ticks are not evenly spaced numbers).
    step: f64,
}

impl Axis {
    /// At most about `target` ticks at multiples of 1, 2 or 5 times a power of ten; `whole` keeps the
    /// step at 1 or more (steps, counts).
    fn linear(lo: f64, hi: f64, target: usize, whole: bool) -> Self {
        let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo < hi { (lo, hi) } else { (0.0, 1.0) };
        let raw = (hi - lo) / target.max(1) as f64;
        let mag = 10f64.powf(raw.log10().floor());
        let mut step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * mag);
        if whole {
            step = step.max(1.0);
        }
        let (first, last) = ((lo / step - 1e-9).ceil() as i64, (hi / step + 1e-9).floor() as i64);
        let ticks: Vec<f64> = (first..=last).map(|i| i as f64 * step).collect();
        let light = (first - 1..=last).map(|i| (i as f64 + 0.5) * step).filter(|v| (lo..=hi).contains(v)).collect();
        Axis { lo, hi, ticks, light, step }
    }

    /// x axis of grouped bars: group `g` spans [g, g+1) and its tick (the group's name) sits at its centre.
    fn groups(n: usize) -> Self {
        Axis { lo: 0.0, hi: n as f64, ticks: (0..n).map(|g| g as f64 + 0.5).collect(), light: vec![], step: 0.0 }
    }

    /// Width of a y label area that fits the widest tick label (font `size`) and, beside it, a
    /// rotated axis description of height `desc_size` (0: none).
    fn label_area(&self, area: &Area, size: u32, desc_size: u32) -> DrawResult<u32> {
        let (style, fmt) = (TextStyle::from((FONT, size).into_font()), self.formatter());
        let mut w = 0;
        for t in &self.ticks {
            w = w.max(area.estimate_text_size(&fmt(t), &style)?.0);
        }
        // Ticks are 5 px long with labels 10 px from the axis (plotters' defaults), then the description.
        Ok(w + 16 + if desc_size > 0 { desc_size + 12 } else { 0 })
    }

    /// Labels with as many decimals as the step needs; exponent notation for tiny or huge values.
    fn formatter(&self) -> impl Fn(&f64) -> String {
        let step = self.step;
        let max_abs = self.lo.abs().max(self.hi.abs());
        move |&v| {
            if step <= 0.0 || v.abs() < step * 1e-6 {
                return if step > 0.0 { "0".into() } else { format_sig(v) };
            }
            let e_step = (step.log10() + 1e-9).floor() as i32;
            if !(1e-3..1e6).contains(&max_abs) {
                let e_max = (max_abs.log10() + 1e-9).floor() as i32;
                format!("{:.*e}", (e_max - e_step).max(0) as usize, v)
            } else {
                format!("{:.*}", (-e_step).max(0) as usize, v)
            }
        }
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (a, b): (i32, i32)) -> i32 {
        a + ((b - a) as f64 * (value - self.lo) / (self.hi - self.lo)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Three significant digits without exponent for the usual magnitudes.
fn format_sig(v: f64) -> String {
    let mag = if v == 0.0 { 0 } else { v.abs().log10().floor() as i32 };
    if !(-3..6).contains(&mag) {
        format!("{v:.2e}")
    } else {
        format!("{v:.*}", (2 - mag).max(0) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the PNG signature and returns the IHDR width and height.
    fn png_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        assert!(b.len() > 24, "{} is too short", path.display());
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&b[12..16], b"IHDR");
        (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
    }

    fn only_file(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    fn curves() -> Vec<Series> {
        vec![
            Series { name: "train".into(), points: (0..200).map(|s| (s as f64, 2.5 * (-(s as f64) / 60.0).exp() + 0.4)).collect() },
            Series { name: "eval".into(), points: (0..=10).map(|i| (i as f64 * 20.0, 2.6 * (-(i as f64) / 3.2).exp() + 0.5)).collect() },
        ]
    }

    fn groups() -> (Vec<String>, Vec<(String, Vec<f64>)>) {
        let g = ["significantly better", "better", "slightly better", "negligibly better / unsure"].map(String::from).to_vec();
        let s = vec![
            ("helpfulness RM".to_string(), vec![0.942, 0.768, 0.608, 0.528]),
            ("safety RM".to_string(), vec![0.892, 0.73, 0.585, 0.5]),
        ];
        (g, s)
    }

    /// Histogram series or grouped-bar series: (name, values).
    type Named = Vec<(String, Vec<f64>)>;

    #[test]
    fn line_chart_writes_png_of_chart_size_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        line_chart(&p, "SFT loss", "step", "loss", &curves()).unwrap();
        assert_eq!(png_size(&p), SIZE);
        assert_eq!(only_file(dir.path()), vec!["loss.png".to_string()]);
        // Overwrites in place.
        line_chart(&p, "SFT loss", "step", "loss", &curves()[..1]).unwrap();
        assert_eq!(png_size(&p), SIZE);
    }

    #[test]
    fn line_chart_degenerate_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![Series { name: "empty".into(), points: vec![] }],
            vec![Series { name: "one".into(), points: vec![(3.0, 0.5)] }],
            vec![Series { name: "".into(), points: vec![(0.0, 1.0), (1.0, 1.0)] }],
            vec![Series { name: "nan".into(), points: vec![(0.0, f64::NAN), (1.0, f64::INFINITY), (f64::NAN, 2.0), (2.0, 0.0)] }],
            vec![Series { name: "tiny".into(), points: vec![(0.0, 3e-5), (1.0, 3e-5)] }],
        ];
        for (i, s) in cases.iter().enumerate() {
            let p = dir.path().join(format!("c{i}.png"));
            line_chart(&p, "degenerate", "x", "y", s).unwrap();
            assert_eq!(png_size(&p), SIZE);
        }
    }

    #[test]
    fn histogram_and_degenerate_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let chosen: Vec<f64> = (0..500).map(|i| ((i * 37 % 101) as f64 / 101.0) * 3.0 + 0.5).collect();
        let rejected: Vec<f64> = (0..500).map(|i| ((i * 53 % 97) as f64 / 97.0) * 3.0 - 1.0).collect();
        let p = dir.path().join("h.png");
        histogram(&p, "RM scores", "score", &[("chosen".into(), chosen), ("rejected".into(), rejected)], 30).unwrap();
        assert_eq!(png_size(&p), SIZE);
        let cases: Vec<(Named, usize)> = vec![
            (vec![], 10),
            (vec![("empty".into(), vec![])], 10),
            (vec![("same".into(), vec![2.0; 5])], 10),
            (vec![("nan".into(), vec![f64::NAN, f64::INFINITY, 1.0])], 0),
        ];
        for (i, (s, bins)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("h{i}.png"));
            histogram(&p, "degenerate", "x", s, *bins).unwrap();
            assert_eq!(png_size(&p), SIZE);
        }
    }

    #[test]
    fn bar_chart_and_degenerate_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let (g, s) = groups();
        let p = dir.path().join("b.png");
        bar_chart(&p, "RM accuracy per rating", "accuracy", &g, &s).unwrap();
        assert_eq!(png_size(&p), SIZE);
        let cases: Vec<(Vec<String>, Named)> = vec![
            (vec![], vec![]),
            (g.clone(), vec![]),
            (vec![], s.clone()),
            (g.clone(), vec![("short".into(), vec![0.5])]),
            (vec!["a".into(), "b".into()], vec![("signed".into(), vec![-2.5, 40.0]), ("nan".into(), vec![f64::NAN, 3.0])]),
            (vec!["zero".into()], vec![("zero".into(), vec![0.0])]),
        ];
        for (i, (g, s)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("b{i}.png"));
            bar_chart(&p, "degenerate", "y", g, s).unwrap();
            assert_eq!(png_size(&p), SIZE);
        }
    }

    #[test]
    fn metrics_grid_skips_absent_keys() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for step in 1..=30u64 {
            text.push_str(&serde_json::json!({"step": step, "loss": 3.0 / step as f64, "lr": 1e-5}).to_string());
            text.push('\n');
            if step % 10 == 0 {
                text.push_str(&serde_json::json!({"step": step, "eval_loss": 3.5 / step as f64}).to_string());
                text.push('\n');
            }
        }
        std::fs::write(&m, text).unwrap();
        let p = dir.path().join("grid.png");
        assert!(metrics_grid(&m, &p, &["loss", "absent", "lr"], "SFT").unwrap());
        assert_eq!(png_size(&p), (SIZE.0, TITLE_BAND + CELL.1));
        assert!(metrics_grid(&m, &p, &["loss", "lr", "eval_loss"], "SFT").unwrap());
        assert_eq!(png_size(&p), (SIZE.0, TITLE_BAND + 2 * CELL.1));
        assert!(metrics_grid(&m, &p, &["loss"], "SFT").unwrap());
        assert_eq!(png_size(&p), SIZE);

        let none = dir.path().join("none.png");
        assert!(!metrics_grid(&m, &none, &["absent", "step_time"], "SFT").unwrap());
        assert!(!none.exists());
        assert!(!metrics_grid(&m, &none, &[], "SFT").unwrap());
        assert!(metrics_grid(&dir.path().join("missing.jsonl"), &none, &["loss"], "SFT").is_err());
    }

    /// The fallback when no font is found: same charts, no text, no error.
    #[test]
    fn draws_without_font() {
        let dir = tempfile::tempdir().unwrap();
        let (g, s) = groups();
        let p = dir.path().join("t.png");
        render(&p, SIZE, false, |r, t| draw_line_chart(r, t, "title", "x", "y", &curves())).unwrap();
        assert_eq!(png_size(&p), SIZE);
        render(&p, SIZE, false, |r, t| draw_histogram(r, t, "title", "x", &[("a".into(), vec![1.0, 2.0, 2.5])], 5)).unwrap();
        assert_eq!(png_size(&p), SIZE);
        render(&p, SIZE, false, |r, t| draw_bar_chart(r, t, "title", "y", &g, &s)).unwrap();
        assert_eq!(png_size(&p), SIZE);
        let panels = vec![("loss", vec![(1.0, 2.0), (2.0, 1.0)]), ("lr", vec![(1.0, 1e-5)])];
        render(&p, (900, 344), false, |r, t| draw_metrics_grid(r, t, "title", &panels, 1, 2)).unwrap();
        assert_eq!(png_size(&p), (900, 344));
    }

    #[test]
    fn failed_render_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let err = render(&p, SIZE, false, |_, _| Err("boom".into())).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(only_file(dir.path()).is_empty());
    }

    #[test]
    fn format_sig_digits() {
        assert_eq!(format_sig(0.0), "0.00");
        assert_eq!(format_sig(1.23456), "1.23");
        assert_eq!(format_sig(42.17), "42.2");
        assert_eq!(format_sig(1234.5), "1234");
        assert_eq!(format_sig(-0.01234), "-0.0123");
        assert_eq!(format_sig(3e-5), "3.00e-5");
    }

    #[test]
    fn axis_ticks_and_labels() {
        let labels = |a: &Axis| a.ticks.iter().map(a.formatter()).collect::<Vec<_>>();
        assert_eq!(labels(&Axis::linear(0.0, 2.1e-5, 5, false)), ["0", "5.0e-6", "1.0e-5", "1.5e-5", "2.0e-5"]);
        assert_eq!(labels(&Axis::linear(0.45, 0.55, 5, false)), ["0.46", "0.48", "0.50", "0.52", "0.54"]);
        assert_eq!(labels(&Axis::linear(1.0, 300.0, 5, true)), ["100", "200", "300"]);
        assert_eq!(labels(&Axis::linear(0.0, 3.0, 8, true)), ["0", "1", "2", "3"]);
        assert_eq!(labels(&Axis::linear(-1.6, 3.8, 10, false)), ["-1", "0", "1", "2", "3"]);
        assert_eq!(labels(&Axis::linear(1e6, 3e6, 4, false)), ["1.0e6", "1.5e6", "2.0e6", "2.5e6", "3.0e6"]);
        let a = Axis::linear(f64::NAN, 1.0, 5, false);
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
        assert_eq!(Axis::groups(3).ticks, [0.5, 1.5, 2.5]);
    }

    /// Writes one example of each chart for a visual check:
    /// `cargo test --release -p training plot::tests::examples -- --ignored` (`RLHF_PLOT_EXAMPLES` picks the folder).
    #[test]
    #[ignore]
    fn examples() {
        let dir = PathBuf::from(std::env::var("RLHF_PLOT_EXAMPLES").unwrap_or_else(|_| "/tmp/plot-examples".into()));
        line_chart(&dir.join("line.png"), "SFT loss", "step", "loss (nats/token)", &curves()).unwrap();
        let chosen: Vec<f64> = (0..2000).map(|i| ((i * 37 % 101) as f64 / 101.0 + (i * 11 % 89) as f64 / 89.0) * 1.5 + 0.2).collect();
        let rejected: Vec<f64> = (0..2000).map(|i| ((i * 53 % 97) as f64 / 97.0 + (i * 7 % 83) as f64 / 83.0) * 1.5 - 1.2).collect();
        histogram(&dir.join("hist.png"), "Reward-model scores", "score", &[("chosen".into(), chosen), ("rejected".into(), rejected)], 40)
            .unwrap();
        let (g, s) = groups();
        bar_chart(&dir.join("bars.png"), "Reward-model accuracy per preference rating", "accuracy", &g, &s).unwrap();
        let stages = ["SFT", "RLHF-V1", "RLHF-V2", "RLHF-V3"].map(String::from).to_vec();
        let rates = vec![
            ("helpful".to_string(), vec![0.61, 0.68, 0.72, 0.77]),
            ("safe".to_string(), vec![0.83, 0.9, 0.94, 0.97]),
            ("false refusal".to_string(), vec![0.05, 0.04, 0.07, 0.03]),
        ];
        bar_chart(&dir.join("stages.png"), "Per pipeline stage", "rate", &stages, &rates).unwrap();
        let many: Vec<String> = (0..8).map(|i| format!("rating bin number {i} (long name)")).collect();
        bar_chart(
            &dir.join("many.png"),
            "Eight long groups",
            "",
            &many,
            &[("acc".into(), (0..8).map(|i| 0.4 + i as f64 * 0.07).collect())],
        )
        .unwrap();
        bar_chart(&dir.join("signed.png"), "Signed values", "reward", &stages[..2], &[("mean".into(), vec![-1.25, 3.5])]).unwrap();
        let m = dir.join("metrics.jsonl");
        let mut text = String::new();
        for step in 1..=300u64 {
            let t = step as f64;
            let noise = ((step * 7919 % 101) as f64 / 101.0 - 0.5) * 0.2;
            text.push_str(
                &serde_json::json!({"step": step, "loss": 2.0 * (-t / 80.0).exp() + 0.6 + noise, "lr": 2e-5 * (t / 30.0).min(1.0), "grad_norm": 1.0 + noise * 3.0, "tokens_per_s": 1500.0 + noise * 500.0})
                    .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(&m, text).unwrap();
        assert!(metrics_grid(&m, &dir.join("grid.png"), &["loss", "lr", "grad_norm", "eval_loss", "tokens_per_s"], "SFT run").unwrap());
        line_chart(&dir.join("single.png"), "One point", "x", "y", &[Series { name: "only".into(), points: vec![(3.0, 0.5)] }]).unwrap();
        render(&dir.join("no-font.png"), SIZE, false, |r, t| draw_bar_chart(r, t, "Per pipeline stage", "rate", &stages, &rates)).unwrap();
    }
}
