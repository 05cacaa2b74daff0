//! The liandan worker daemon.
//!
//! - [`spool`]: the durable local spool of records and the journal of attempts.
//! - [`runner`]: one attempt as a supervised process group.
//! - [`checkpoint`]: checkpoint uploads and resume downloads.
//! - [`gpu`]: NVML discovery (the daemon never initialises CUDA).
//! - [`jail`]: the job user, per-attempt cgroups, opening what jobs wrote.
//!
//! [`run`] owns the state dir (locked), recovers the journal, then keeps one
//! bidirectional stream to the coordinator, reconnecting with backoff and
//! jitter. Jobs keep running while disconnected; their records wait in the spool.

pub mod checkpoint;
pub mod gpu;
pub mod jail;
pub mod retention;
pub mod runner;
pub mod spool;

use liandan_common::config::WorkerConfig;
use liandan_common::ids::WorkerId;
use liandan_proto::v1 as pb;
use pb::worker_service_client::WorkerServiceClient;
use runner::StopReason;
use spool::Spool;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::{Channel, Endpoint};

/// Why the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot use state dir {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
    #[error("state dir {0} is in use by another liandan-worker (pid {1}); give each worker its own --state-dir")]
    Locked(PathBuf, String),
    #[error("{0}")]
    Spool(#[from] spool::SpoolError),
    #[error("coordinator URL {0:?}: {1}")]
    Url(String, String),
    /// Certificates or tokens that cannot be used (a configuration error).
    #[error("{0}")]
    Tls(String),
    /// `job_user` or `job_cgroups` cannot be had, or the machine offers
    /// nothing jobs can use (a configuration error).
    #[error("{0}")]
    Jail(String),
}

/// Where a job's output lines go: (is_stderr, text).
type LineSender = mpsc::Sender<(bool, String)>;

struct Running {
    stop: watch::Sender<Option<StopReason>>,
    alive: bool,
}

/// State shared by the session, the runners and the uploader.
pub struct WorkerCtx {
    pub cfg: WorkerConfig,
    pub spool: Spool,
    /// This worker's id: its certificate's, or the one the coordinator
    /// issued with a secret (`None` until a join-token worker's first hello).
    worker_id: Mutex<Option<WorkerId>>,
    /// The issued id and secret, which the interceptor sends on checkpoint RPCs.
    identity: liandan_common::auth::WorkerIdentity,
    pub resources: pb::Resources,
    running: Mutex<HashMap<(String, u64), Running>>,
    sinks: Mutex<HashMap<(String, u64), LineSender>>,
    /// Woken when a checkpoint is published or an upload finished.
    pub uploads: Notify,
    upload_done: Notify,
    jobs_dir: PathBuf,
    channel: Mutex<Option<Channel>>,
    /// Adds the join token (if any) to every RPC.
    token: liandan_common::auth::TokenInterceptor,
    /// Set on SIGTERM: finish, take nothing new.
    stopping: AtomicBool,
    announce_stop: Notify,
    stop_announced: Notify,
    /// Progress of the session / connect loop, for the systemd watchdog.
    liveness: Arc<liandan_common::systemd::Liveness>,
    /// Woken when the coordinator acknowledged an attempt's end.
    retention: Notify,
    /// Jobs whose directories retention is removing: a new attempt of one
    /// waits before creating its directories (see [`retention::collect`]).
    retiring: Mutex<std::collections::HashSet<String>>,
    retired: Notify,
    /// The disk as of the last retention pass, for heartbeats.
    disk: Mutex<Option<pb::DiskUsage>>,
    /// The user jobs run as (`job_user`), when not the worker's.
    pub job_user: Option<jail::JobUser>,
    /// Where attempts get their cgroups, when the system allows it.
    pub cgroups: Option<jail::Cgroups>,
}

/// A worker-service client that carries the join token.
pub type Client = WorkerServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        liandan_common::auth::TokenInterceptor,
    >,
>;

