//! What both daemons' `main` does before their own work: load and validate the
//! configuration (one line and exit 78 on error; `--print-config`), start the
//! runtime, and wait for SIGTERM or Ctrl-C.

use crate::config::{self, ConfigError};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// Loads and validates the configuration; exits 78 with one line on error.
/// With `print`, prints it (secrets redacted) and exits 0.
pub fn config_or_exit<T>(
    file: Option<&Path>,
    overrides: &[(&str, String)],
    validate: impl Fn(&T) -> Result<(), ConfigError>,
    print: bool,
) -> T
where
    T: DeserializeOwned + Serialize + Default,
{
    match config::load::<T>(file, overrides).and_then(|c| validate(&c).map(|_| c)) {
        Ok(c) => {
            if print {
                print!("{}", config::render_redacted(&c));
                std::process::exit(crate::exit::OK);
            }
            c
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(crate::exit::CONFIG);
        }
    }
}

/// The multi-thread runtime; exits 70 if it cannot start.
pub fn runtime_or_exit() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(crate::exit::SOFTWARE);
        }
    }
}

/// Resolves on SIGTERM (what systemd sends on stop) or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Raises the soft open-file limit to the hard one (the default soft limit,
/// 1024, is far below what a server with many connections needs) and returns
/// the soft limit in effect, or None if it cannot be read.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}
