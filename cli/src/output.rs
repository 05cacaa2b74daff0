//! Rendering listings as tables (fitted to the terminal width), JSON or CSV.

use serde_json::Value;
use std::io::IsTerminal;
use std::time::Duration;

/// Output format of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    /// A table whose cells are never cut to fit the terminal.
    Wide,
    Json,
    Csv,
}

/// A listing: column names and rows of cells; `json` is the stable JSON form.
#[derive(Default)]
pub struct Listing {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub json: Value,
    /// Each row's hyperparameters, for listings with a `params` column:
    /// CSV gives them one column each instead of that column.
    pub params: Vec<Value>,
}

/// The width tables must fit: `COLUMNS`, else the terminal's; unlimited when
/// the output is not a terminal (a pipe or a file gets whole lines).
pub fn terminal_width() -> usize {
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    {
        return c.max(40);
    }
    if std::io::stdout().is_terminal() {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass; fd 1 is a terminal here.
        let r = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_col > 0 {
            return ws.ws_col as usize;
        }
        return 120;
    }
    usize::MAX
}

fn truncate(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        s.to_string()
    } else if w <= 1 {
        "…".chars().take(w).collect()
    } else {
        let mut t: String = s.chars().take(w - 1).collect();
        t.push('…');
        t
    }
}

/// Renders a table whose total width fits `width`, shrinking the widest columns first.
pub fn table(columns: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let sep = 2;
    let total = |w: &[usize]| w.iter().sum::<usize>() + sep * w.len().saturating_sub(1);
    // The last column (free text such as parameters or commands) gives way first.
    if let Some(last) = widths.len().checked_sub(1) {
        let over = total(&widths).saturating_sub(width);
        widths[last] = widths[last].saturating_sub(over).max(12.min(widths[last]));
    }
    while total(&widths) > width {
        let (i, &m) = widths
            .iter()
            .enumerate()
            .max_by_key(|(_, w)| **w)
            .unwrap_or((0, &0));
        if m <= 6 {
            break;
        }
        widths[i] = m - 1;
    }
    let mut out = String::new();
    let line = |cells: Vec<String>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{:<w$}", truncate(c, *w), w = *w))
            .collect();
        parts.join(&" ".repeat(sep)).trim_end().to_string()
    };
    out.push_str(&line(columns.iter().map(|c| c.to_uppercase()).collect()));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// `s` with control characters (terminal escape sequences among them: a
/// worker's hostname, a job's message) shown as escapes, never sent raw to a
/// terminal.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn csv_cell(s: &str) -> String {
    let s = &printable(s);
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The hyperparameters, nested ones as `outer.inner`, each a cell: strings
/// as they are, other values as JSON.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// The columns and rows with the `params` column replaced by one column per
/// hyperparameter (in name order; `param.NAME` where NAME is another
/// column's), when the listing has the rows' parameters.
fn params_as_columns(l: &Listing) -> (Vec<String>, Vec<Vec<String>>) {
    let at = l.columns.iter().position(|c| *c == "params");
    let (Some(at), true) = (at, l.params.len() == l.rows.len() && !l.rows.is_empty()) else {
        return (
            l.columns.iter().map(|c| c.to_string()).collect(),
            l.rows.clone(),
        );
    };
    let flat: Vec<Vec<(String, String)>> = l
        .params
        .iter()
        .map(|p| {
            let mut out = Vec::new();
            flatten("", p, &mut out);
            out
        })
        .collect();
    let names: std::collections::BTreeSet<&String> =
        flat.iter().flat_map(|f| f.iter().map(|(k, _)| k)).collect();
    let mut columns: Vec<String> = l.columns.iter().map(|c| c.to_string()).collect();
    columns.splice(
        at..=at,
        names.iter().map(|n| {
            if l.columns.contains(&n.as_str()) {
                format!("param.{n}")
            } else {
                n.to_string()
            }
        }),
    );
    let rows = l
        .rows
        .iter()
        .zip(&flat)
        .map(|(r, f)| {
            let mut r = r.clone();
            let cells = names.iter().map(|n| {
                f.iter()
                    .find(|(k, _)| k == *n)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            });
            r.splice(at..=at, cells);
            r
        })
        .collect();
    (columns, rows)
}