impl WorkerCtx {
    /// A client on `channel` with the token and message limits.
    pub fn client(&self, channel: Channel) -> Client {
        WorkerServiceClient::with_interceptor(channel, self.token.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// This worker's id, or `(unregistered)` before a join-token worker's first hello.
    pub fn id(&self) -> String {
        self.worker_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_else(|| "(unregistered)".into())
    }

    /// The directory of one attempt of a job.
    pub(crate) fn attempt_dir(&self, job: &str, attempt: u64) -> PathBuf {
        self.jobs_dir.join(job).join(attempt.to_string())
    }

    /// Retention may remove `job`'s directories: no attempt of it runs, and
    /// none will create directories until [`WorkerCtx::release_job`].
    fn claim_job(&self, job: &str) -> bool {
        let running = self.running();
        if running.keys().any(|(j, _)| j == job) {
            return false;
        }
        self.retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.to_string());
        true
    }

    fn release_job(&self, job: &str) {
        self.retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job);
        self.retired.notify_waiters();
    }

    /// Waits while retention is removing `job`'s directories.
    async fn wait_not_retiring(&self, job: &str) {
        loop {
            let released = self.retired.notified();
            if !self
                .retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(job)
            {
                return;
            }
            released.await;
        }
    }

    fn disk(&self) -> Option<pb::DiskUsage> {
        *self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn remove_running(&self, job: &str, attempt: u64) {
        if let Some(r) = self.running().get_mut(&(job.to_string(), attempt)) {
            r.alive = false;
        }
    }

    pub(crate) fn register_notices(
        &self,
        job: &str,
        attempt: u64,
        tx: mpsc::Sender<(bool, String)>,
    ) {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((job.to_string(), attempt), tx);
    }

    pub(crate) fn unregister_notices(&self, job: &str, attempt: u64) {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(job.to_string(), attempt));
    }

    /// Adds a line from the worker itself to a job's stderr log.
    pub(crate) async fn notice(&self, job: &str, attempt: u64, text: String) {
        let tx = self
            .sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(job.to_string(), attempt))
            .cloned();
        if let Some(tx) = tx {
            let _ = tx.send((true, text)).await;
        }
    }

    fn stop(&self, job: &str, attempt: u64, reason: StopReason) {
        if let Some(r) = self.running().get(&(job.to_string(), attempt)) {
            let _ = r.stop.send(Some(reason));
        }
    }

    fn stop_all(&self, reason: StopReason) {
        for r in self.running().values() {
            let _ = r.stop.send(Some(reason));
        }
    }

    fn alive_count(&self) -> usize {
        self.running().values().filter(|r| r.alive).count()
    }

    /// Waits until this attempt's published checkpoints are uploaded (or refused), up to `max`.
    pub(crate) async fn wait_uploads(&self, job: &str, attempt: u64, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let notified = self.upload_done.notified();
            let pending = self
                .spool
                .uploads_pending()
                .await
                .unwrap_or_default()
                .iter()
                .any(|u| u.job_id == job && u.attempt == attempt);
            if !pending
                || self
                    .channel
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none()
            {
                return;
            }
            self.uploads.notify_one();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// What heartbeats say this worker holds, from memory only (no database
    /// read every heartbeat): attempts taken and not yet ended, and ended
    /// ones whose exit record the coordinator has not acknowledged.
    fn held_now(&self) -> Vec<pb::HeldAttempt> {
        let mut out: Vec<pb::HeldAttempt> = self
            .running()
            .iter()
            .map(|((job, attempt), r)| pb::HeldAttempt {
                job_id: job.clone(),
                attempt: *attempt,
                running: r.alive,
                gpu_uuids: Vec::new(),
            })
            .collect();
        for (job, attempt) in self.spool.unacked_exits() {
            if !out.iter().any(|h| h.job_id == job && h.attempt == attempt) {
                out.push(pb::HeldAttempt {
                    job_id: job,
                    attempt,
                    running: false,
                    gpu_uuids: Vec::new(),
                });
            }
        }
        out
    }

    /// The attempts this worker holds, for hello.
    async fn held(&self) -> Vec<pb::HeldAttempt> {
        let journal = self.spool.journal().await.unwrap_or_default();
        let running = self.running();
        journal
            .into_iter()
            .map(|e| {
                let alive = running
                    .get(&(e.job_id.clone(), e.attempt))
                    .is_some_and(|r| r.alive);
                pb::HeldAttempt {
                    job_id: e.job_id,
                    attempt: e.attempt,
                    running: alive,
                    gpu_uuids: e.gpus,
                }
            })
            .collect()
    }
}

