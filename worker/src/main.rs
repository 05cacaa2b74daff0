//! `liandan-worker`: flags → config → logging → [`liandan_worker::run`].

use clap::Parser;
use liandan_common::config::WorkerConfig;
use liandan_common::exit;
use std::path::PathBuf;

/// The liandan worker daemon: runs jobs and streams their output to the coordinator.
#[derive(Parser, Debug)]
#[command(name = "liandan-worker", version, about)]
struct Args {
    /// TOML config file (defaults → file → LIANDAN_* env → flags).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Coordinator URL [default: http://127.0.0.1:7477].
    #[arg(long, value_name = "URL")]
    coordinator: Option<String>,
    /// Directory for identity, journal, spool and job directories.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// CPU slots offered to jobs that need no GPU.
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Labels jobs can ask for (`liandan.resources.labels`), comma-separated:
    /// a100,fast-disk.
    #[arg(long, value_name = "LABELS", value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// GPU discovery: auto, visible (only CUDA_VISIBLE_DEVICES) or none.
    #[arg(long, value_name = "MODE")]
    gpus: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping a job.
    #[arg(long, value_name = "SECS")]
    grace_period_secs: Option<f64>,
    /// Path of liandan-train.
    #[arg(long, value_name = "PATH")]
    train_binary: Option<String>,
    /// Directory relative `liandan.workdir` and `program` paths are taken from
    /// (default: the directory the worker was started in).
    #[arg(long, value_name = "DIR")]
    base_dir: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() {
    let args = Args::parse();
    let mut o: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &args.coordinator {
        o.push(("coordinator", v.clone()));
    }
    if let Some(v) = &args.state_dir {
        o.push(("state_dir", v.display().to_string()));
    }
    if let Some(v) = args.slots {
        o.push(("slots", v.to_string()));
    }
    if let Some(v) = &args.gpus {
        o.push(("gpus", v.clone()));
    }
    if let Some(v) = &args.labels {
        o.push(("labels", v.join(",")));
    }
    if let Some(v) = args.grace_period_secs {
        o.push(("grace_period_secs", v.to_string()));
    }
    if let Some(v) = &args.train_binary {
        o.push(("train_binary", v.clone()));
    }
    if let Some(v) = &args.base_dir {
        o.push(("base_dir", v.display().to_string()));
    }
    if let Some(v) = &args.log_format {
        o.push(("log_format", v.clone()));
    }
    let cfg: WorkerConfig = liandan_common::daemon::config_or_exit(
        args.config.as_deref(),
        &o,
        WorkerConfig::validate,
        args.print_config,
    );
    liandan_common::logging::init(&cfg.log_format, "info");
    let rt = liandan_common::daemon::runtime_or_exit();
    let code = rt.block_on(async move {
        let shutdown = async {
            liandan_common::daemon::shutdown_signal().await;
        };
        match liandan_worker::run(cfg, shutdown).await {
            Ok(()) => exit::OK,
            Err(
                e @ (liandan_worker::WorkerError::Locked(..)
                | liandan_worker::WorkerError::Tls(..)
                | liandan_worker::WorkerError::Jail(..)),
            ) => {
                eprintln!("error: {e}");
                exit::CONFIG
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::SOFTWARE
            }
        }
    });
    std::process::exit(code);
}
