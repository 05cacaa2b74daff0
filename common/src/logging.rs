//! Logging setup shared by the daemons and the CLI: `tracing` to stderr,
//! human-readable on a terminal, JSON with `--log-format json` or
//! `LIANDAN_LOG_FORMAT=json`, filtered by `RUST_LOG`. Under systemd
//! (`JOURNAL_STREAM` set) lines carry no timestamp (the journal adds one) and no colour.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `format` is "text" or "json"; the
/// `LIANDAN_LOG_FORMAT` variable wins when set. Safe to call once per process.
pub fn init(format: &str, default_filter: &str) {
    let format = std::env::var("LIANDAN_LOG_FORMAT").unwrap_or_else(|_| format.to_string());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal() && !under_journal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else if under_journal {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}