fn lock_state_dir(dir: &std::path::Path) -> Result<liandan_common::lockdir::DirLock, WorkerError> {
    use liandan_common::lockdir::{lock_dir, LockError};
    lock_dir(dir, "worker.lock").map_err(|e| match e {
        LockError::Io(_, e) => WorkerError::StateDir(dir.to_path_buf(), e),
        LockError::Held(p, pid) => WorkerError::Locked(p, pid),
    })
}

/// Opens the state dir and recovers; returns the context ready to connect.
pub async fn prepare(
    mut cfg: WorkerConfig,
) -> Result<(Arc<WorkerCtx>, nix::fcntl::Flock<std::fs::File>), WorkerError> {
    liandan_common::lockdir::create_private_dir(&cfg.state_dir)
        .map_err(|e| WorkerError::StateDir(cfg.state_dir.clone(), e))?;
    // Jobs run in their own directories: every path handed to them must be absolute.
    cfg.state_dir = std::path::absolute(&cfg.state_dir)
        .map_err(|e| WorkerError::StateDir(cfg.state_dir.clone(), e))?;
    if cfg.train_binary.contains('/') {
        cfg.train_binary = std::path::absolute(&cfg.train_binary)
            .map(|p| p.display().to_string())
            .unwrap_or(cfg.train_binary);
    }
    let lock = lock_state_dir(&cfg.state_dir)?;
    let spool = Spool::open(&cfg.state_dir.join("worker.db"), cfg.spool_max_bytes)?;
    let cert_id = if cfg.tls_cert.is_empty() {
        None
    } else {
        // Mutual TLS: the certificate is the identity.
        let pem = std::fs::read_to_string(&cfg.tls_cert)
            .map_err(|e| WorkerError::Tls(format!("cannot read tls_cert {}: {e}", cfg.tls_cert)))?;
        Some(
            liandan_common::auth::worker_id_from_cert_pem(&pem).ok_or_else(|| {
                WorkerError::Tls(format!(
                    "tls_cert {} holds no PEM certificate",
                    cfg.tls_cert
                ))
            })?,
        )
    };
    let stored = spool
        .meta("worker_id")
        .await
        .ok()
        .flatten()
        .and_then(|s| WorkerId::parse(&s).ok());
    let secret = spool.meta("worker_secret").await.ok().flatten();
    // A certificate is the identity; otherwise the one the coordinator issued
    // (an id stored without a secret is from before issued identities: the
    // coordinator gives it a secret at its next hello).
    let cert_bound = cert_id.is_some();
    let worker_id = cert_id.or(stored);
    if let (true, Some(id)) = (cert_bound, &worker_id) {
        spool.set_meta("worker_id", id.to_string()).await?;
    }
    let identity: liandan_common::auth::WorkerIdentity = Default::default();
    if let (false, Some(id), Some(secret)) = (cert_bound, &worker_id, &secret) {
        *identity.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((id.to_string(), secret.clone()));
    }
    let gpus = match cfg.gpus.as_str() {
        "auto" => gpu::discover(),
        "visible" => gpu::visible(
            gpu::discover(),
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        ),
        _ => Vec::new(),
    };
    if gpus.is_empty() && cfg.slots == 0 {
        // `slots = 0` is for a GPU machine whose CPUs are not for jobs; with
        // no GPU found this worker would offer nothing and sit idle forever.
        return Err(WorkerError::Jail(format!(
            "slots = 0 and no GPU was found (gpus = {:?}): this worker would offer nothing; give --slots N for CPU jobs, or check the NVIDIA driver (the worker reads GPUs through NVML)",
            cfg.gpus
        )));
    }
    let resources = pb::Resources {
        gpus,
        cpu_slots: cfg.slots,
        memory_bytes: 0,
        labels: cfg.labels.clone(),
    };
    // The join token: the configured file, else LIANDAN_JOIN_TOKEN, else the
    // systemd credential. Never LIANDAN_TOKEN(_FILE): those are a user's CLI
    // token, and a worker started from that user's shell must not send it.
    let read = |p: &std::path::Path| {
        liandan_common::auth::read_secret_file(p).map_err(|e| WorkerError::Tls(e.to_string()))
    };
    let token = match std::env::var("LIANDAN_JOIN_TOKEN") {
        _ if !cfg.join_token_file.is_empty() => {
            Some(read(std::path::Path::new(&cfg.join_token_file))?)
        }
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => liandan_common::auth::read_credential("liandan-join-token")
            .transpose()
            .map_err(|e| WorkerError::Tls(e.to_string()))?,
    };
    if token.is_none()
        && cfg.tls_cert.is_empty()
        && ["LIANDAN_TOKEN", "LIANDAN_TOKEN_FILE"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    {
        tracing::warn!("LIANDAN_TOKEN and LIANDAN_TOKEN_FILE are the CLI's user token and are not sent by the worker; give the worker the join token with join_token_file, LIANDAN_JOIN_TOKEN or the credential liandan-join-token");
    }
    if let Some(host) = token
        .as_ref()
        .and_then(|_| liandan_common::auth::token_in_the_clear(&cfg.coordinator))
    {
        return Err(WorkerError::Tls(format!(
            "refusing to send the join token over plaintext http:// to {host}: anyone on the path could read it and join as a worker; use an https:// coordinator URL with tls_ca, or a loopback address"
        )));
    }
    let token = liandan_common::auth::TokenInterceptor::new(token.as_deref())
        .map_err(WorkerError::Tls)?
        .with_worker_identity(identity.clone());
    let jobs_dir = cfg.state_dir.join("jobs");
    std::fs::create_dir_all(&jobs_dir).map_err(|e| WorkerError::StateDir(jobs_dir.clone(), e))?;
    let job_user = match cfg.job_user.as_str() {
        "" => None,
        name => {
            let u = jail::JobUser::resolve(name).map_err(WorkerError::Jail)?;
            u.open_state_dir(&cfg.state_dir, &jobs_dir)
                .map_err(WorkerError::Jail)?;
            tracing::info!(user = %u.name, uid = u.uid, "jobs run as job_user");
            Some(u)
        }
    };
    let cgroups =
        jail::Cgroups::open(&cfg.job_cgroups, &cfg.state_dir).map_err(WorkerError::Jail)?;
    let ctx = Arc::new(WorkerCtx {
        cfg,
        spool,
        worker_id: Mutex::new(worker_id),
        identity,
        resources,
        running: Mutex::new(HashMap::new()),
        sinks: Mutex::new(HashMap::new()),
        uploads: Notify::new(),
        upload_done: Notify::new(),
        jobs_dir,
        channel: Mutex::new(None),
        liveness: liandan_common::systemd::Liveness::new(),
        stopping: AtomicBool::new(false),
        token,
        announce_stop: Notify::new(),
        stop_announced: Notify::new(),
        retention: Notify::new(),
        retiring: Mutex::new(Default::default()),
        retired: Notify::new(),
        disk: Mutex::new(None),
        job_user,
        cgroups,
    });
    recover(&ctx).await?;
    Ok((ctx, lock))
}

/// Attempts that were running when the worker died: their processes cannot be
/// re-attached (their output pipes died with us), so surviving ones are
/// killed, and each is reported as interrupted (not failed): the coordinator
/// requeues it without spending a retry, and it resumes from its checkpoint.
async fn recover(ctx: &WorkerCtx) -> Result<(), WorkerError> {
    liandan_common::systemd::status("recovering the journal");
    for e in ctx.spool.journal().await? {
        if e.exit_seq.is_some() {
            continue;
        }
        if let Some(pid) = e.pid {
            let ours = e.start_ticks.is_some() && runner::process_start_ticks(pid) == e.start_ticks;
            if ours {
                tracing::warn!(job = %e.job_id, attempt = e.attempt, pid, "killing the orphaned process group of an attempt from before the restart");
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if ctx.job_user.is_some() {
            // The dead attempt's directory is the worker's again.
            jail::JobUser::take_back(&ctx.attempt_dir(&e.job_id, e.attempt));
        }
        let rec = pb::Record {
            seq: 0,
            job_id: e.job_id.clone(),
            attempt: e.attempt,
            body: Some(pb::record::Body::Exited(pb::JobExited {
                outcome: "interrupted".into(),
                exit_code: -1,
                signal: 0,
                message: "the worker restarted while this attempt ran".into(),
            })),
        };
        let seq = ctx.spool.append(vec![rec]).await;
        ctx.spool
            .journal_set_exit(e.job_id.clone(), e.attempt, seq)
            .await?;
        tracing::info!(job = %e.job_id, attempt = e.attempt, "reported an interrupted attempt");
    }
    Ok(())
}

/// Runs the worker until `shutdown` resolves, then drains: running jobs get
/// SIGTERM (their chance to checkpoint) and are reported as preempted.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    liandan_common::auth::install_crypto_provider();
    let mut endpoint = Endpoint::from_shared(cfg.coordinator.clone())
        .map_err(|e| WorkerError::Url(cfg.coordinator.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Checkpoint uploads are bulk transfers: the default 64 KiB window caps them.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    if !cfg.tls_ca.is_empty() {
        let read = |p: &str, what: &str| {
            std::fs::read(p).map_err(|e| WorkerError::Tls(format!("cannot read {what} {p}: {e}")))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read(&cfg.tls_ca, "tls_ca")?),
        );
        if !cfg.tls_cert.is_empty() {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(&cfg.tls_cert, "tls_cert")?,
                read(&cfg.tls_key, "tls_key")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| WorkerError::Tls(format!("TLS configuration: {e}")))?;
    }
    let (ctx, _lock) = prepare(cfg).await?;
    tracing::info!(worker = %ctx.id(), gpus = ctx.resources.gpus.len(), slots = ctx.resources.cpu_slots, "worker starting");
    let uploader = tokio::spawn(upload_loop(ctx.clone()));
    let retention = tokio::spawn(retention_loop(ctx.clone()));
    let watchdog = liandan_common::systemd::spawn_watchdog(ctx.liveness.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let sessions = tokio::spawn(connect_loop(ctx.clone(), endpoint, stop_rx));
    shutdown.await;
    tracing::info!("stopping: no new jobs; asking running jobs to checkpoint and exit");
    liandan_common::systemd::stopping();
    ctx.stopping.store(true, Ordering::SeqCst);
    // Tell the coordinator first (if connected), then stop the jobs.
    let announced = ctx.stop_announced.notified();
    ctx.announce_stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(2), announced).await;
    ctx.stop_all(StopReason::Preempt);
    let grace = Duration::from_secs_f64(ctx.cfg.grace_period_secs) + Duration::from_secs(70);
    let deadline = tokio::time::Instant::now() + grace;
    while ctx.alive_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the session deliver what is in the spool, briefly.
    let flush_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ctx.spool.unacked() > 0 && tokio::time::Instant::now() < flush_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let _ = sessions.await;
    uploader.abort();
    retention.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(c) = &ctx.cgroups {
        c.close();
    }
    Ok(())
}

async fn connect_loop(ctx: Arc<WorkerCtx>, endpoint: Endpoint, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    let max = Duration::from_secs_f64(ctx.cfg.reconnect_max_secs);
    let mut ready_sent = false;
    loop {
        ctx.liveness.beat();
        if *stop.borrow() {
            return;
        }
        let connected = tokio::select! {
            c = endpoint.connect() => c,
            _ = stop.changed() => return,
        };
        match connected {
            Ok(channel) => {
                *ctx.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
                let r = session(&ctx, channel, &mut stop, &mut ready_sent, &mut backoff).await;
                *ctx.channel.lock().unwrap_or_else(|p| p.into_inner()) = None;
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "session with the coordinator ended; reconnecting")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, coordinator = %ctx.cfg.coordinator, "cannot reach the coordinator; retrying")
            }
        }
        // Exponential backoff with jitter, so a fleet does not reconnect in lockstep.
        let jitter = Duration::from_millis(
            liandan_common::rng::Rng::keyed(
                "jitter",
                &[liandan_common::time::now_secs().to_bits()],
            )
            .below(backoff.as_millis() as u64 / 2 + 1),
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(max);
    }
}

async fn session(
    ctx: &Arc<WorkerCtx>,
    channel: Channel,
    stop: &mut watch::Receiver<bool>,
    ready_sent: &mut bool,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut client = ctx.client(channel);
    let (out, out_rx) = mpsc::channel::<pb::WorkerMessage>(32);
    let secret = ctx
        .identity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let me = ctx
        .worker_id
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|w| w.to_string())
        .unwrap_or_default();
    let hello = pb::Hello {
        worker_id: me,
        worker_secret: secret,
        hostname: gethostname::gethostname().to_string_lossy().to_string(),
        resources: Some(ctx.resources.clone()),
        held: ctx.held().await,
        version: env!("CARGO_PKG_VERSION").into(),
        last_seq: ctx.spool.last_seq(),
    };
    out.send(pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Hello(hello)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let welcome = match inbound.message().await.map_err(|e| e.to_string())? {
        Some(pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(w)),
        }) => w,
        _ => return Err("the coordinator did not answer hello with welcome".into()),
    };
    if !welcome.worker_secret.is_empty() {
        // Issued an identity (a first hello, or one from before issued
        // identities): kept in the state dir before anything else happens.
        let id = WorkerId::parse(&welcome.worker_id).map_err(|e| e.to_string())?;
        ctx.spool
            .set_meta("worker_id", id.to_string())
            .await
            .map_err(|e| e.to_string())?;
        ctx.spool
            .set_meta("worker_secret", welcome.worker_secret.clone())
            .await
            .map_err(|e| e.to_string())?;
        *ctx.identity.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((id.to_string(), welcome.worker_secret.clone()));
        *ctx.worker_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        tracing::info!(worker = %id, "the coordinator issued this worker its identity");
    }
    *backoff = Duration::from_millis(100);
    let ended = ctx.spool.ack(welcome.acked_seq);
    let _ = ctx.spool.journal_prune(welcome.acked_seq).await;
    if ended {
        ctx.retention.notify_one();
    }
    for k in &welcome.kill {
        tracing::warn!(job = %k.job_id, attempt = k.attempt, reason = %k.reason, "coordinator says this attempt must stop");
        ctx.stop(
            &k.job_id,
            k.attempt,
            if k.reason == "cancelled" {
                StopReason::Cancel
            } else {
                StopReason::Stale
            },
        );
    }
    ctx.spool.rewind();
    tracing::info!(worker = %ctx.id(), acked = welcome.acked_seq, unacked = ctx.spool.unacked(), "connected to the coordinator");
    if !*ready_sent {
        *ready_sent = true;
        // Ready only now: the journal is recovered and the worker is registered.
        liandan_common::systemd::ready("connected");
    }
    let hb = Duration::from_millis(welcome.heartbeat_interval_ms.clamp(100, 60_000) as u64);
    let mut heartbeat = tokio::time::interval(hb);
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    ctx.spool.new_records.notify_one();
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|e| e.to_string())?.ok_or("the coordinator closed the session")?;
                match msg.msg {
                    Some(pb::coordinator_message::Msg::Ack(a)) => {
                        let ended = ctx.spool.ack(a.seq);
                        let _ = ctx.spool.journal_prune(a.seq).await;
                        if ended {
                            ctx.retention.notify_one();
                        }
                        if a.refused > 0 {
                            tracing::warn!(refused = a.refused, "the coordinator refused records from stale attempts");
                        }
                    }
                    Some(pb::coordinator_message::Msg::Assign(a)) => start(ctx, a),
                    Some(pb::coordinator_message::Msg::Cancel(c)) => {
                        let reason = match c.reason.as_str() { "preempted" => StopReason::Preempt, "stale" => StopReason::Stale, _ => StopReason::Cancel };
                        ctx.stop(&c.job_id, c.attempt, reason);
                    }
                    Some(pb::coordinator_message::Msg::Drain(_)) => {
                        // The coordinator stops assigning; running jobs finish.
                        tracing::info!("draining: this worker takes no new jobs");
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                let stopping = ctx.stopping.load(Ordering::SeqCst);
                out.send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat { held: ctx.held_now(), stopping, reports_held: true, disk: ctx.disk() })) }).await.map_err(|e| e.to_string())?;
                // The main loop is alive while it heartbeats (or keeps trying to connect).
                ctx.liveness.beat();
            }
            _ = ctx.announce_stop.notified() => {
                // Said before any preempted exit record, on the same ordered stream,
                // so the coordinator never hands a stopping worker a requeued job.
                out.send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat { held: ctx.held_now(), stopping: true, reports_held: true, disk: ctx.disk() })) }).await.map_err(|e| e.to_string())?;
                ctx.stop_announced.notify_waiters();
            }
            _ = ctx.spool.new_records.notified() => send_pending(ctx, &out).await?,
            _ = flush.tick() => send_pending(ctx, &out).await?,
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn send_pending(
    ctx: &WorkerCtx,
    out: &mpsc::Sender<pb::WorkerMessage>,
) -> Result<(), String> {
    loop {
        // 4 MiB a message: well under the coordinator's limit (16 MiB by default).
        let batch = ctx.spool.next_batch(4096, 4 << 20);
        if batch.is_empty() {
            return Ok(());
        }
        out.send(pb::WorkerMessage {
            msg: Some(pb::worker_message::Msg::Records(pb::Records {
                records: batch,
            })),
        })
        .await
        .map_err(|e| e.to_string())?;
    }
}

