//! `liandan`: the user's client. Offline: `validate`, `expand`, `completions`.
//! Everything else talks to the coordinator (`--coordinator` or
//! `LIANDAN_COORDINATOR`). Errors are one line that says what to do; exit codes
//! follow sysexits (see the README).
//!
//! Invariant: the CLI never depends on the coordinator crate, only on the wire
//! contract (`liandan-proto`) and `liandan-common`.

mod certs;
mod client;
mod complete;
mod fleet;
mod jobs;
mod output;
mod plot;
mod results;
mod sweeps;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::engine::ArgValueCompleter;
use client::{print, Fail, Target, R};
use liandan_common::exit;
use output::Format;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "liandan",
    version,
    about = "Run hyperparameter x seed sweeps on a liandan cluster and read honest results."
)]
struct Cli {
    /// Coordinator URL.
    #[arg(
        long,
        global = true,
        env = "LIANDAN_COORDINATOR",
        default_value = "http://127.0.0.1:7477"
    )]
    coordinator: String,
    /// File with your user token (mode 600); or set LIANDAN_TOKEN.
    #[arg(long, global = true, env = "LIANDAN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The cluster CA certificate, for an https:// coordinator.
    #[arg(long, global = true, env = "LIANDAN_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check a sweep file (offline). Exit 0 when valid, 65 when not.
    Validate(sweeps::ValidateArgs),
    /// List every job a sweep file expands to, with its command line (offline).
    Expand(sweeps::ExpandArgs),
    /// Submit a sweep file. The same file under the same name is not duplicated.
    Submit(sweeps::SubmitArgs),
    /// Sweeps and their progress, or one sweep.
    Status(sweeps::StatusArgs),
    /// The jobs of a sweep.
    Jobs(jobs::JobsArgs),
    /// A job's log (stdout and stderr in line order).
    Logs(jobs::LogsArgs),
    /// A job's metric records.
    Metrics(jobs::MetricsArgs),
    /// Results per trial, aggregated over seeds, ranked by the sweep's metric.
    Results(results::ResultsArgs),
    /// Learning curves per trial (mean and band over seeds) and the final metric
    /// against a hyperparameter (a point per seed), as PNG or SVG.
    Plot(plot::PlotArgs),
    /// Cancel a sweep (sw-...) or a job (job-...).
    Cancel(sweeps::CancelArgs),
    /// Stop starting new jobs of a sweep (running ones continue).
    Pause(sweeps::PauseArgs),
    /// Start jobs of a paused sweep again.
    Resume(sweeps::ResumeArgs),
    /// Wait for a sweep to finish. Exit 1 if a job failed, 130 on Ctrl-C (the sweep goes on).
    Wait(sweeps::WaitArgs),
    /// Workers, their resources and what they run.
    Workers(fleet::WorkersArgs),
    /// Stop giving a worker new jobs; its running jobs finish. Lasts until --undo.
    Drain(fleet::DrainArgs),
    /// A job's stored checkpoints.
    Checkpoints(jobs::CheckpointsArgs),
    /// Download a job's checkpoint (the latest, or --step N).
    Download(jobs::DownloadArgs),
    /// Print the script that registers shell completions (ids included).
    ///
    /// Commands, flags, and the coordinator's sweep, job and worker ids are
    /// completed: e.g. `source <(liandan completions bash)` in ~/.bashrc.
    Completions { shell: clap_complete::Shell },
    /// TLS certificates and tokens for a cluster (offline).
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Everything about one job: its sweep, parameters, command line,
    /// attempts (worker, times, outcome, exit code, message) and the last
    /// lines of its log.
    Describe {
        #[arg(add = ArgValueCompleter::new(complete::job))]
        job: String,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Run failed jobs again: every failed job of SWEEP (--failed, the
    /// default), or one job (--job, failed or cancelled). Retries are reset;
    /// attempts go on from their last number.
    Retry(sweeps::RetryArgs),
    /// Delete a sweep with its jobs, logs, metrics and checkpoints. Refused
    /// while jobs are queued or running, unless --force (they are stopped).
    Delete(sweeps::DeleteArgs),
    /// User tokens: who may use the coordinator, as a user or an admin.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Make a token for the user NAME (admins). It is printed once; the
    /// coordinator keeps only its hash. NAME owns the sweeps it submits.
    Add {
        name: String,
        /// An admin: may also act on every sweep, drain and forget workers,
        /// and manage tokens. Without it, a user: acts on their own sweeps,
        /// reads everything.
        #[arg(long)]
        admin: bool,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Every user: name, role, and where the token comes from (admins).
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Revoke NAME's token: refused from now on (admins). NAME's sweeps stay.
    Revoke {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Who the coordinator takes this CLI's token for.
    Whoami {
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// A private CA, a coordinator certificate, worker certificates and tokens, in DIR.
    Init {
        dir: PathBuf,
        /// Host names or IPs the coordinator is reached at (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Worker client certificates to make.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
}

/// Output of commands that print a message rather than a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TextFormat {
    Text,
    Json,
}

async fn run(cli: Cli) -> R<i32> {
    let url = Target {
        url: cli.coordinator.clone(),
        token_file: cli.token_file.clone(),
        ca_cert: cli.ca_cert.clone(),
    };
    match cli.cmd {
        Cmd::Validate(args) => sweeps::validate(&url, args).await,
        Cmd::Expand(args) => sweeps::expand(&url, args).await,
        Cmd::Certs {
            cmd:
                CertsCmd::Init {
                    dir,
                    hosts,
                    workers,
                },
        } => {
            let summary = certs::init(&dir, &hosts, workers).map_err(|e| Fail(exit::IOERR, e))?;
            print(summary);
            Ok(exit::OK)
        }
        Cmd::Tokens { cmd } => fleet::tokens(&url, cmd).await,
        Cmd::Describe { job, output } => jobs::describe(&url, &job, output).await,
        Cmd::Retry(args) => sweeps::retry(&url, args).await,
        Cmd::Delete(args) => sweeps::delete(&url, args).await,
        Cmd::Completions { shell } => {
            print(complete::registration(shell).map_err(|e| Fail(exit::USAGE, e))?);
            Ok(exit::OK)
        }
        Cmd::Submit(args) => sweeps::submit(&url, args).await,
        Cmd::Status(args) => sweeps::status(&url, args).await,
        Cmd::Jobs(args) => jobs::jobs(&url, args).await,
        Cmd::Logs(args) => jobs::logs(&url, args).await,
        Cmd::Metrics(args) => jobs::metrics(&url, args).await,
        Cmd::Results(args) => results::results(&url, args).await,
        Cmd::Plot(args) => plot::plot(&url, args).await,
        Cmd::Cancel(args) => sweeps::cancel(&url, args).await,
        Cmd::Pause(args) => sweeps::pause(&url, args).await,
        Cmd::Resume(args) => sweeps::resume(&url, args).await,
        Cmd::Wait(args) => sweeps::wait(&url, args).await,
        Cmd::Workers(args) => fleet::workers(&url, args).await,
        Cmd::Drain(args) => fleet::drain(&url, args).await,
        Cmd::Checkpoints(args) => jobs::checkpoints(&url, args).await,
        Cmd::Download(args) => jobs::download(&url, args).await,
    }
}

fn main() {
    // Called back by the shell when the user presses Tab (COMPLETE=SHELL).
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // One worker thread besides the main one: connections (HTTP/2 pings
    // among them) are served there while the main thread may block writing
    // to a paused pipe (`liandan logs -f | less`), so a follow is not closed
    // by the coordinator's keepalive.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::SOFTWARE);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(c) => c,
        Err(Fail(code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::*;
    use crate::output::*;
    use crate::plot::plot_format;

    #[test]
    fn control_characters_from_the_wire_are_escaped() {
        assert_eq!(printable("gpu-01"), "gpu-01");
        assert_eq!(printable("h\u{1b}[2Jx"), "h\\u{1b}[2Jx");
        assert_eq!(printable("a\nb\u{7}"), "a\\nb\\u{7}");
    }

    #[test]
    fn a_user_token_is_refused_over_plaintext_naming_the_host() {
        let Err(Fail(code, msg)) = token_transport_ok("http://coordinator.example:7477", true)
        else {
            panic!("refused");
        };
        assert_eq!(code, exit::USAGE);
        assert!(
            msg.contains("coordinator.example") && msg.contains("https://"),
            "{msg}"
        );
        assert!(token_transport_ok("http://coordinator.example:7477", false).is_ok());
        assert!(token_transport_ok("http://127.0.0.1:7477", true).is_ok());
    }

    #[test]
    fn a_url_without_a_scheme_says_which_to_add() {
        let Err(Fail(code, msg)) = check_url("localhost:7477") else {
            panic!("accepted");
        };
        assert_eq!(code, exit::USAGE);
        assert!(msg.contains("use http://localhost:7477"), "{msg}");
        assert!(check_url("ftp://h:1").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("http://127.0.0.1:7477").is_ok());
        assert!(check_url("https://c.example:7477").is_ok());
    }

    #[test]
    fn plot_takes_its_format_from_o_else_from_the_file_name() {
        use crate::plot::ImageFormat::{Png, Svg};
        use std::path::Path;
        let f = |o: Option<&str>, file: Option<&str>| plot_format(o, file.map(Path::new));
        assert_eq!(f(None, None).ok(), Some(Png));
        assert_eq!(f(None, Some("a.SVG")).ok(), Some(Svg));
        // -o decides; a file without a known extension is written as told.
        assert_eq!(f(Some("svg"), Some("out")).ok(), Some(Svg));
        assert_eq!(f(Some("png"), Some("out.dat")).ok(), Some(Png));
        for (o, file, says) in [
            (None, Some("out"), "name the file .png or .svg"),
            (Some("svg"), Some("a.png"), "choose one format"),
            (Some("x.jpg"), None, "--file x.jpg"),
        ] {
            let Err(Fail(code, msg)) = f(o, file) else {
                panic!("{o:?} {file:?} accepted");
            };
            assert_eq!(code, exit::USAGE);
            assert!(msg.contains(says), "{msg}");
        }
    }

    #[test]
    fn times_for_scripts_are_rfc3339_to_the_microsecond() {
        assert_eq!(exact_time(1_796_000_000.25), "2026-11-30T00:53:20.250000Z");
        assert_eq!(exact_time(0.0), "");
        assert_eq!(json_time(0.0), serde_json::Value::Null);
        assert_eq!(iso_time(1_796_000_000.9), "2026-11-30T00:53:20Z");
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(25 << 30), "25.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }
}
