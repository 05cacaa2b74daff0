//! `liandan`: the user's client. Offline: `validate`, `expand`, `completions`.
//! Everything else talks to the coordinator (`--coordinator` or
//! `LIANDAN_COORDINATOR`). Errors are one line that says what to do; exit codes
//! follow sysexits (see the README).
//!
//! Invariant: the CLI never depends on the coordinator crate, only on the wire
//! contract (`liandan-proto`) and `liandan-common`.

mod certs;
mod complete;
mod output;
mod plot;
mod results;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::engine::ArgValueCompleter;
use liandan_common::exit;
use liandan_common::sweep::{self, command, Format as SpecFormat, Method as SpecMethod};
use liandan_proto::v1 as pb;
use output::{num, num_cell, opt_num, printable, render, Format, Listing};
use pb::user_service_client::UserServiceClient;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

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
    Validate {
        file: PathBuf,
        /// The sweep name to check (as `submit --name`).
        #[arg(long)]
        name: Option<String>,
        /// `json`: the verdict, the warnings and the parsed spec, for scripts.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// List every job a sweep file expands to, with its command line (offline).
    Expand {
        file: PathBuf,
        /// The sweep name the ids derive from (as `submit --name`).
        #[arg(long)]
        name: Option<String>,
        /// For sweeps that propose trials as they run (bayes, tpe, random
        /// without run_cap): show the first N trials random search would draw.
        #[arg(long, value_name = "N", default_value_t = 10)]
        first: usize,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Submit a sweep file. The same file under the same name is not duplicated.
    Submit {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Wait for the sweep to finish, showing progress.
        #[arg(long)]
        wait: bool,
        /// `json`: {"sweep_id", "name", "created", "trials", "jobs", "warnings"}.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Sweeps and their progress, or one sweep.
    Status {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The jobs of a sweep.
    Jobs {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
        /// Only jobs in this state: queued, running, succeeded, failed, cancelled, pruned.
        #[arg(long)]
        state: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// A job's log (stdout and stderr in line order).
    Logs {
        #[arg(add = ArgValueCompleter::new(complete::job))]
        job: String,
        /// Keep following new lines until the attempt ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Attempt number (default: the current one).
        #[arg(long)]
        attempt: Option<u64>,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// Only stderr.
        #[arg(long, conflicts_with = "stdout")]
        stderr: bool,
        /// Only stdout.
        #[arg(long)]
        stdout: bool,
    },
    /// A job's metric records.
    Metrics {
        #[arg(add = ArgValueCompleter::new(complete::job))]
        job: String,
        #[arg(long)]
        attempt: Option<u64>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Results per trial, aggregated over seeds, ranked by the sweep's metric.
    Results {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
        /// Use the best value over training instead of the final one.
        #[arg(long)]
        best: bool,
        /// Show the best N trials (0: all); the coordinator ranks every trial.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Learning curves per trial (mean and band over seeds) and the final metric
    /// against a hyperparameter (a point per seed), as PNG or SVG.
    Plot {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
        /// Metric to draw (default: the sweep's metric).
        #[arg(long)]
        metric: Option<String>,
        /// Hyperparameter of the second chart (default: the first numeric one that varies).
        #[arg(long)]
        param: Option<String>,
        /// The image format, png or svg (default: --file's extension, else png).
        #[arg(short = 'o', long, value_name = "FORMAT")]
        output: Option<String>,
        /// The file to write (default: SWEEP.png or SWEEP.svg).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Embed the font in an SVG (about 1 MB) so its text renders the same
        /// everywhere; without it the SVG names DejaVu Sans and its look-alikes.
        #[arg(long)]
        embed_font: bool,
    },
    /// Cancel a sweep (sw-...) or a job (job-...).
    Cancel {
        #[arg(add = ArgValueCompleter::new(complete::sweep_or_job))]
        target: String,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Stop starting new jobs of a sweep (running ones continue).
    Pause {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Start jobs of a paused sweep again.
    Resume {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Wait for a sweep to finish. Exit 1 if a job failed, 130 on Ctrl-C (the sweep goes on).
    Wait {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
    },
    /// Workers, their resources and what they run.
    Workers {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Remove a disconnected worker that holds no job from the list (a
        /// machine gone for good); it registers again if it comes back (a
        /// join-token worker under a new id).
        #[arg(long, value_name = "WORKER", add = ArgValueCompleter::new(complete::worker))]
        forget: Option<String>,
    },
    /// Stop giving a worker new jobs; its running jobs finish. Lasts until --undo.
    Drain {
        #[arg(add = ArgValueCompleter::new(complete::worker))]
        worker: String,
        /// Lift the drain: the worker takes jobs again.
        #[arg(long)]
        undo: bool,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// A job's stored checkpoints.
    Checkpoints {
        #[arg(add = ArgValueCompleter::new(complete::job))]
        job: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Download a job's checkpoint (the latest, or --step N).
    Download {
        #[arg(add = ArgValueCompleter::new(complete::job))]
        job: String,
        #[arg(long)]
        step: Option<i64>,
        /// The file to write (default: JOB-step-N.ckpt).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// `json`: {"file", "bytes", "step", "blake3"} once written.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
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
    Retry {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
        /// Every failed job of the sweep (the default).
        #[arg(long, conflicts_with = "job")]
        failed: bool,
        /// Only this job (an id or a unique prefix of one).
        #[arg(long, value_name = "JOB", add = ArgValueCompleter::new(complete::job))]
        job: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// Delete a sweep with its jobs, logs, metrics and checkpoints. Refused
    /// while jobs are queued or running, unless --force (they are stopped).
    Delete {
        #[arg(add = ArgValueCompleter::new(complete::sweep))]
        sweep: String,
        /// Cancel the sweep first and wait for its running jobs to stop.
        #[arg(long)]
        force: bool,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: TextFormat,
    },
    /// User tokens: who may use the coordinator, as a user or an admin.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
}

#[derive(Subcommand, Debug)]
enum TokensCmd {
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
enum TextFormat {
    Text,
    Json,
}

/// A failure with the exit code it maps to.
struct Fail(i32, String);

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Fail {
        use tonic::Code::*;
        let code = match s.code() {
            NotFound => exit::NOTFOUND,
            InvalidArgument | AlreadyExists | FailedPrecondition => exit::DATAERR,
            Unavailable => exit::UNAVAILABLE,
            PermissionDenied | Unauthenticated => exit::NOPERM,
            OutOfRange | ResourceExhausted => exit::DATAERR,
            DataLoss => exit::IOERR,
            _ => exit::SOFTWARE,
        };
        let m = s.message();
        if matches!(s.code(), Unknown | Internal)
            && (m.contains("transport") || m.contains("h2 protocol") || m.contains("http2"))
        {
            // The connection broke below gRPC: most often plaintext against TLS.
            return Fail(exit::UNAVAILABLE, format!("the connection to the coordinator failed ({}); if it uses TLS, use an https:// URL and --ca-cert", s.message()));
        }
        let msg = if s.code() == Unavailable {
            format!("the coordinator is unavailable: {}", s.message())
        } else {
            s.message().to_string()
        };
        Fail(code, msg)
    }
}

type R<T> = Result<T, Fail>;

/// Where and how to reach the coordinator.
struct Target {
    url: String,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
}

/// A user-service client that carries the user token.
type Client = UserServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        liandan_common::auth::TokenInterceptor,
    >,
>;

/// A user token goes over plaintext `http://` only to this machine.
fn token_transport_ok(url: &str, has_token: bool) -> R<()> {
    match liandan_common::auth::token_in_the_clear(url).filter(|_| has_token) {
        Some(host) => Err(Fail(
            exit::USAGE,
            format!("refusing to send your token over plaintext http:// to {host}: anyone on the path could read it and act as you; use an https:// URL with --ca-cert (see `liandan certs init`), or reach the coordinator on a loopback address"),
        )),
        None => Ok(()),
    }
}

/// A coordinator URL must say http:// or https://; `localhost:7477` alone
/// got a transport error that did not say so.
fn check_url(url: &str) -> R<()> {
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(()),
        Some((scheme, _)) => Err(Fail(
            exit::USAGE,
            format!("coordinator URL {url:?}: the scheme {scheme:?} is not one liandan speaks; use http://HOST:PORT, or https://HOST:PORT with --ca-cert"),
        )),
        None => Err(Fail(
            exit::USAGE,
            format!("coordinator URL {url:?} has no scheme; use http://{url} (or https://{url} with --ca-cert)"),
        )),
    }
}

async fn connect(t: &Target) -> R<Client> {
    let url = &t.url;
    check_url(url)?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| {
            Fail(
                exit::USAGE,
                format!("invalid coordinator URL {url:?} ({e}); use e.g. http://127.0.0.1:7477"),
            )
        })?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        liandan_common::auth::install_crypto_provider();
        let ca = t.ca_cert.as_ref().ok_or_else(|| {
            Fail(
                exit::USAGE,
                "an https:// coordinator needs the cluster CA: --ca-cert FILE or LIANDAN_CA_CERT"
                    .into(),
            )
        })?;
        let pem = std::fs::read(ca).map_err(|e| {
            Fail(
                exit::NOINPUT,
                format!("cannot read the CA certificate {}: {e}", ca.display()),
            )
        })?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .map_err(|e| Fail(exit::USAGE, format!("TLS configuration: {e}")))?;
    }
    let token = match (&t.token_file, std::env::var("LIANDAN_TOKEN")) {
        (Some(f), _) => Some(
            liandan_common::auth::read_secret_file(f)
                .map_err(|e| Fail(exit::NOPERM, e.to_string()))?,
        ),
        (None, Ok(tok)) if !tok.trim().is_empty() => Some(tok.trim().to_string()),
        _ => None,
    };
    token_transport_ok(url, token.is_some())?;
    let interceptor = liandan_common::auth::TokenInterceptor::new(token.as_deref())
        .map_err(|e| Fail(exit::USAGE, e))?;
    let channel = endpoint.connect().await.map_err(|e| {
        Fail(exit::UNAVAILABLE, format!("cannot reach the coordinator at {url} ({e}); start it with `liandan-coordinator`, or point --coordinator / LIANDAN_COORDINATOR at it (https:// needs --ca-cert)"))
    })?;
    Ok(UserServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

fn read_spec(file: &PathBuf) -> R<(String, SpecFormat)> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Fail(
            exit::NOINPUT,
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    Ok((text, SpecFormat::from_path(&file.to_string_lossy())))
}

/// Every item of a paged listing: `page(token)` fetches one page and the
/// next page's token ("" after the last).
async fn all_pages<T, F, Fut>(mut page: F) -> R<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let (items, next) = page(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

/// Every sweep, a page at a time.
async fn all_sweeps(c: &Client) -> R<Vec<pb::Sweep>> {
    all_pages(|page_token| {
        let mut c = c.clone();
        async move {
            let r = c
                .list_sweeps(pb::ListSweepsRequest {
                    page_size: 0,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((r.sweeps, r.next_page_token))
        }
    })
    .await
}

/// Every job of a sweep (of one state, or all), a page at a time.
async fn all_jobs(c: &Client, sweep: &str, state: &str) -> R<Vec<pb::Job>> {
    all_pages(|page_token| {
        let mut c = c.clone();
        let req = pb::ListJobsRequest {
            sweep_id: sweep.into(),
            state: state.into(),
            page_size: 0,
            page_token,
        };
        async move {
            let r = c.list_jobs(req).await?.into_inner();
            Ok((r.jobs, r.next_page_token))
        }
    })
    .await
}

/// Every metric record of a job (of one attempt, or all), a page at a time.
async fn all_metrics(c: &Client, job: &str, attempt: u64) -> R<Vec<pb::MetricRecord>> {
    all_pages(|page_token| {
        let mut c = c.clone();
        let req = pb::GetMetricsRequest {
            job_id: job.into(),
            attempt,
            page_size: 0,
            page_token,
        };
        async move {
            let r = c.get_metrics(req).await?.into_inner();
            Ok((r.records, r.next_page_token))
        }
    })
    .await
}

/// `liandan tokens ...`.
async fn tokens(url: &Target, cmd: TokensCmd) -> Result<i32, Fail> {
    let mut c = connect(url).await?;
    match cmd {
        TokensCmd::Add {
            name,
            admin,
            output,
        } => {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    name,
                    role: if admin { "admin" } else { "user" }.into(),
                })
                .await?
                .into_inner();
            let info = r.info.unwrap_or_default();
            let js = json!({"name": info.name, "role": info.role, "token": r.token, "created_at": info.created_at, "created_at_iso": json_time(info.created_at)});
            say(
                output,
                format!(
                    "token for {} ({}), shown only now; give it to them privately (a file of mode 600 for LIANDAN_TOKEN_FILE):\n{}",
                    info.name, info.role, r.token
                ),
                js,
            );
        }
        TokensCmd::List { output } => {
            let ts = c
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let rows = ts
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.role.clone(),
                        t.source.clone(),
                        time_cell(t.created_at, output == Format::Csv),
                    ]
                })
                .collect();
            let json = json!(ts
                .iter()
                .map(|t| json!({"name": t.name, "role": t.role, "source": t.source, "created_at": t.created_at, "created_at_iso": json_time(t.created_at)}))
                .collect::<Vec<_>>());
            print(render(
                &Listing {
                    columns: vec!["name", "role", "source", "created"],
                    rows,
                    json,
                    ..Default::default()
                },
                output,
            ));
        }
        TokensCmd::Revoke { name, output } => {
            let t = c
                .revoke_token(pb::RevokeTokenRequest { name })
                .await?
                .into_inner();
            let js = json!({"name": t.name, "role": t.role, "revoked": true});
            say(
                output,
                format!("revoked {}'s token ({}); their sweeps stay", t.name, t.role),
                js,
            );
        }
        TokensCmd::Whoami { output } => {
            let t = c.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            let js = json!({"name": t.name, "role": t.role, "source": t.source});
            let text = if t.source == "none" {
                "the coordinator checks no user tokens (loopback, no user_token_file): everyone is an admin".to_string()
            } else {
                format!("{} ({}, token from {})", t.name, t.role, t.source)
            };
            say(output, text, js);
        }
    }
    Ok(exit::OK)
}

fn counts(s: &pb::Sweep) -> pb::JobCounts {
    s.counts.unwrap_or_default()
}

/// The sweeps as a listing; `exact` (CSV) gives times as RFC 3339 rather
/// than ages.
fn sweep_listing(sweeps: &[pb::Sweep], exact: bool) -> Listing {
    let now = now_secs();
    let rows = sweeps
        .iter()
        .map(|s| {
            let c = counts(s);
            vec![
                s.id.clone(),
                s.name.clone(),
                if s.owner.is_empty() {
                    "-".into()
                } else {
                    printable(&s.owner)
                },
                s.state.clone(),
                if s.unbounded {
                    format!("{} (unbounded)", s.method)
                } else {
                    s.method.clone()
                },
                if s.unbounded {
                    format!("{}+", s.trials)
                } else {
                    s.trials.to_string()
                },
                s.jobs.to_string(),
                c.succeeded.to_string(),
                c.running.to_string(),
                c.queued.to_string(),
                c.failed.to_string(),
                c.cancelled.to_string(),
                c.pruned.to_string(),
                if exact {
                    exact_time(s.created_at)
                } else {
                    human_age(now, s.created_at)
                },
            ]
        })
        .collect();
    let json = json!(sweeps
        .iter()
        .map(|s| {
            let c = counts(s);
            json!({"id": s.id, "name": s.name, "owner": s.owner, "state": s.state, "method": s.method, "metric": s.metric_name, "goal": s.metric_goal, "trials": s.trials, "jobs": s.jobs, "unbounded": s.unbounded,
                   "succeeded": c.succeeded, "running": c.running, "queued": c.queued, "failed": c.failed, "cancelled": c.cancelled, "pruned": c.pruned, "succeeded_without_metric": c.succeeded_without_metric, "created_at": s.created_at, "created_at_iso": json_time(s.created_at)})
        })
        .collect::<Vec<_>>());
    Listing {
        columns: vec![
            "id",
            "name",
            "owner",
            "state",
            "method",
            "trials",
            "jobs",
            "done",
            "running",
            "queued",
            "failed",
            "cancelled",
            "pruned",
            if exact { "created" } else { "age" },
        ],
        rows,
        json,
        ..Default::default()
    }
}

/// Prints a command's result: the sentence, or its JSON form for scripts.
fn say(output: TextFormat, text: String, js: serde_json::Value) {
    match output {
        TextFormat::Text => println!("{text}"),
        TextFormat::Json => print(format!(
            "{}\n",
            serde_json::to_string_pretty(&js).unwrap_or_default()
        )),
    }
}

/// One sweep in the JSON form `status -o json` uses.
fn sweep_json(s: &pb::Sweep) -> serde_json::Value {
    sweep_listing(std::slice::from_ref(s), true).json[0].clone()
}

fn print(s: String) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
}

async fn run(cli: Cli) -> R<i32> {
    let url = Target {
        url: cli.coordinator.clone(),
        token_file: cli.token_file.clone(),
        ca_cert: cli.ca_cert.clone(),
    };
    match cli.cmd {
        Cmd::Validate { file, name, output } => {
            let (text, fmt) = read_spec(&file)?;
            // The same check a submit makes (parse, name, expansion).
            let checked = sweep::check(&text, fmt, name.as_deref().unwrap_or(""));
            if output == TextFormat::Json {
                let (js, code) = match &checked {
                    Ok(c) => (
                        json!({"file": file.display().to_string(), "valid": true, "warnings": c.warnings, "spec": c.spec,
                               "sweep_id": c.sweep_id, "name": c.name, "trials": c.expansion.trials.len(), "jobs": c.expansion.jobs.len(), "lazy": c.spec.is_lazy()}),
                        exit::OK,
                    ),
                    Err(e) => {
                        let errors: Vec<_> = e
                            .errors
                            .iter()
                            .map(|e| json!({"path": e.path, "line": e.line, "message": e.message}))
                            .collect();
                        (
                            json!({"file": file.display().to_string(), "valid": false, "warnings": [], "error": errors[0], "errors": errors}),
                            exit::DATAERR,
                        )
                    }
                };
                print(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&js).unwrap_or_default()
                ));
                return Ok(code);
            }
            match checked {
                Ok(c) => {
                    for w in &c.warnings {
                        eprintln!("warning: {w}");
                    }
                    let size = if c.spec.is_lazy() {
                        "trials proposed as it runs".to_string()
                    } else {
                        format!(
                            "{} trial(s), {} job(s)",
                            c.expansion.trials.len(),
                            c.expansion.jobs.len()
                        )
                    };
                    eprintln!(
                        "{}: valid ({} sweep, {} parameter(s), {} seed(s), {size})",
                        file.display(),
                        c.spec.method.as_str(),
                        c.spec.parameters.len(),
                        c.spec.liandan.seeds.len()
                    );
                    Ok(exit::OK)
                }
                Err(e) => Err(Fail(exit::DATAERR, format!("{}: {e}", file.display()))),
            }
        }
        Cmd::Expand {
            file,
            name,
            first,
            output,
        } => {
            let (text, fmt) = read_spec(&file)?;
            let checked = sweep::check(&text, fmt, name.as_deref().unwrap_or(""))
                .map_err(|e| Fail(exit::DATAERR, format!("{}: {e}", file.display())))?;
            let (spec, name, sid, mut e) = (
                checked.spec,
                checked.name,
                checked.sweep_id,
                checked.expansion,
            );
            e.warnings = checked.warnings;
            let lazy = spec.is_lazy();
            if lazy && spec.method == SpecMethod::Random {
                // What the coordinator will draw, trial by trial.
                for k in 0..first {
                    let params = sweep::expand::random_params(&spec, k as u64);
                    let (t, jobs) = sweep::adaptive_trial(&sid, k, params, &spec.liandan.seeds);
                    e.trials.push(t);
                    e.jobs.extend(jobs);
                }
                e.warnings.push(format!(
                    "showing the first {first} trials (--first N); the sweep draws more until it is cancelled"
                ));
            }
            let warnings = e.warnings.clone();
            if output != Format::Json {
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
            }
            let ctx = command::offline_context(&offline_envvar);
            let mut rows = Vec::new();
            let mut js = Vec::new();
            for j in &e.jobs {
                let params = &e.trials[j.trial_index].params;
                let argv = command::build_argv(&spec, params, j.seed, &ctx)
                    .map_err(|e| Fail(exit::DATAERR, e.to_string()))?;
                let args: serde_json::Map<String, serde_json::Value> =
                    command::program_params(&spec, params, j.seed)
                        .into_iter()
                        .collect();
                rows.push(vec![
                    j.id.to_string(),
                    j.trial.to_string(),
                    j.seed.to_string(),
                    params.to_string(),
                    argv.join(" "),
                ]);
                js.push(json!({"job_id": j.id, "trial_id": j.trial, "seed": j.seed, "params": params, "args": args, "argv": argv}));
            }
            let l = Listing {
                columns: vec!["job", "trial", "seed", "params", "command"],
                rows,
                json: json!({"sweep_id": sid, "name": name, "method": spec.method.as_str(), "lazy": lazy, "warnings": warnings, "jobs": js}),
                params: e
                    .jobs
                    .iter()
                    .map(|j| e.trials[j.trial_index].params.clone())
                    .collect(),
            };
            print(render(&l, output));
            Ok(exit::OK)
        }
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
        Cmd::Tokens { cmd } => tokens(&url, cmd).await,
        Cmd::Describe { job, output } => describe(&url, &job, output).await,
        Cmd::Retry {
            sweep,
            failed: _,
            job,
            output,
        } => {
            let r = connect(&url)
                .await?
                .retry(pb::RetryRequest {
                    sweep_id: sweep,
                    job_id: job.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let s = r.sweep.unwrap_or_default();
            let js = json!({"id": s.id, "requeued": r.requeued, "state": s.state});
            let text = if r.requeued == 0 {
                format!("sweep {} has no failed job to run again", s.id)
            } else {
                format!(
                    "queued {} job(s) of sweep {} again, their retries reset (follow with `liandan wait {}`)",
                    r.requeued, s.id, s.id
                )
            };
            say(output, text, js);
            Ok(exit::OK)
        }
        Cmd::Delete {
            sweep,
            force,
            output,
        } => {
            let mut c = connect(&url).await?;
            if force {
                // Cancel, then wait for the running jobs to end: they hold
                // their workers' GPUs until their processes are gone.
                let s = c
                    .get_sweep(pb::GetSweepRequest {
                        sweep_id: sweep.clone(),
                    })
                    .await?
                    .into_inner();
                if !sweep::shown_state_has_ended(&s.state) {
                    c.cancel_sweep(pb::SweepRef {
                        sweep_id: s.id.clone(),
                    })
                    .await?;
                }
                let mut said = false;
                loop {
                    let Some(now) = sweep_riding_restarts(&mut c, &s.id).await? else {
                        eprintln!(
                            "interrupted: sweep {} is cancelled but not deleted; run `liandan delete {} --force` again once its jobs have stopped",
                            s.id, s.id
                        );
                        return Ok(exit::INTERRUPTED);
                    };
                    let running = counts(&now).running;
                    if running == 0 {
                        break;
                    }
                    if !said {
                        eprintln!("cancelled {}; waiting for its {running} running job(s) to stop (each gets its grace period)", s.id);
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            let r = c
                .delete_sweep(pb::DeleteSweepRequest {
                    sweep_id: sweep,
                    force,
                })
                .await?
                .into_inner();
            let s = r.sweep.unwrap_or_default();
            let js = json!({"id": s.id, "name": s.name, "deleted": true, "jobs_deleted": r.jobs_deleted});
            say(
                output,
                format!(
                    "deleted sweep {} ({}) and its {} job(s), with their logs, metrics and checkpoints",
                    s.id, s.name, r.jobs_deleted
                ),
                js,
            );
            Ok(exit::OK)
        }
        Cmd::Completions { shell } => {
            print(complete::registration(shell).map_err(|e| Fail(exit::USAGE, e))?);
            Ok(exit::OK)
        }
        Cmd::Submit {
            file,
            name,
            wait,
            output,
        } => {
            let (text, fmt) = read_spec(&file)?;
            // The check `validate` makes (parse, name, expansion) locally first:
            // the same messages, every problem at once, without a round trip.
            sweep::check(&text, fmt, name.as_deref().unwrap_or(""))
                .map_err(|e| Fail(exit::DATAERR, format!("{}: {e}", file.display())))?;
            let mut c = connect(&url).await?;
            let format = if fmt == SpecFormat::Toml {
                "toml"
            } else {
                "yaml"
            };
            let r = c
                .submit_sweep(pb::SubmitSweepRequest {
                    spec: text,
                    format: format.into(),
                    name: name.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let s = r.sweep.unwrap_or_default();
            if output == TextFormat::Json {
                let js = json!({"sweep_id": s.id, "name": s.name, "created": r.created, "trials": s.trials, "jobs": s.jobs, "unbounded": s.unbounded, "warnings": r.warnings});
                print(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&js).unwrap_or_default()
                ));
            } else {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
            }
            if output == TextFormat::Json {
                // The JSON above says it all.
            } else if r.created && s.unbounded {
                println!(
                    "submitted sweep {} ({}): trials are proposed as slots free, until you cancel it (`liandan cancel {}`)",
                    s.id, s.name, s.id
                );
            } else if r.created {
                println!(
                    "submitted sweep {} ({}): {} trials, {} jobs",
                    s.id, s.name, s.trials, s.jobs
                );
            } else {
                println!(
                    "sweep {} ({}) already exists with this spec; nothing was added",
                    s.id, s.name
                );
            }
            if wait {
                return wait_for(&mut c, &s.id).await;
            }
            Ok(exit::OK)
        }
        Cmd::Status { sweep, output } => {
            let mut c = connect(&url).await?;
            let sweeps = match sweep {
                Some(id) => vec![c
                    .get_sweep(pb::GetSweepRequest { sweep_id: id })
                    .await?
                    .into_inner()],
                None => all_sweeps(&c).await?,
            };
            if sweeps.is_empty() && matches!(output, Format::Table | Format::Wide) {
                println!("no sweeps yet; submit one with `liandan submit FILE`");
                return Ok(exit::OK);
            }
            print(render(
                &sweep_listing(&sweeps, output == Format::Csv),
                output,
            ));
            if matches!(output, Format::Table | Format::Wide) {
                for s in &sweeps {
                    let n = counts(s).succeeded_without_metric;
                    if n > 0 {
                        eprintln!("warning: sweep {}: {n} succeeded job(s) never reported the metric {:?}, so `results` cannot rank them; `liandan jobs {} --state succeeded` shows which (set liandan.require_metric: true to make that a failure)", s.id, s.metric_name, s.id);
                    }
                }
            }
            Ok(exit::OK)
        }
        Cmd::Jobs {
            sweep,
            state,
            output,
        } => {
            let mut c = connect(&url).await?;
            let s = c
                .get_sweep(pb::GetSweepRequest {
                    sweep_id: sweep.clone(),
                })
                .await?
                .into_inner();
            let jobs = all_jobs(&c, &s.id, &state.unwrap_or_default()).await?;
            let now = now_secs();
            let worker = |j: &pb::Job| {
                if j.worker_id.is_empty() {
                    j.last_attempt
                        .as_ref()
                        .map(|a| a.worker_id.clone())
                        .unwrap_or_default()
                } else {
                    j.worker_id.clone()
                }
            };
            let rows = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.clone(),
                        j.trial_id.clone(),
                        j.seed.to_string(),
                        j.state.clone(),
                        j.attempt.to_string(),
                        worker(j),
                        num_cell(j.final_metric, output == Format::Csv),
                        took(j, now, output == Format::Csv),
                        job_reason(j, &s.metric_name),
                        j.params_json.clone(),
                    ]
                })
                .collect();
            let json = json!(jobs
                .iter()
                .map(|j| json!({"id": j.id, "trial_id": j.trial_id, "seed": j.seed, "state": j.state, "attempt": j.attempt, "retries_used": j.retries_used,
                               "worker_id": worker(j), "final_metric": j.final_metric, "best_metric": j.best_metric, "reason": job_reason(j, &s.metric_name),
                               "last_attempt": j.last_attempt.as_ref().map(|a| json!({"attempt": a.attempt, "worker_id": a.worker_id, "outcome": a.state, "started_at": a.started_at, "started_at_iso": json_time(a.started_at), "ended_at": a.ended_at, "ended_at_iso": json_time(a.ended_at), "exit_code": a.exit_code, "signal": a.signal, "message": a.message})),
                               "params": serde_json::from_str::<serde_json::Value>(&j.params_json).unwrap_or_default()}))
                .collect::<Vec<_>>());
            print(render(
                &Listing {
                    columns: vec![
                        "job", "trial", "seed", "state", "attempt", "worker", "metric", "took",
                        "reason", "params",
                    ],
                    rows,
                    json,
                    params: jobs
                        .iter()
                        .map(|j| serde_json::from_str(&j.params_json).unwrap_or_default())
                        .collect(),
                },
                output,
            ));
            Ok(exit::OK)
        }
        Cmd::Logs {
            job,
            follow,
            attempt,
            tail,
            stderr,
            stdout,
        } => {
            let mut c = connect(&url).await?;
            let stream = if stderr {
                "stderr"
            } else if stdout {
                "stdout"
            } else {
                "all"
            };
            if follow {
                if let Ok(j) = c
                    .get_job(pb::JobRef {
                        job_id: job.clone(),
                    })
                    .await
                {
                    if j.get_ref().state == "queued" {
                        eprintln!("job {} is queued; waiting for it to start", j.get_ref().id);
                    }
                }
            }
            let mut req = pb::ReadLogsRequest {
                job_id: job,
                attempt: attempt.unwrap_or(0),
                from_line: 1,
                tail: tail.unwrap_or(0),
                follow,
                stream: stream.into(),
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut away = false;
            loop {
                let r = match c.read_logs(req.clone()).await {
                    Ok(r) => r,
                    Err(e) if follow && coordinator_away(&e) => {
                        if !std::mem::replace(&mut away, true) {
                            let _ = out.flush();
                            follow_notice(&e);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if std::mem::take(&mut away) {
                    eprintln!("the coordinator is back; following on");
                }
                let mut s = r.into_inner();
                let ended = loop {
                    match s.message().await {
                        Ok(Some(line)) => {
                            let _ = writeln!(out, "{}", line.text);
                            if follow {
                                let _ = out.flush();
                            }
                            // Where to pick up if the coordinator goes away.
                            req.attempt = line.attempt;
                            req.from_line = line.line + 1;
                            req.tail = 0;
                        }
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                match ended {
                    Ok(()) => break,
                    Err(e) if follow && coordinator_away(&e) => {
                        let _ = out.flush();
                        follow_notice(&e);
                        away = true;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let _ = out.flush();
            Ok(exit::OK)
        }
        Cmd::Metrics {
            job,
            attempt,
            output,
        } => {
            let c = connect(&url).await?;
            let recs = all_metrics(&c, &job, attempt.unwrap_or(0)).await?;
            let rows = recs
                .iter()
                .map(|r| {
                    vec![
                        r.attempt.to_string(),
                        r.step.map(|s| s.to_string()).unwrap_or_default(),
                        // A time to the second in tables; to the microsecond in CSV.
                        time_cell(r.ts, output == Format::Csv),
                        r.json.clone(),
                    ]
                })
                .collect();
            let json = json!(recs
                .iter()
                .map(|r| json!({"attempt": r.attempt, "step": r.step, "ts": r.ts, "ts_iso": json_time(r.ts), "values": serde_json::from_str::<serde_json::Value>(&r.json).unwrap_or_default()}))
                .collect::<Vec<_>>());
            print(render(
                &Listing {
                    columns: vec!["attempt", "step", "ts", "values"],
                    rows,
                    json,
                    ..Default::default()
                },
                output,
            ));
            Ok(exit::OK)
        }
        Cmd::Results {
            sweep,
            best,
            limit,
            output,
        } => {
            let mut c = connect(&url).await?;
            let r = fetch_trial_results(&mut c, &sweep, best, limit).await?;
            let a = results::analyze(&r);
            print(render(&results::listing(&a, output == Format::Csv), output));
            if matches!(output, Format::Table | Format::Wide) {
                print(results::footer(&a));
            }
            Ok(exit::OK)
        }
        Cmd::Plot {
            sweep,
            metric,
            param,
            output,
            file,
            embed_font,
        } => {
            // The format and the file are checked before anything is fetched.
            let format = plot_format(output.as_deref(), file.as_deref())?;
            let mut c = connect(&url).await?;
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
                jobs.push(plot::JobSeries {
                    trial: j.trial_id.clone(),
                    params: serde_json::from_str(&j.params_json).unwrap_or_default(),
                    points,
                    final_value,
                });
            }
            if jobs.iter().all(|j| j.points.is_empty()) {
                return Err(Fail(exit::DATAERR, format!("no job of {} reported the metric {metric:?}; check the name with `liandan metrics JOB`", s.id)));
            }
            let path =
                file.unwrap_or_else(|| PathBuf::from(format!("{}.{}", s.name, format.extension())));
            plot::render(
                &plot::PlotInput {
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
        Cmd::Cancel { target, output } => {
            let mut c = connect(&url).await?;
            if target.starts_with("job-") {
                let j = c
                    .cancel_job(pb::JobRef { job_id: target })
                    .await?
                    .into_inner();
                say(
                    output,
                    format!(
                        "job {}: {}",
                        j.id,
                        if j.state == "running" {
                            "cancelling (SIGTERM, then SIGKILL after the grace period)"
                        } else {
                            &j.state
                        }
                    ),
                    json!({"job_id": j.id, "state": j.state}),
                );
            } else {
                let s = c
                    .cancel_sweep(pb::SweepRef { sweep_id: target })
                    .await?
                    .into_inner();
                say(
                    output,
                    format!(
                        "sweep {} cancelled; {} running job(s) are being stopped",
                        s.id,
                        counts(&s).running
                    ),
                    sweep_json(&s),
                );
            }
            Ok(exit::OK)
        }
        Cmd::Pause { sweep, output } => {
            let s = connect(&url)
                .await?
                .pause_sweep(pb::SweepRef { sweep_id: sweep })
                .await?
                .into_inner();
            say(
                output,
                format!(
                    "sweep {} paused; running jobs continue, no new ones start",
                    s.id
                ),
                sweep_json(&s),
            );
            Ok(exit::OK)
        }
        Cmd::Resume { sweep, output } => {
            let s = connect(&url)
                .await?
                .resume_sweep(pb::SweepRef { sweep_id: sweep })
                .await?
                .into_inner();
            say(output, format!("sweep {} resumed", s.id), sweep_json(&s));
            Ok(exit::OK)
        }
        Cmd::Wait { sweep } => {
            let mut c = connect(&url).await?;
            wait_for(&mut c, &sweep).await
        }
        Cmd::Workers {
            output,
            forget: Some(worker),
        } => {
            let w = connect(&url)
                .await?
                .forget_worker(pb::ForgetWorkerRequest { worker_id: worker })
                .await?
                .into_inner();
            let text = format!("worker {} ({}) forgotten", w.id, printable(&w.hostname));
            let js = json!({"worker_id": w.id, "forgotten": true});
            match output {
                Format::Json => say(TextFormat::Json, text, js),
                _ => say(TextFormat::Text, text, js),
            }
            Ok(exit::OK)
        }
        Cmd::Workers {
            output,
            forget: None,
        } => {
            let ws = connect(&url)
                .await?
                .list_workers(pb::ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            // Human sizes and ages in tables; exact bytes and times in CSV.
            let csv = output == Format::Csv;
            let now = now_secs();
            let bytes = |b: u64| if csv { b.to_string() } else { human_bytes(b) };
            let rows = ws
                .iter()
                .map(|w| {
                    let r = w.resources.clone().unwrap_or_default();
                    let state = if w.draining {
                        "draining"
                    } else if w.connected {
                        "connected"
                    } else {
                        "disconnected"
                    };
                    vec![
                        w.id.clone(),
                        printable(&w.hostname),
                        state.into(),
                        format!("{}/{}", w.free_cpu_slots, r.cpu_slots),
                        format!("{}/{}", w.free_gpus, r.gpus.len()),
                        w.running_jobs.len().to_string(),
                        w.disk
                            .map(|d| bytes(d.jobs_bytes))
                            .unwrap_or_else(|| "-".into()),
                        w.disk
                            .map(|d| bytes(d.free_bytes))
                            .unwrap_or_else(|| "-".into()),
                        if csv {
                            exact_time(w.last_seen)
                        } else {
                            human_age(now, w.last_seen)
                        },
                        r.labels.join(","),
                    ]
                })
                .collect();
            let json = json!(ws
                .iter()
                .map(|w| {
                    let r = w.resources.clone().unwrap_or_default();
                    json!({"id": w.id, "hostname": w.hostname, "connected": w.connected, "draining": w.draining, "cpu_slots": r.cpu_slots, "free_cpu_slots": w.free_cpu_slots,
                           "gpus": r.gpus.iter().map(|g| json!({"index": g.index, "uuid": g.uuid, "name": g.name, "memory_bytes": g.memory_bytes})).collect::<Vec<_>>(),
                           "free_gpus": w.free_gpus, "running_jobs": w.running_jobs, "labels": r.labels, "last_seen": w.last_seen, "last_seen_iso": json_time(w.last_seen),
                           "disk": w.disk.map(|d| json!({"jobs_bytes": d.jobs_bytes, "free_bytes": d.free_bytes, "attempt_dirs": d.attempt_dirs}))})
                })
                .collect::<Vec<_>>());
            print(render(
                &Listing {
                    columns: vec![
                        "worker",
                        "host",
                        "state",
                        "cpu free",
                        "gpu free",
                        "jobs",
                        "job dirs",
                        "disk free",
                        "seen",
                        "labels",
                    ],
                    rows,
                    json,
                    ..Default::default()
                },
                output,
            ));
            Ok(exit::OK)
        }
        Cmd::Drain {
            worker,
            undo,
            output,
        } => {
            let w = connect(&url)
                .await?
                .drain_worker(pb::DrainWorkerRequest {
                    worker_id: worker,
                    undo,
                })
                .await?
                .into_inner();
            let js = json!({"worker_id": w.id, "draining": !undo, "running_jobs": w.running_jobs});
            if undo {
                say(output, format!("worker {} takes jobs again", w.id), js);
            } else {
                say(output, format!("worker {} is draining: no new jobs; {} running job(s) finish (lift with --undo)", w.id, w.running_jobs.len()), js);
            }
            Ok(exit::OK)
        }
        Cmd::Checkpoints { job, output } => {
            let cs = connect(&url)
                .await?
                .list_checkpoints(pb::JobRef { job_id: job })
                .await?
                .into_inner()
                .checkpoints;
            let rows = cs
                .iter()
                .map(|c| {
                    vec![
                        c.step.to_string(),
                        c.attempt.to_string(),
                        if output == Format::Csv {
                            c.size.to_string()
                        } else {
                            human_bytes(c.size)
                        },
                        num_cell(c.metric, output == Format::Csv),
                        time_cell(c.created_at, output == Format::Csv),
                        c.blake3.clone(),
                    ]
                })
                .collect();
            let json = json!(cs
                .iter()
                .map(|c| json!({"step": c.step, "attempt": c.attempt, "size": c.size, "metric": c.metric, "created_at": c.created_at, "created_at_iso": json_time(c.created_at), "blake3": c.blake3}))
                .collect::<Vec<_>>());
            print(render(
                &Listing {
                    columns: vec!["step", "attempt", "size", "metric", "created", "blake3"],
                    rows,
                    json,
                    ..Default::default()
                },
                output,
            ));
            Ok(exit::OK)
        }
        Cmd::Download {
            job,
            step,
            file,
            output,
        } => {
            let mut c = connect(&url).await?;
            let mut s = c
                .download_checkpoint(pb::DownloadCheckpointRequest {
                    job_id: job.clone(),
                    step: step.unwrap_or(-1),
                    offset: 0,
                })
                .await?
                .into_inner();
            let mut meta = None;
            let mut hasher = blake3::Hasher::new();
            let mut data = Vec::new();
            while let Some(chunk) = s.message().await? {
                if chunk.meta.is_some() {
                    meta = chunk.meta;
                }
                hasher.update(&chunk.data);
                data.extend_from_slice(&chunk.data);
            }
            let meta = meta.ok_or_else(|| {
                Fail(
                    exit::SOFTWARE,
                    "the coordinator sent no checkpoint metadata".into(),
                )
            })?;
            if hasher.finalize().to_hex().as_str() != meta.blake3 {
                return Err(Fail(
                    exit::IOERR,
                    "the downloaded checkpoint does not match its hash; try again".into(),
                ));
            }
            // Named by the job's whole id (the user may have typed a prefix);
            // the id comes off the wire, so only a well-formed one names a file.
            let id = liandan_common::ids::JobId::parse(&meta.job_id)
                .map(|j| j.to_string())
                .unwrap_or_else(|_| job.clone());
            let path =
                file.unwrap_or_else(|| PathBuf::from(format!("{id}-step-{}.ckpt", meta.step)));
            std::fs::write(&path, &data)
                .map_err(|e| Fail(exit::IOERR, format!("cannot write {}: {e}", path.display())))?;
            say(
                output,
                format!(
                    "wrote {} ({} bytes, step {}, blake3 verified)",
                    path.display(),
                    data.len(),
                    meta.step
                ),
                json!({"file": path.display().to_string(), "bytes": data.len(), "step": meta.step, "blake3": meta.blake3}),
            );
            Ok(exit::OK)
        }
    }
}

/// All results of a sweep, its chunks merged and every job's parameters filled in.
async fn fetch_results(c: &mut Client, sweep: &str) -> R<pb::GetResultsResponse> {
    let mut stream = c
        .get_results(pb::SweepRef {
            sweep_id: sweep.to_string(),
        })
        .await?
        .into_inner();
    let mut all = pb::GetResultsResponse::default();
    let mut params = std::collections::HashMap::new();
    while let Some(chunk) = stream.message().await? {
        if chunk.sweep.is_some() {
            all.sweep = chunk.sweep;
        }
        for t in chunk.trials {
            params.insert(t.trial_id, t.params_json);
        }
        all.jobs.extend(chunk.jobs);
    }
    for j in &mut all.jobs {
        if j.params_json.is_empty() {
            if let Some(p) = params.get(&j.trial_id) {
                j.params_json = p.clone();
            }
        }
    }
    Ok(all)
}

/// The coordinator's ranking of a sweep's trials, its chunks merged.
async fn fetch_trial_results(
    c: &mut Client,
    sweep: &str,
    best: bool,
    limit: u32,
) -> R<pb::GetTrialResultsResponse> {
    let mut stream = c
        .get_trial_results(pb::GetTrialResultsRequest {
            sweep_id: sweep.to_string(),
            best,
            limit,
        })
        .await?
        .into_inner();
    let mut all: Option<pb::GetTrialResultsResponse> = None;
    while let Some(chunk) = stream.message().await? {
        match all.as_mut() {
            None => all = Some(chunk),
            Some(a) => a.trials.extend(chunk.trials),
        }
    }
    Ok(all.unwrap_or_default())
}

/// Whether a failed call is the coordinator being away (restarting, the
/// network), which `wait` and `logs -f` ride out, rather than an answer.
fn coordinator_away(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    let m = s.message();
    matches!(s.code(), Unavailable | Cancelled)
        || (matches!(s.code(), Unknown | Internal)
            && (m.contains("transport") || m.contains("connection") || m.contains("h2 protocol")))
}

/// `get_sweep`, retried while the coordinator is away (a notice once, then
/// every minute); Ctrl-C gives up (None).
async fn sweep_riding_restarts(c: &mut Client, sweep: &str) -> R<Option<pb::Sweep>> {
    let mut away_since: Option<std::time::Instant> = None;
    let mut told = std::time::Instant::now();
    loop {
        let r = tokio::select! {
            r = c.get_sweep(pb::GetSweepRequest { sweep_id: sweep.to_string() }) => r,
            _ = tokio::signal::ctrl_c() => return Ok(None),
        };
        match r {
            Ok(s) => {
                if away_since.take().is_some() {
                    eprintln!("the coordinator is back; waiting on");
                }
                return Ok(Some(s.into_inner()));
            }
            Err(e) if coordinator_away(&e) => {
                let since = *away_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < Duration::from_millis(100)
                    || told.elapsed() >= Duration::from_secs(60)
                {
                    eprintln!(
                        "the coordinator cannot be reached ({}); retrying (it may be restarting; the sweep goes on; Ctrl-C stops waiting)",
                        e.message().chars().take(200).collect::<String>()
                    );
                    told = std::time::Instant::now();
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(None),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The first failed jobs of a sweep, each with how its last attempt ended,
/// and the commands to see more.
/// `${envvar:K}` in a command line shown here, offline: the job's own
/// variables as the worker sets them, and the worker's private ones left as
/// written (they are not known here).
fn offline_envvar(k: &str) -> Option<String> {
    command::job_envvar(k).or_else(|| Some(format!("${{envvar:{k}}}")))
}

/// `logs -f` lost the coordinator: it says so once and retries.
fn follow_notice(e: &tonic::Status) {
    eprintln!(
        "the coordinator cannot be reached ({}); retrying (Ctrl-C stops following)",
        e.message().chars().take(200).collect::<String>()
    );
}

/// The first `n` jobs of a sweep in `state` that `pick` takes, following
/// pages (a page of one state may come back short, even empty, and not be
/// the last); fewer when the coordinator cannot be asked.
async fn first_jobs(
    c: &mut Client,
    sweep: &str,
    state: &str,
    n: usize,
    pick: impl Fn(&pb::Job) -> bool,
) -> Vec<pb::Job> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let Ok(r) = c
            .list_jobs(pb::ListJobsRequest {
                sweep_id: sweep.into(),
                state: state.into(),
                page_size: 0,
                page_token: token,
            })
            .await
        else {
            return out;
        };
        let r = r.into_inner();
        out.extend(r.jobs.into_iter().filter(|j| pick(j)).take(n - out.len()));
        if out.len() >= n || r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

async fn name_failures(c: &mut Client, sweep: &str, failed: u64) {
    let jobs = first_jobs(c, sweep, "failed", 3, |_| true).await;
    for j in &jobs {
        let how = match c
            .get_job(pb::JobRef {
                job_id: j.id.clone(),
            })
            .await
        {
            Ok(full) => full
                .into_inner()
                .attempts
                .last()
                .map(|a| {
                    let msg: String = a.message.chars().take(160).collect();
                    format!("attempt {} {}: {}", a.attempt, a.state, printable(&msg))
                })
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        eprintln!("  failed: {} {how}", j.id);
    }
    if let Some(j) = jobs.first() {
        let more = if failed > jobs.len() as u64 {
            format!("; all {failed}: `liandan jobs {sweep} --state failed`")
        } else {
            String::new()
        };
        eprintln!("  see why: `liandan logs {} --stderr`{more}", j.id);
    }
}

/// Says loudly when succeeded jobs never reported the sweep's metric (a
/// `metric_pattern` that does not match what the script prints): their
/// results would have nothing to rank. Names one such job for its log.
async fn silent_metric(c: &mut Client, s: &pb::Sweep) {
    let k = counts(s);
    let silent = k.succeeded_without_metric;
    if silent == 0 {
        return;
    }
    // One of them, for the pointer to its log.
    let example = first_jobs(c, &s.id, "succeeded", 1, |j| j.final_metric.is_none())
        .await
        .first()
        .map(|j| format!(" (`liandan logs {}`)", j.id))
        .unwrap_or_default();
    eprintln!(
        "warning: {silent} of {} succeeded job(s) never reported the metric {:?}: `results` has nothing to rank them by. Check liandan.metric_pattern against what the job prints{example}, or write the metric to LIANDAN_METRICS_FILE; liandan.require_metric: true makes it a failure",
        k.succeeded, s.metric_name,
    );
}

async fn wait_for(c: &mut Client, sweep: &str) -> R<i32> {
    let tty = std::io::stderr().is_terminal();
    let interrupted = |bar: &Option<indicatif::ProgressBar>| {
        if let Some(b) = bar {
            b.abandon();
        }
        eprintln!("interrupted; the sweep goes on (follow it with `liandan wait {sweep}`)");
        Ok(exit::INTERRUPTED)
    };
    let Some(first) = sweep_riding_restarts(c, sweep).await? else {
        return interrupted(&None);
    };
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(first.jobs);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done  {msg}  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let start = std::time::Instant::now();
    let mut last_print = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let Some(s) = sweep_riding_restarts(c, sweep).await? else {
            return interrupted(&bar);
        };
        let k = counts(&s);
        let done = k.succeeded + k.failed + k.cancelled + k.pruned;
        let msg = format!(
            "running {}  queued {}  failed {}",
            k.running, k.queued, k.failed
        );
        let over = sweep::shown_state_has_ended(&s.state);
        match &bar {
            Some(b) => {
                b.set_length(s.jobs);
                b.set_position(done);
                b.set_message(msg.clone());
            }
            None => {
                if last_print.elapsed() >= Duration::from_secs(5) || over {
                    let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-3);
                    eprintln!("{}: {done}/{} done, {msg}, {rate:.2} jobs/s", s.id, s.jobs);
                    last_print = std::time::Instant::now();
                }
            }
        }
        if over {
            if let Some(b) = &bar {
                b.finish();
            }
            eprintln!(
                "sweep {} {}: {} succeeded, {} failed, {} cancelled, {} pruned",
                s.id, s.state, k.succeeded, k.failed, k.cancelled, k.pruned
            );
            if k.failed > 0 {
                name_failures(c, &s.id, k.failed).await;
            }
            if k.succeeded > 0 && !s.metric_name.is_empty() {
                silent_metric(c, &s).await;
            }
            return Ok(if k.failed > 0 {
                exit::FAILURE
            } else {
                exit::OK
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return interrupted(&bar),
        }
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

/// The image format `plot` writes: `-o` if given (png or svg), else the
/// file's extension, else png. A file name given to `-o` (which is the
/// format in every command) or a file whose extension disagrees is a usage
/// error, told before anything is fetched.
fn plot_format(output: Option<&str>, file: Option<&std::path::Path>) -> R<plot::ImageFormat> {
    // The file's extension, when it names a format plot draws.
    let from_file = file.and_then(|f| {
        let ext = f.extension()?.to_str()?.to_ascii_lowercase();
        plot::ImageFormat::parse(&ext)
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
            _ => Ok(from_file.unwrap_or(plot::ImageFormat::Png)),
        };
    };
    let Some(fmt) = plot::ImageFormat::parse(&o.to_ascii_lowercase()) else {
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
fn plot_param_ok(r: &pb::GetResultsResponse, p: &str) -> R<()> {
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

/// How long a job's last attempt ran (so far, while it runs): `1m 5s` in
/// tables, seconds in CSV; nothing before it started.
fn took(j: &pb::Job, now: f64, exact: bool) -> String {
    let Some(a) = j
        .last_attempt
        .as_ref()
        .filter(|a| a.started_at > 0.0 && j.state != "queued")
    else {
        return String::new();
    };
    let end = if a.ended_at > 0.0 { a.ended_at } else { now };
    let secs = (end - a.started_at).max(0.0);
    if exact {
        format!("{secs:.3}")
    } else {
        two_units(human_duration(secs))
    }
}

/// Why a job is where it is, in a few words: how its last attempt ended
/// (outcome, exit code or signal, message), or that a succeeded job never
/// reported `metric` (the sweep's metric; empty for none).
fn job_reason(j: &pb::Job, metric: &str) -> String {
    if j.state == "succeeded" {
        return if j.final_metric.is_none() && !metric.is_empty() {
            format!("never reported {metric:?}")
        } else {
            String::new()
        };
    }
    if j.state == "running" {
        return String::new();
    }
    let Some(a) = j.last_attempt.as_ref().filter(|a| a.state != "succeeded") else {
        return String::new();
    };
    let mut r = a.state.clone();
    if a.signal != 0 {
        r.push_str(&format!(", signal {}", a.signal));
    } else if a.exit_code != 0 {
        r.push_str(&format!(", exit {}", a.exit_code));
    }
    let msg = a.message.trim();
    if !msg.is_empty() {
        r.push_str(": ");
        r.push_str(msg);
    }
    if j.state == "queued" {
        r = format!("retried after attempt {}: {r}", a.attempt);
    }
    r
}

/// A time (seconds since the epoch) as RFC 3339 in UTC, to the second.
fn iso_time(secs: f64) -> String {
    if !(secs.is_finite() && secs > 0.0) {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_secs_f64(secs.min(1e12));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A time to the microsecond as RFC 3339 in UTC, for CSV: exact, and read
/// as a time by pandas and spreadsheets; empty when the time is unset.
fn exact_time(secs: f64) -> String {
    if !(secs.is_finite() && secs > 0.0) {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_secs_f64(secs.min(1e12));
    humantime::format_rfc3339_micros(t).to_string()
}

/// A time for a cell: to the second for people ([`iso_time`]), to the
/// microsecond with `exact` (CSV; [`exact_time`]).
fn time_cell(secs: f64, exact: bool) -> String {
    if exact {
        exact_time(secs)
    } else {
        iso_time(secs)
    }
}

/// A time for JSON, beside the seconds since the epoch: RFC 3339 to the
/// microsecond, or null when the time is unset.
fn json_time(secs: f64) -> serde_json::Value {
    match exact_time(secs) {
        t if t.is_empty() => serde_json::Value::Null,
        t => serde_json::Value::String(t),
    }
}

/// Seconds since the epoch, now.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How long ago `then` was, to its largest two units (`3m 12s`, `2d 4h`).
fn human_age(now: f64, then: f64) -> String {
    if !(then.is_finite() && then > 0.0) {
        return "-".into();
    }
    two_units(human_duration((now - then).max(0.0)))
}

/// The largest two units of a humantime duration (`1h 2m 3s` → `1h 2m`).
fn two_units(d: String) -> String {
    d.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// A duration to the second, as `1h 2m 3s`.
fn human_duration(secs: f64) -> String {
    if !(secs.is_finite() && secs >= 0.0) {
        return "-".into();
    }
    humantime::format_duration(Duration::from_secs(secs.round().min(1e12) as u64)).to_string()
}

/// `liandan describe JOB`: everything about one job in one place.
async fn describe(url: &Target, job: &str, output: TextFormat) -> R<i32> {
    let mut c = connect(url).await?;
    let j = c
        .get_job(pb::JobRef {
            job_id: job.to_string(),
        })
        .await?
        .into_inner();
    let s = c
        .get_sweep(pb::GetSweepRequest {
            sweep_id: j.sweep_id.clone(),
        })
        .await?
        .into_inner();
    let params: serde_json::Value = serde_json::from_str(&j.params_json).unwrap_or_default();
    // The command line as the job was started (the worker's private
    // variables are not in it).
    let argv = serde_json::from_str::<sweep::SweepSpec>(&s.spec_json)
        .ok()
        .and_then(|spec| {
            let ctx = command::offline_context(&offline_envvar);
            command::build_argv(&spec, &params, j.seed, &ctx).ok()
        })
        .unwrap_or_default();
    let tail = if j.attempt > 0 {
        let mut lines = Vec::new();
        if let Ok(r) = c
            .read_logs(pb::ReadLogsRequest {
                job_id: j.id.clone(),
                attempt: j.attempt,
                tail: 10,
                ..Default::default()
            })
            .await
        {
            let mut st = r.into_inner();
            while let Ok(Some(l)) = st.message().await {
                lines.push(l);
            }
        }
        lines
    } else {
        Vec::new()
    };
    if output == TextFormat::Json {
        let attempts: Vec<_> = j.attempts.iter().map(|a| json!({"attempt": a.attempt, "worker_id": a.worker_id, "state": a.state, "started_at": a.started_at, "started_at_iso": json_time(a.started_at), "ended_at": a.ended_at, "ended_at_iso": json_time(a.ended_at), "exit_code": a.exit_code, "signal": a.signal, "message": a.message})).collect();
        let js = json!({"id": j.id, "sweep_id": j.sweep_id, "sweep": s.name, "owner": s.owner, "trial_id": j.trial_id, "seed": j.seed, "params": params, "state": j.state,
                        "attempt": j.attempt, "retries_used": j.retries_used, "worker_id": j.worker_id, "argv": argv, "final_metric": j.final_metric, "best_metric": j.best_metric,
                        "attempts": attempts, "log_tail": tail.iter().map(|l| json!({"line": l.line, "stream": l.stream, "text": l.text})).collect::<Vec<_>>()});
        println!("{}", serde_json::to_string_pretty(&js).unwrap_or_default());
        return Ok(exit::OK);
    }
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<9} {}\n", printable(&v)));
    field("job", j.id.clone());
    field("sweep", format!("{} ({})", s.id, s.name));
    if !s.owner.is_empty() {
        field("owner", s.owner.clone());
    }
    field("trial", format!("{}  seed {}", j.trial_id, j.seed));
    field("params", j.params_json.clone());
    field(
        "state",
        format!(
            "{} (attempt {}, {} retries used)",
            j.state, j.attempt, j.retries_used
        ),
    );
    if !j.worker_id.is_empty() {
        field("worker", j.worker_id.clone());
    }
    if !argv.is_empty() {
        field("command", argv.join(" "));
    }
    let metric = if s.metric_name.is_empty() {
        "the sweep names no metric".to_string()
    } else {
        match (j.final_metric, j.best_metric) {
            (None, _) => format!("{}: never reported", s.metric_name),
            (Some(f), b) => format!("{}: last {}, best {}", s.metric_name, num(f), opt_num(b)),
        }
    };
    field("metric", metric);
    print!("{out}");
    if !j.attempts.is_empty() {
        let rows: Vec<Vec<String>> = j
            .attempts
            .iter()
            .map(|a| {
                let ended = a.ended_at > 0.0;
                let exit = if a.signal != 0 {
                    format!("signal {}", a.signal)
                } else if ended {
                    a.exit_code.to_string()
                } else {
                    "-".into()
                };
                vec![
                    a.attempt.to_string(),
                    a.worker_id.clone(),
                    a.state.clone(),
                    iso_time(a.started_at),
                    if ended {
                        iso_time(a.ended_at)
                    } else {
                        "-".into()
                    },
                    if ended {
                        human_duration(a.ended_at - a.started_at)
                    } else {
                        "-".into()
                    },
                    exit,
                    a.message.clone(),
                ]
            })
            .collect();
        println!("\nattempts:");
        print!(
            "{}",
            output::table(
                &["#", "worker", "outcome", "started", "ended", "took", "exit", "message"],
                &rows,
                output::terminal_width()
            )
        );
    }
    if !tail.is_empty() {
        println!("\nlast {} log lines (attempt {}):", tail.len(), j.attempt);
        for l in &tail {
            let tag = if l.stream == "stderr" { "err" } else { "out" };
            println!("  {tag} {}", printable(&l.text));
        }
    }
    let mut next = format!("\nmore: `liandan logs {}`", j.id);
    // The hint only where retry would take the job (see SweepSpec::why_no_retry).
    let retry_takes = s.state != "cancelled"
        && serde_json::from_str::<sweep::SweepSpec>(&s.spec_json)
            .is_ok_and(|spec| spec.why_no_retry().is_none());
    if (j.state == "failed" || j.state == "cancelled") && retry_takes {
        next.push_str(&format!(
            "; run it again: `liandan retry {} --job {}`",
            s.id, j.id
        ));
    }
    println!("{next}");
    Ok(exit::OK)
}

/// Bytes for people: `512 B`, `3.2 MiB`, `1.5 TiB`.
fn human_bytes(n: u64) -> String {
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
        use plot::ImageFormat::{Png, Svg};
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