/// Starts an assigned attempt: journal, fetch its checkpoint, run.
/// Takes an assignment. Not async on purpose: the session loop that calls it
/// is the only place acks are processed, and anything here that waited (for
/// spool space, say, which only an ack frees) would deadlock it; all waiting
/// happens in the spawned task.
fn start(ctx: &Arc<WorkerCtx>, a: pb::Assignment) {
    let key = (a.job_id.clone(), a.attempt);
    if liandan_common::ids::JobId::parse(&a.job_id).is_err() {
        tracing::error!(job = %a.job_id, "refusing an assignment with an invalid job id");
        return;
    }
    if ctx.stopping.load(Ordering::SeqCst) {
        // Crossed our stop announcement: hand it straight back, no retry spent.
        let exited = pb::JobExited {
            outcome: "preempted".into(),
            exit_code: -1,
            signal: 0,
            message: "the worker is shutting down".into(),
        };
        let rec = pb::Record {
            seq: 0,
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            body: Some(pb::record::Body::Exited(exited)),
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.spool.append(vec![rec]).await;
        });
        return;
    }
    let (stop_tx, stop_rx) = watch::channel(None);
    {
        let mut running = ctx.running();
        if running.contains_key(&key) {
            return;
        }
        running.insert(
            key,
            Running {
                stop: stop_tx,
                alive: true,
            },
        );
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        // Retention may be removing this job's old directories right now.
        ctx.wait_not_retiring(&a.job_id).await;
        let job_dir = ctx.jobs_dir.join(&a.job_id);
        let dir = ctx.attempt_dir(&a.job_id, a.attempt);
        if let Err(e) = runner::journal(&ctx, &a, &dir).await {
            tracing::error!(error = %e, "cannot journal the attempt");
        }
        let spec = match serde_json::from_str::<liandan_common::sweep::SweepSpec>(&a.spec_json) {
            Ok(s) => s,
            Err(e) => {
                let rec = pb::Record {
                    seq: 0,
                    job_id: a.job_id.clone(),
                    attempt: a.attempt,
                    body: Some(pb::record::Body::Exited(pb::JobExited {
                        outcome: "spawn_failed".into(),
                        exit_code: -1,
                        signal: 0,
                        message: format!("bad spec from coordinator: {e}"),
                    })),
                };
                let seq = ctx.spool.append(vec![rec]).await;
                let _ = ctx
                    .spool
                    .journal_set_exit(a.job_id.clone(), a.attempt, seq)
                    .await;
                ctx.remove_running(&a.job_id, a.attempt);
                return;
            }
        };
        let mut resume = None;
        if let Some(c) = a.resume_from.clone() {
            let channel = ctx
                .channel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let fetched = match channel {
                Some(ch) => checkpoint::fetch(&mut ctx.client(ch), &job_dir, &c).await,
                None => Err("not connected".into()),
            };
            match fetched {
                Ok(p) => resume = Some((p, c.step)),
                Err(e) => {
                    tracing::error!(job = %a.job_id, error = %e, "cannot get the checkpoint to resume from; starting from scratch")
                }
            }
        }
        runner::run_attempt(
            ctx.clone(),
            runner::Launch {
                assignment: a.clone(),
                spec,
                dir,
                resume,
            },
            stop_rx,
        )
        .await;
        ctx.running().remove(&(a.job_id.clone(), a.attempt));
    });
}

