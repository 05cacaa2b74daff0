//! `liandan plot`: learning curves per trial (the mean over seeds as a line,
//! the band from the lowest to the highest seed), and the final metric against
//! one hyperparameter with a point per seed. PNG or SVG. Text is laid out with
//! the font embedded in the binary (DejaVu Sans), never a system font; a PNG
//! draws it, an SVG names it with its look-alikes as fallbacks (or, with
//! `--embed-font`, carries it). A metric that spans decades is drawn on a
//! log10 axis, and the axis says so; whole numbers label ticks as integers.

use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "DejaVu Sans";

/// What `plot` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    pub fn parse(s: &str) -> Option<ImageFormat> {
        match s {
            "png" => Some(ImageFormat::Png),
            "svg" => Some(ImageFormat::Svg),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Svg => "svg",
        }
    }
}

/// A tick label: whole numbers as integers (`50`, not `50.0`), others with
/// at most six decimals and no trailing zeros, tiny or huge ones in
/// scientific notation.
pub fn tick(x: &f64) -> String {
    let x = *x;
    if x == 0.0 || !x.is_finite() {
        return if x.is_finite() {
            "0".into()
        } else {
            x.to_string()
        };
    }
    let r = x.round();
    if (x - r).abs() <= 1e-9 * x.abs().max(1.0) && r.abs() < 1e15 {
        return format!("{}", r as i64);
    }
    if x.abs() < 1e-3 || x.abs() >= 1e7 {
        return format!("{x:.2e}");
    }
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One job's data for the charts.
pub struct JobSeries {
    pub trial: String,
    pub params: Value,
    /// (step, value) of the chosen metric, in order.
    pub points: Vec<(f64, f64)>,
    pub final_value: Option<f64>,
}

/// What to draw.
pub struct PlotInput {
    pub title: String,
    pub metric: String,
    pub param: Option<String>,
    pub jobs: Vec<JobSeries>,
}

fn register() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Whether values span more than two decades (and are all positive).
pub fn spans_decades(values: &[f64]) -> bool {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for &v in values {
        if v <= 0.0 || !v.is_finite() {
            return false;
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    lo.is_finite() && hi / lo > 100.0
}

fn short(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", liandan_common::sweep::command::format_value(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// The parameters that differ between trials, for labels.
fn varying(jobs: &[JobSeries]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::Object(first)) = jobs.first().map(|j| &j.params) {
        for (k, v) in first {
            if jobs.iter().any(|j| j.params.get(k) != Some(v)) {
                out.push(k.clone());
            }
        }
    }
    out
}

fn label(params: &Value, keys: &[String]) -> String {
    match params {
        Value::Object(m) if !keys.is_empty() => keys
            .iter()
            .filter_map(|k| {
                m.get(k)
                    .map(|v| format!("{k}={}", liandan_common::sweep::command::format_value(v)))
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => short(other),
    }
}

type DrawErr = Box<dyn std::error::Error>;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    input: &PlotInput,
) -> Result<(), DrawErr>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 * 58 / 100);
    let keys = varying(&input.jobs);
    let trials = draw_curves(&top, input, &keys)?;
    if draw_finals(&bottom, input, &keys, &trials)? {
        root.present()?;
    }
    Ok(())
}

/// The top chart: per trial, the mean over seeds at each step, with a band
/// from min to max. Returns the trials in drawing (and colour) order.
fn draw_curves<DB: DrawingBackend>(
    top: &DrawingArea<DB, plotters::coord::Shift>,
    input: &PlotInput,
    keys: &[String],
) -> Result<Vec<String>, DrawErr>
where
    DB::ErrorType: 'static,
{
    let all: Vec<f64> = input
        .jobs
        .iter()
        .flat_map(|j| j.points.iter().map(|p| p.1))
        .collect();
    let log = spans_decades(&all);
    let tf = |v: f64| if log { v.log10() } else { v };
    let ylabel = if log {
        format!("log10({})", input.metric)
    } else {
        input.metric.clone()
    };

    // Curves: per trial, mean over seeds at each step, band min..max.
    let mut trials: BTreeMap<String, (String, BTreeMap<i64, Vec<f64>>)> = BTreeMap::new();
    for j in &input.jobs {
        let e = trials
            .entry(j.trial.clone())
            .or_insert_with(|| (label(&j.params, keys), BTreeMap::new()));
        for &(s, v) in &j.points {
            e.1.entry(s as i64).or_default().push(tf(v));
        }
    }
    let xs: Vec<f64> = trials
        .values()
        .flat_map(|t| t.1.keys().map(|s| *s as f64))
        .collect();
    let ys: Vec<f64> = all.iter().map(|v| tf(*v)).collect();
    let (x0, x1) = bounds(&xs);
    let (y0, y1) = bounds(&ys);
    let mut chart = ChartBuilder::on(top)
        .caption(
            format!(
                "{}: {} by step (line: mean over seeds; band: min to max)",
                input.title, input.metric
            ),
            (FAMILY, 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(ylabel.as_str())
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    for (i, (_, (name, steps))) in trials.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mean: Vec<(f64, f64)> = steps
            .iter()
            .map(|(s, v)| (*s as f64, v.iter().sum::<f64>() / v.len() as f64))
            .collect();
        let upper: Vec<(f64, f64)> = steps
            .iter()
            .map(|(s, v)| (*s as f64, v.iter().cloned().fold(f64::MIN, f64::max)))
            .collect();
        let lower: Vec<(f64, f64)> = steps
            .iter()
            .map(|(s, v)| (*s as f64, v.iter().cloned().fold(f64::MAX, f64::min)))
            .collect();
        let mut band = upper.clone();
        band.extend(lower.iter().rev());
        chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.18))))?;
        chart
            .draw_series(LineSeries::new(mean, color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()?;

    Ok(trials.into_keys().collect())
}

/// The bottom chart: the final metric against a hyperparameter, one point
/// per seed, coloured as its trial's curve. False when no numeric
/// hyperparameter varies (a note is drawn instead).
fn draw_finals<DB: DrawingBackend>(
    bottom: &DrawingArea<DB, plotters::coord::Shift>,
    input: &PlotInput,
    keys: &[String],
    trials: &[String],
) -> Result<bool, DrawErr>
where
    DB::ErrorType: 'static,
{
    // Final metric against a hyperparameter, one point per seed.
    let param = input.param.clone().or_else(|| {
        keys.iter()
            .find(|k| {
                input
                    .jobs
                    .iter()
                    .all(|j| j.params.get(*k).and_then(|v| v.as_f64()).is_some())
            })
            .cloned()
    });
    let Some(param) = param else {
        bottom.draw(&Text::new(
            "no numeric hyperparameter varies: nothing to plot against (use --param)",
            (20, 30),
            (FAMILY, 16),
        ))?;
        return Ok(false);
    };
    let pts: Vec<(f64, f64, usize)> = input
        .jobs
        .iter()
        .filter_map(|j| {
            let x = j.params.get(&param)?.as_f64()?;
            let t = trials.iter().position(|k| *k == j.trial)?;
            Some((x, j.final_value?, t))
        })
        .collect();
    let xlog = spans_decades(&pts.iter().map(|p| p.0).collect::<Vec<_>>());
    let ylog = spans_decades(&pts.iter().map(|p| p.1).collect::<Vec<_>>());
    let fx = |v: f64| if xlog { v.log10() } else { v };
    let fy = |v: f64| if ylog { v.log10() } else { v };
    let (a0, a1) = bounds(&pts.iter().map(|p| fx(p.0)).collect::<Vec<_>>());
    let (b0, b1) = bounds(&pts.iter().map(|p| fy(p.1)).collect::<Vec<_>>());
    let mut c2 = ChartBuilder::on(bottom)
        .caption(
            format!(
                "final {} against {param} (one point per seed)",
                input.metric
            ),
            (FAMILY, 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(a0..a1, b0..b1)?;
    let xd = if xlog {
        format!("log10({param})")
    } else {
        param.clone()
    };
    let yd = if ylog {
        format!("log10(final {})", input.metric)
    } else {
        format!("final {}", input.metric)
    };
    c2.configure_mesh()
        .x_desc(xd.as_str())
        .y_desc(yd.as_str())
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    c2.draw_series(
        pts.iter()
            .map(|(x, y, t)| Circle::new((fx(*x), fy(*y)), 5, Palette99::pick(*t).filled())),
    )?;
    Ok(true)
}

fn bounds(v: &[f64]) -> (f64, f64) {
    let lo = v
        .iter()
        .cloned()
        .filter(|x| x.is_finite())
        .fold(f64::INFINITY, f64::min);
    let hi = v
        .iter()
        .cloned()
        .filter(|x| x.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

/// Renders to `path` as `format`; an SVG carries the font when `embed_font`.
pub fn render(
    input: &PlotInput,
    path: &Path,
    format: ImageFormat,
    embed_font: bool,
) -> Result<(), String> {
    register();
    let size = (1200, 1000);
    match format {
        ImageFormat::Png => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw(root, input).map_err(|e| format!("drawing {}: {e}", path.display()))
        }
        ImageFormat::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw(root, input).map_err(|e| format!("drawing {}: {e}", path.display()))?;
            }
            std::fs::write(path, font_style(&svg, embed_font))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
    }
}

/// The SVG's text style: the font as a data URL (`embed`), or DejaVu Sans
/// and the fonts that share its metrics (Bitstream Vera Sans, Verdana) as
/// fallbacks, so text keeps the widths it was laid out with. A style rule
/// wins over the elements' own font-family attributes.
fn font_style(svg: &str, embed: bool) -> String {
    let face = if embed {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(FONT);
        format!("@font-face {{ font-family: '{FAMILY}'; src: url(data:font/ttf;base64,{data}) format('truetype'); }} ")
    } else {
        String::new()
    };
    let style = format!("<defs><style>{face}text {{ font-family: '{FAMILY}', 'Bitstream Vera Sans', Verdana, sans-serif; }}</style></defs>");
    match svg.find('>') {
        Some(i) if svg.starts_with("<svg") => format!("{}{}{}", &svg[..=i], style, &svg[i + 1..]),
        _ => svg.to_string(),
    }
}

// ---------------------------------------------------------------- the command

use crate::client::*;
use crate::complete;
use clap_complete::engine::ArgValueCompleter;
use liandan_common::exit;
use liandan_proto::v1 as pb;
use std::path::PathBuf;

/// The image format `plot` writes: `-o` if given (png or svg), else the
/// file's extension, else png. A file name given to `-o` (which is the
/// format in every command) or a file whose extension disagrees is a usage
/// error, told before anything is fetched.
pub fn plot_format(output: Option<&str>, file: Option<&std::path::Path>) -> R<ImageFormat> {
    // The file's extension, when it names a format plot draws.
    let from_file = file.and_then(|f| {
        let ext = f.extension()?.to_str()?.to_ascii_lowercase();
        ImageFormat::parse(&ext)
    });
    let Some(o) = output else {
        return match (file, from_file) {
            (Some(f), None) => Err(Fail(
                exit::USAGE,
                format!(
                    "cannot write {}: plot draws PNG or SVG; name the file .png or .svg, or give the format with -o png|svg",
                    f.display()
                ),
            )),
            _ => Ok(from_file.unwrap_or(ImageFormat::Png)),
        };
    };
    let Some(fmt) = ImageFormat::parse(&o.to_ascii_lowercase()) else {
        let hint = if o.contains('.') || o.contains('/') {
            format!("; -o is the output format in every command, so give the file as --file {o}")
        } else {
            String::new()
        };
        return Err(Fail(
            exit::USAGE,
            format!("-o {o:?}: plot draws png or svg{hint}"),
        ));
    };
    // -o decides; a file named for the other format is refused rather than
    // written with content its name belies.
    match from_file {
        Some(f) if f != fmt => Err(Fail(
            exit::USAGE,
            format!(
                "-o {} but --file ends in .{}: choose one format",
                fmt.extension(),
                f.extension()
            ),
        )),
        _ => Ok(fmt),
    }
}

/// `plot --param P`: P must be a hyperparameter of the sweep with numbers
/// for values (the chart's x axis), else a usage error naming the choices.
pub fn plot_param_ok(r: &pb::GetResultsResponse, p: &str) -> R<()> {
    let mut names = std::collections::BTreeSet::new();
    let mut numeric = false;
    for j in &r.jobs {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&j.params_json) {
            if m.get(p).is_some_and(|v| v.as_f64().is_some()) {
                numeric = true;
            }
            names.extend(m.keys().cloned());
        }
    }
    if numeric {
        return Ok(());
    }
    let list = names.iter().cloned().collect::<Vec<_>>().join(", ");
    let what = if r.jobs.is_empty() {
        format!("--param {p}: the sweep has no jobs with results yet, so there is nothing to draw against it")
    } else if names.contains(p) {
        format!("--param {p}: its values are not numbers, so it cannot be an axis")
    } else {
        format!("--param {p}: the sweep has no such hyperparameter")
    };
    if list.is_empty() {
        return Err(Fail(exit::USAGE, what));
    }
    Err(Fail(
        exit::USAGE,
        format!("{what}; its hyperparameters: {list}"),
    ))
}

/// The arguments of `liandan plot`.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
    /// Metric to draw (default: the sweep's metric).
    #[arg(long)]
    pub metric: Option<String>,
    /// Hyperparameter of the second chart (default: the first numeric one that varies).
    #[arg(long)]
    pub param: Option<String>,
    /// The image format, png or svg (default: --file's extension, else png).
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<String>,
    /// The file to write (default: SWEEP.png or SWEEP.svg).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Embed the font in an SVG (about 1 MB) so its text renders the same
    /// everywhere; without it the SVG names DejaVu Sans and its look-alikes.
    #[arg(long)]
    pub embed_font: bool,
}

/// `liandan plot`.
pub async fn plot(url: &Target, args: PlotArgs) -> R<i32> {
    let PlotArgs {
        sweep,
        metric,
        param,
        output,
        file,
        embed_font,
    } = args;
    // The format and the file are checked before anything is fetched.
    let format = plot_format(output.as_deref(), file.as_deref())?;
    let mut c = connect(url).await?;
    let r = fetch_results(&mut c, &sweep).await?;
    let s = r.sweep.clone().unwrap_or_default();
    let metric = metric.unwrap_or_else(|| s.metric_name.clone());
    if metric.is_empty() {
        return Err(Fail(
            exit::USAGE,
            "the sweep names no metric; choose one with --metric".into(),
        ));
    }
    if let Some(p) = &param {
        plot_param_ok(&r, p)?;
    }
    let mut jobs = Vec::new();
    for j in &r.jobs {
        let recs = all_metrics(&c, &j.job_id, 0).await?;
        let mut points = Vec::new();
        for rec in recs {
            let v: serde_json::Value = serde_json::from_str(&rec.json).unwrap_or_default();
            let Some(x) = v.get(&metric).and_then(|x| x.as_f64()) else {
                continue;
            };
            // A value reported without a step is placed at its ordinal
            // (as W&B counts `_step` per logged record).
            let step = v
                .get("step")
                .and_then(|s| s.as_f64())
                .or(rec.step.map(|s| s as f64))
                .unwrap_or(points.len() as f64);
            points.push((step, x));
        }
        let final_value = if metric == s.metric_name {
            j.final_metric
        } else {
            points.last().map(|p| p.1)
        };
        jobs.push(crate::plot::JobSeries {
            trial: j.trial_id.clone(),
            params: serde_json::from_str(&j.params_json).unwrap_or_default(),
            points,
            final_value,
        });
    }
    if jobs.iter().all(|j| j.points.is_empty()) {
        return Err(Fail(exit::DATAERR, format!("no job of {} reported the metric {metric:?}; check the name with `liandan metrics JOB`", s.id)));
    }
    let path = file.unwrap_or_else(|| PathBuf::from(format!("{}.{}", s.name, format.extension())));
    crate::plot::render(
        &crate::plot::PlotInput {
            title: s.name.clone(),
            metric,
            param,
            jobs,
        },
        &path,
        format,
        embed_font,
    )
    .map_err(|e| Fail(exit::IOERR, e))?;
    println!("wrote {}", path.display());
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input() -> PlotInput {
        let mut jobs = Vec::new();
        for (t, lr) in [("tr-a", 0.001), ("tr-b", 0.1)] {
            for seed in 0..3 {
                let points = (1..=10)
                    .map(|s| {
                        (
                            s as f64 * 10.0,
                            2.0 / (s as f64 * lr * 100.0 + seed as f64 + 1.0),
                        )
                    })
                    .collect::<Vec<_>>();
                let final_value = points.last().map(|p| p.1);
                jobs.push(JobSeries {
                    trial: t.into(),
                    params: json!({"lr": lr, "epochs": 3}),
                    points,
                    final_value,
                });
            }
        }
        PlotInput {
            title: "demo".into(),
            metric: "loss".into(),
            param: None,
            jobs,
        }
    }

    #[test]
    fn png_and_svg_render_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("p.png");
        render(&input(), &png, ImageFormat::Png, false).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let svg = dir.path().join("p.svg");
        render(&input(), &svg, ImageFormat::Svg, false).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("final loss against lr"), "svg lacks text");
        assert!(text.contains("Verdana, sans-serif") && !text.contains("@font-face"));
        // Small without the font (it was 1 MB with it, always).
        assert!(text.len() < 200_000, "{} bytes", text.len());
        // Steps 10..100 label their ticks as integers.
        let labels: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(
            labels.contains(&"50") && !labels.contains(&"50.0"),
            "integer steps"
        );
        render(&input(), &svg, ImageFormat::Svg, true).unwrap();
        let embedded = std::fs::read_to_string(&svg).unwrap();
        assert!(embedded.contains("@font-face") && embedded.len() > 900_000);
    }

    #[test]
    fn ticks_read_as_people_write_numbers() {
        assert_eq!(tick(&50.0), "50");
        assert_eq!(tick(&-3.0), "-3");
        assert_eq!(tick(&0.0), "0");
        assert_eq!(tick(&0.25), "0.25");
        assert_eq!(tick(&(0.1 + 0.2)), "0.3");
        assert_eq!(tick(&0.00012), "1.20e-4");
        assert_eq!(tick(&2.5e9), "2500000000");
        assert_eq!(tick(&2.5e15), "2.50e15");
    }

    #[test]
    fn decades_are_detected() {
        assert!(spans_decades(&[0.001, 0.5, 2.0]));
        assert!(!spans_decades(&[0.5, 0.9]));
        assert!(!spans_decades(&[-1.0, 1000.0]));
    }
}
