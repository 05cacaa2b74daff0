//! `liandan-coordinator`: flags → config → logging → [`liandan_coordinator::run`].

use clap::Parser;
use liandan_common::config::CoordinatorConfig;
use liandan_common::exit;
use std::path::PathBuf;

/// The liandan coordinator: durable sweep state, scheduling and the user API.
#[derive(Parser, Debug)]
#[command(name = "liandan-coordinator", version, about)]
struct Args {
    /// TOML config file (defaults → file → LIANDAN_* env → flags).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:7477].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory for the database, logs and checkpoints.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds without a heartbeat before a worker's attempts are lost.
    #[arg(long, value_name = "SECS")]
    lease_timeout_secs: Option<f64>,
    /// Seconds between worker heartbeats.
    #[arg(long, value_name = "SECS")]
    heartbeat_interval_secs: Option<f64>,
    /// Seconds workers get to reconnect after a restart.
    #[arg(long, value_name = "SECS")]
    restart_grace_secs: Option<f64>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Allow listening beyond loopback without TLS or authentication (warned at every start).
    #[arg(long)]
    insecure: bool,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() {
    let args = Args::parse();
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &args.listen {
        overrides.push(("listen", v.clone()));
    }
    if let Some(v) = &args.data_dir {
        overrides.push(("data_dir", v.display().to_string()));
    }
    if let Some(v) = args.lease_timeout_secs {
        overrides.push(("lease_timeout_secs", v.to_string()));
    }
    if let Some(v) = args.heartbeat_interval_secs {
        overrides.push(("heartbeat_interval_secs", v.to_string()));
    }
    if let Some(v) = args.restart_grace_secs {
        overrides.push(("restart_grace_secs", v.to_string()));
    }
    if let Some(v) = &args.log_format {
        overrides.push(("log_format", v.clone()));
    }
    if args.insecure {
        overrides.push(("insecure", "true".into()));
    }
    let cfg: CoordinatorConfig = liandan_common::daemon::config_or_exit(
        args.config.as_deref(),
        &overrides,
        CoordinatorConfig::validate,
        args.print_config,
    );
    liandan_common::logging::init(&cfg.log_format, "info");
    let rt = liandan_common::daemon::runtime_or_exit();
    // Certificates, tokens and the safe-by-default rule are checked before
    // anything listens: a refusal is a configuration error (78).
    liandan_common::auth::install_crypto_provider();
    let security = match liandan_coordinator::security::Security::load(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(exit::CONFIG);
        }
    };
    let code = rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "error: cannot listen on {}: {e}; choose another address with --listen",
                    cfg.listen
                );
                return exit::UNAVAILABLE;
            }
        };
        // Port 0 picks a free port; say which, for scripts and tests.
        if let Ok(addr) = listener.local_addr() {
            println!("listening on {addr}");
        }
        let shutdown = async {
            liandan_common::daemon::shutdown_signal().await;
            tracing::info!("shutting down");
        };
        match liandan_coordinator::run(cfg, security, listener, shutdown).await {
            Ok(()) => exit::OK,
            // A second coordinator on one data directory: an operator's
            // mistake that a restart loop would not fix.
            Err(
                e @ (liandan_coordinator::RunError::Locked(_)
                | liandan_coordinator::RunError::DataDir(..)),
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