/// Removes job directories nothing is owed from (see [`retention`]): at
/// start, whenever the coordinator acknowledged an attempt's end (at most
/// every few seconds), and every `retention_interval_secs`.
async fn retention_loop(ctx: Arc<WorkerCtx>) {
    let interval = Duration::from_secs_f64(ctx.cfg.retention_interval_secs);
    let keep_failed = Duration::from_secs_f64(ctx.cfg.keep_failed_days * 86_400.0);
    loop {
        let notified = ctx.retention.notified();
        retention_pass(&ctx, keep_failed).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = notified => tokio::time::sleep(Duration::from_secs(2).min(interval)).await,
        }
    }
}

async fn retention_pass(ctx: &Arc<WorkerCtx>, keep_failed: Duration) {
    let dir = ctx.jobs_dir.clone();
    // Listed before the journal is read (the order the module docs explain).
    let Ok(listed) = tokio::task::spawn_blocking(move || retention::list(&dir)).await else {
        return;
    };
    let (Ok(journal), Ok(uploads)) = (ctx.spool.journal().await, ctx.spool.uploads_pending().await)
    else {
        return;
    };
    let mut owed: std::collections::HashSet<(String, u64)> =
        journal.into_iter().map(|e| (e.job_id, e.attempt)).collect();
    owed.extend(uploads.into_iter().map(|u| (u.job_id, u.attempt)));
    owed.extend(ctx.running().keys().cloned());
    let (dir, state, c) = (ctx.jobs_dir.clone(), ctx.cfg.state_dir.clone(), ctx.clone());
    let done = tokio::task::spawn_blocking(move || {
        let pass = retention::collect(
            &dir,
            listed,
            &owed,
            keep_failed,
            std::time::SystemTime::now(),
            &|job| c.claim_job(job),
            &|job| c.release_job(job),
        );
        (pass, retention::free_bytes(&state))
    })
    .await;
    let Ok((pass, free)) = done else { return };
    if pass.removed > 0 {
        tracing::info!(
            removed = pass.removed,
            kept = pass.kept,
            bytes = pass.bytes,
            "removed finished job directories"
        );
        let _ = ctx.spool.uploads_prune().await;
    }
    *ctx.disk.lock().unwrap_or_else(|p| p.into_inner()) = Some(pb::DiskUsage {
        jobs_bytes: pass.bytes,
        free_bytes: free,
        attempt_dirs: pass.kept,
    });
}