/// Renders a listing in the chosen format.
pub fn render(l: &Listing, f: Format) -> String {
    match f {
        Format::Table => table(&l.columns, &l.rows, terminal_width()),
        Format::Wide => table(&l.columns, &l.rows, usize::MAX),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&l.json).unwrap_or_default()
        ),
        Format::Csv => {
            let (columns, rows) = params_as_columns(l);
            let mut out = columns
                .iter()
                .map(|c| csv_cell(c))
                .collect::<Vec<_>>()
                .join(",");
            out.push('\n');
            for r in &rows {
                out.push_str(&r.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            out
        }
    }
}

/// A number for a table cell, with a sensible number of digits.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

pub fn opt_num(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "-".into())
}

/// A number for a cell: rounded for people ([`opt_num`]), or, with `exact`
/// (CSV), the shortest text that reads back as the same f64, and an empty
/// cell for no value (so pandas reads the column as numbers).
pub fn num_cell(x: Option<f64>, exact: bool) -> String {
    match (x, exact) {
        (Some(x), true) => x.to_string(),
        (None, true) => String::new(),
        (x, false) => opt_num(x),
    }
}

/// A time (seconds since the epoch) as RFC 3339 in UTC, to the second.
pub fn iso_time(secs: f64) -> String {
    if !(secs.is_finite() && secs > 0.0) {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_secs_f64(secs.min(1e12));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A time to the microsecond as RFC 3339 in UTC, for CSV: exact, and read
/// as a time by pandas and spreadsheets; empty when the time is unset.
pub fn exact_time(secs: f64) -> String {
    if !(secs.is_finite() && secs > 0.0) {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_secs_f64(secs.min(1e12));
    humantime::format_rfc3339_micros(t).to_string()
}

/// A time for a cell: to the second for people ([`iso_time`]), to the
/// microsecond with `exact` (CSV; [`exact_time`]).
pub fn time_cell(secs: f64, exact: bool) -> String {
    if exact {
        exact_time(secs)
    } else {
        iso_time(secs)
    }
}

/// A time for JSON, beside the seconds since the epoch: RFC 3339 to the
/// microsecond, or null when the time is unset.
pub fn json_time(secs: f64) -> serde_json::Value {
    match exact_time(secs) {
        t if t.is_empty() => serde_json::Value::Null,
        t => serde_json::Value::String(t),
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How long ago `then` was, to its largest two units (`3m 12s`, `2d 4h`).
pub fn human_age(now: f64, then: f64) -> String {
    if !(then.is_finite() && then > 0.0) {
        return "-".into();
    }
    two_units(human_duration((now - then).max(0.0)))
}

/// The largest two units of a humantime duration (`1h 2m 3s` → `1h 2m`).
pub fn two_units(d: String) -> String {
    d.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// A duration to the second, as `1h 2m 3s`.
pub fn human_duration(secs: f64) -> String {
    if !(secs.is_finite() && secs >= 0.0) {
        return "-".into();
    }
    humantime::format_duration(Duration::from_secs(secs.round().min(1e12) as u64)).to_string()
}

/// Bytes for people: `512 B`, `3.2 MiB`, `1.5 TiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_numbers_read_back_exactly() {
        for x in [0.1 + 0.2, 1.0 / 3.0, 1.796e9 + 0.123456, -2.5e-7, 42.0] {
            assert_eq!(num_cell(Some(x), true).parse::<f64>().ok(), Some(x));
        }
        assert_eq!(num_cell(None, true), "");
        assert_eq!(num_cell(None, false), "-");
        assert_eq!(num_cell(Some(1.0 / 3.0), false), "0.3333");
    }

    #[test]
    fn table_fits_width_and_truncates_long_cells() {
        let rows = vec![
            vec!["job-1".to_string(), "x".repeat(100)],
            vec!["job-2".to_string(), "short".into()],
        ];
        let t = table(&["id", "params"], &rows, 40);
        for line in t.lines() {
            assert!(line.chars().count() <= 40, "{line:?}");
        }
        assert!(t.contains('…'));
        assert_eq!(t.lines().next().unwrap(), format!("ID     {}", "PARAMS"));
    }

    #[test]
    fn control_characters_never_reach_the_terminal_raw() {
        let rows = vec![vec!["\u{1b}]0;owned\u{7}\u{1b}[31mred".to_string()]];
        let t = table(&["hostname"], &rows, 80);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains("\\u{1b}[31mred"), "{t}");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let l = Listing {
            columns: vec!["a", "b"],
            rows: vec![vec!["1,2".into(), "say \"hi\"".into()]],
            json: Value::Null,
            ..Default::default()
        };
        assert_eq!(render(&l, Format::Csv), "a,b\n\"1,2\",\"say \"\"hi\"\"\"\n");
    }
}
