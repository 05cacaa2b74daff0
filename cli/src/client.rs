//! Talking to the coordinator: the connection (URL, TLS, token), paged
//! listings, results, restarts ridden out, and how a failure becomes an exit code.

use crate::TextFormat;
use liandan_common::exit;
use liandan_common::sweep::Format as SpecFormat;
use liandan_proto::v1 as pb;
use pb::user_service_client::UserServiceClient;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

/// A failure with the exit code it maps to.
pub struct Fail(pub i32, pub String);

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

pub type R<T> = Result<T, Fail>;

/// Where and how to reach the coordinator.
pub struct Target {
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

/// A user-service client that carries the user token.
pub type Client = UserServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        liandan_common::auth::TokenInterceptor,
    >,
>;

/// A user token goes over plaintext `http://` only to this machine.
pub fn token_transport_ok(url: &str, has_token: bool) -> R<()> {
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
pub fn check_url(url: &str) -> R<()> {
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

pub async fn connect(t: &Target) -> R<Client> {
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

pub fn read_spec(file: &PathBuf) -> R<(String, SpecFormat)> {
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
pub async fn all_pages<T, F, Fut>(mut page: F) -> R<Vec<T>>
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
pub async fn all_sweeps(c: &Client) -> R<Vec<pb::Sweep>> {
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
pub async fn all_jobs(c: &Client, sweep: &str, state: &str) -> R<Vec<pb::Job>> {
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
pub async fn all_metrics(c: &Client, job: &str, attempt: u64) -> R<Vec<pb::MetricRecord>> {
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

/// Prints a command's result: the sentence, or its JSON form for scripts.
pub fn say(output: TextFormat, text: String, js: serde_json::Value) {
    match output {
        TextFormat::Text => println!("{text}"),
        TextFormat::Json => print(format!(
            "{}\n",
            serde_json::to_string_pretty(&js).unwrap_or_default()
        )),
    }
}

pub fn print(s: String) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
}

/// Whether a failed call is the coordinator being away (restarting, the
/// network), which `wait` and `logs -f` ride out, rather than an answer.
pub fn coordinator_away(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    let m = s.message();
    matches!(s.code(), Unavailable | Cancelled)
        || (matches!(s.code(), Unknown | Internal)
            && (m.contains("transport") || m.contains("connection") || m.contains("h2 protocol")))
}

/// All results of a sweep, its chunks merged and every job's parameters filled in.
pub async fn fetch_results(c: &mut Client, sweep: &str) -> R<pb::GetResultsResponse> {
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
pub async fn fetch_trial_results(
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

/// The first `n` jobs of a sweep in `state` that `pick` takes, following
/// pages (a page of one state may come back short, even empty, and not be
/// the last); fewer when the coordinator cannot be asked.
pub async fn first_jobs(
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

/// `get_sweep`, retried while the coordinator is away (a notice once, then
/// every minute); Ctrl-C gives up (None).
pub async fn sweep_riding_restarts(c: &mut Client, sweep: &str) -> R<Option<pb::Sweep>> {
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