/// Uploads published checkpoints whenever connected; each upload resumes
/// where the coordinator says an earlier one stopped.
async fn upload_loop(ctx: Arc<WorkerCtx>) {
    loop {
        let notified = ctx.uploads.notified();
        let channel = ctx
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(ch) = channel {
            let mut client = ctx.client(ch);
            for u in ctx.spool.uploads_pending().await.unwrap_or_default() {
                match checkpoint::upload(&mut client, &ctx, &u).await {
                    Ok(()) => {
                        let _ = ctx
                            .spool
                            .upload_done(u.job_id.clone(), u.attempt, u.step)
                            .await;
                        tracing::info!(job = %u.job_id, step = u.step, bytes = u.size, "checkpoint uploaded");
                        ctx.upload_done.notify_waiters();
                    }
                    Err(e)
                        if e.code() == tonic::Code::NotFound
                            // The attempt is no longer current (said by the status
                            // call or the upload): the coordinator never takes it.
                            || e.code() == tonic::Code::FailedPrecondition
                            || (e.code() == tonic::Code::InvalidArgument
                                && !e.message().contains("resume from")) =>
                    {
                        // The file is gone, or the coordinator will never take it: retrying cannot help.
                        tracing::error!(job = %u.job_id, step = u.step, error = %e, "checkpoint cannot be uploaded; giving it up");
                        let _ = ctx
                            .spool
                            .upload_done(u.job_id.clone(), u.attempt, u.step)
                            .await;
                        ctx.upload_done.notify_waiters();
                    }
                    Err(e) => {
                        tracing::warn!(job = %u.job_id, step = u.step, error = %e, "checkpoint upload failed; will resume");
                        break;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }
}
