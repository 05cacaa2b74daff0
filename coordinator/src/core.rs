//! The state owner: every decision the coordinator makes happens here, under
//! one lock, and is queued to the store in the same critical section (so the
//! database sees decisions in the order they were made). Messages to workers
//! and replies to callers go out only after the store says the batch is durable.
//!
//! Memory mirrors the database for scheduling speed; it is rebuilt from the
//! database at start. A failed commit stops the process (see [`crate::store`]).

use crate::model::{JobEvent, JobState, Outcome, StopRequest, SweepState};
use crate::results::Outcomes;
use crate::search::sweep::SweepSearch;
use crate::search::{TrialData, TrialStatus};
use crate::store::{
    CheckpointRow, JobRow, JobUpdate, LogRow, MetricRow, NewJobs, Op, Store, StoreError,
};
use liandan_common::config::CoordinatorConfig;
use liandan_common::ids::{JobId, SweepId, TrialId, WorkerId};
use liandan_common::sweep::{self, Format, Goal, SweepSpec};
use liandan_common::time::now_secs;
use liandan_proto::v1 as pb;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

/// A refusal or failure, mapped to a gRPC status at the edge.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{kind} {id} not found; list them with `liandan {hint}`")]
    NotFound {
        kind: &'static str,
        id: String,
        hint: &'static str,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A quota or size limit: nothing was changed.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Listing pages: at most this many bytes of items (and a quarter of the
/// message limit), and at most the page size asked for, capped at the default.
pub const PAGE_BYTES: usize = 4 << 20;
pub const SWEEPS_PAGE: usize = 1000;
pub const JOBS_PAGE: usize = 10_000;
/// Jobs a filtered page looks at, at most (bounds the time under the lock).
pub const JOBS_SCAN: usize = 100_000;

fn page_len(asked: u32, default: usize) -> usize {
    match asked as usize {
        0 => default,
        n => n.min(default),
    }
}

fn bad_token(t: &str) -> CoreError {
    CoreError::InvalidArgument(format!(
        "page_token {:?} is not one this coordinator gave out; start from the first page",
        t.chars().take(80).collect::<String>()
    ))
}

fn job_state_filter(state: &str) -> Result<Option<JobState>, CoreError> {
    if state.is_empty() {
        return Ok(None);
    }
    JobState::parse(state).map(Some).ok_or_else(|| {
        CoreError::InvalidArgument(format!(
            "unknown job state {state:?}; use queued, running, succeeded, failed, cancelled or pruned"
        ))
    })
}

/// The one id among `ids` that starts with `prefix`; none is "not found",
/// more than one is refused, naming a few.
fn unique_prefix<'a>(
    kind: &'static str,
    prefix: &str,
    ids: impl Iterator<Item = &'a str>,
    hint: &'static str,
) -> Result<String, CoreError> {
    let nf = || CoreError::NotFound {
        kind,
        id: prefix.chars().take(80).collect(),
        hint,
    };
    // At least one character past the kind's "xx-" prefix.
    if prefix.len() < 4 || !prefix.contains('-') || prefix.ends_with('-') {
        return Err(nf());
    }
    let mut found: Vec<&str> = Vec::new();
    for id in ids {
        if id.starts_with(prefix) {
            found.push(id);
            if found.len() > 3 {
                break;
            }
        }
    }
    match found[..] {
        [] => Err(nf()),
        [one] => Ok(one.to_string()),
        _ => Err(CoreError::InvalidArgument(format!(
            "{kind} {prefix:?} is the start of more than one id ({}{}); give more of it",
            found[..found.len().min(3)].join(", "),
            if found.len() > 3 { ", ..." } else { "" }
        ))),
    }
}

/// Judges whether the caller may change what `owner` (a sweep's owner)
/// owns; checked under the core's lock, with the change.
pub type Permit<'a> = &'a (dyn Fn(&str) -> Result<(), CoreError> + Sync);

/// Anyone may (in-process callers, no user authentication).
pub fn anyone(_: &str) -> Result<(), CoreError> {
    Ok(())
}

/// The sweep `sid`, or the error a user sees for an unknown one.
fn sweep_mem<'a>(st: &'a State, sid: &SweepId) -> Result<&'a SweepMem, CoreError> {
    st.sweeps.get(sid).ok_or_else(|| CoreError::NotFound {
        kind: "sweep",
        id: sid.to_string(),
        hint: "status",
    })
}

/// How long a worker whose disk filled up under a job gets no new jobs.
const DISK_FULL_PAUSE: Duration = Duration::from_secs(30);

/// How far past its last stored record a worker's sequence numbers may jump.
const MAX_SEQ_JUMP: u64 = 1 << 40;

/// Jobs a cancel ends per hold of the lock.
const CANCEL_CHUNK: usize = 20_000;

/// How often the coordinator's timer calls [`Core::tick`].
pub const TICK: Duration = Duration::from_millis(200);

/// A gap between ticks longer than this means the coordinator did not run.
const STALL: Duration = Duration::from_secs(1);

/// Counter of writes refused because they carried a stale attempt number.
pub const REFUSED_STALE: &str = "refused_stale_writes";

struct SweepMem {
    name: String,
    /// The name of the user who submitted it ("" without user authentication).
    owner: String,
    /// Its jobs' attempts are numbered above this (see `State::attempt_floors`).
    attempt_floor: u64,
    spec: Arc<SweepSpec>,
    spec_json: Arc<str>,
    /// What a worker needs to run a job: the spec without its parameter space
    /// (which can be megabytes), serialised once and shared by every assignment.
    run_spec_json: Arc<str>,
    spec_hash: String,
    state: SweepState,
    algorithm: String,
    created_at: f64,
    trials: u64,
    jobs: Vec<JobId>,
    ready: VecDeque<JobId>,
    running: u32,
    /// Jobs per state, kept with every transition (so status is O(1) at a million jobs).
    counts: [u64; 6],
    /// Succeeded jobs that never reported the sweep's metric (kept likewise).
    silent: u64,
    /// Trials, metric histories and stop decisions, for sweeps that adapt or stop early.
    search: Option<SweepSearch>,
    /// Succeeded jobs' values by trial (what `results` ranks).
    outcomes: Outcomes,
    /// A proposal for this (learning) sweep is being computed off the lock.
    proposing: bool,
}

fn state_index(s: JobState) -> usize {
    match s {
        JobState::Queued => 0,
        JobState::Running => 1,
        JobState::Succeeded => 2,
        JobState::Failed => 3,
        JobState::Cancelled => 4,
        JobState::Pruned => 5,
    }
}

impl SweepMem {
    fn moved(&mut self, from: JobState, to: JobState) {
        self.counts[state_index(from)] = self.counts[state_index(from)].saturating_sub(1);
        self.counts[state_index(to)] += 1;
    }
}

struct JobMem {
    /// The job's row key in the store ([`JobRow::seq`]).
    seq: i64,
    sweep: SweepId,
    trial: TrialId,
    ord: i64,
    seed: i64,
    state: JobState,
    attempt: u64,
    retries_used: u32,
    /// Attempts in a row that ended with their worker's death.
    worker_deaths: u32,
    worker: Option<WorkerId>,
    stop: StopRequest,
    final_metric: Option<f64>,
    best_metric: Option<f64>,
    /// The job reported its metric as NaN or an infinity (dropped: not a
    /// result), so a missing final value means divergence, not a pattern
    /// that never matched. Kept in memory only: it words a message.
    metric_not_finite: bool,
    result_recorded: bool,
    params_json: Arc<str>,
    /// Resources reserved on `worker` while running.
    gpus: Vec<String>,
    cpus: u32,
    /// When the current attempt was handed out (or found running at start):
    /// a heartbeat that leaves it out counts only once the assignment had
    /// time to arrive.
    assigned_at: Option<Instant>,
}

impl WorkerMem {
    /// A worker known by id only (before its hello, or from the database).
    fn unknown(lease_deadline: Instant) -> WorkerMem {
        WorkerMem {
            hostname: String::new(),
            resources: pb::Resources::default(),
            free_cpus: 0,
            free_gpus: Vec::new(),
            running: HashSet::new(),
            session: None,
            lease_deadline,
            draining: false,
            stopping: false,
            acked_seq: 0,
            last_seen: 0.0,
            disk: None,
            disk_full_until: None,
            cert_bound: false,
            secret_hash: None,
            known: false,
        }
    }
}

impl JobMem {
    /// The fence, the one predicate every write from a worker passes: the
    /// write's attempt is the current attempt of this running job, on the
    /// worker that holds it. Anything else is a stale attempt's write.
    fn accepts(&self, attempt: u64, worker: &str) -> bool {
        self.state == JobState::Running
            && self.attempt == attempt
            && self.worker.as_ref().is_some_and(|w| w.as_str() == worker)
    }

    /// A new job, queued, never run.
    fn queued(
        seq: i64,
        sweep: SweepId,
        trial: TrialId,
        ord: i64,
        seed: i64,
        params_json: Arc<str>,
    ) -> JobMem {
        JobMem {
            seq,
            sweep,
            trial,
            ord,
            seed,
            state: JobState::Queued,
            attempt: 0,
            retries_used: 0,
            worker_deaths: 0,
            worker: None,
            stop: StopRequest::None,
            final_metric: None,
            best_metric: None,
            metric_not_finite: false,
            result_recorded: false,
            params_json,
            gpus: Vec::new(),
            cpus: 0,
            assigned_at: None,
        }
    }

    /// Its row's changing fields, for [`Op::UpdateJob`].
    fn update(&self) -> JobUpdate {
        JobUpdate {
            seq: self.seq,
            state: self.state.as_str(),
            attempt: self.attempt,
            retries_used: self.retries_used,
            worker_id: self.worker.clone(),
            cancel_requested: self.stop.to_db(),
            final_metric: self.final_metric,
            best_metric: self.best_metric,
            result_recorded: self.result_recorded,
            worker_deaths: self.worker_deaths,
        }
    }
}

struct Session {
    id: u64,
    tx: mpsc::UnboundedSender<pb::CoordinatorMessage>,
}

struct WorkerMem {
    hostname: String,
    resources: pb::Resources,
    free_cpus: u32,
    free_gpus: Vec<String>,
    running: HashSet<JobId>,
    session: Option<Session>,
    lease_deadline: Instant,
    draining: bool,
    /// Shutting down (said in a heartbeat); cleared by its next hello. Not persisted.
    stopping: bool,
    acked_seq: u64,
    last_seen: f64,
    /// What its last heartbeat said of its disk (memory only).
    disk: Option<pb::DiskUsage>,
    /// Its last attempt ended `disk_full`: no new jobs until then (memory only).
    disk_full_until: Option<Instant>,
    /// Seen with a client certificate: this id is usable only with it.
    cert_bound: bool,
    /// BLAKE3 of the secret issued with this id to a join-token worker.
    secret_hash: Option<String>,
    /// Until the worker says hello after a coordinator restart, its capacity is unknown.
    known: bool,
}

/// A user token `liandan tokens add` issued: only its hash is kept.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub name: String,
    pub admin: bool,
    /// BLAKE3 (hex) of the token.
    pub hash: String,
    pub created_at: f64,
}

#[derive(Default)]
struct State {
    sweeps: BTreeMap<SweepId, SweepMem>,
    /// Deleted sweeps' highest attempt numbers (`deleted_sweeps`): a sweep
    /// submitted again under the id numbers its attempts above them.
    attempt_floors: HashMap<SweepId, u64>,
    tokens: BTreeMap<String, IssuedToken>,
    jobs: HashMap<JobId, JobMem>,
    workers: BTreeMap<WorkerId, WorkerMem>,
    delayed: BinaryHeap<Reverse<(Instant, JobId)>>,
    checkpoints: HashMap<JobId, Vec<CheckpointRow>>,
    next_session: u64,
    /// When `expire_workers` last looked (it runs at most every minute).
    last_expiry: Option<Instant>,
    /// The store key ([`JobRow::seq`]) the next new job gets.
    next_seq: i64,
    /// When the scheduler last ticked (see [`Core::tick`]).
    last_tick: Option<Instant>,
    refused_stale: u64,
}

type Sends = Vec<(
    mpsc::UnboundedSender<pb::CoordinatorMessage>,
    pb::CoordinatorMessage,
)>;

/// What the coordinator makes of an attempt a worker says it holds (at hello
/// and in every heartbeat): the job, when it is that job's current attempt on
/// this worker; and the stop to send while its process runs: the user's
/// cancel or a prune not yet carried out, or `stale` for an attempt that is
/// not current.
fn held_verdict(
    st: &State,
    wid: &WorkerId,
    h: &pb::HeldAttempt,
) -> (Option<JobId>, Option<pb::Cancel>) {
    let Ok(jid) = JobId::parse(&h.job_id) else {
        return (None, None);
    };
    let job = st
        .jobs
        .get(&jid)
        .filter(|j| j.accepts(h.attempt, wid.as_str()));
    let reason = match job.map(|j| j.stop) {
        None => Some("stale"),
        Some(StopRequest::None) => None,
        Some(StopRequest::Prune) => Some("pruned"),
        Some(StopRequest::Cancel) => Some("cancelled"),
    };
    let cancel = reason.filter(|_| h.running).map(|r| pb::Cancel {
        job_id: h.job_id.clone(),
        attempt: h.attempt,
        reason: r.into(),
    });
    (job.map(|_| jid), cancel)
}

/// Least time after an assignment before a heartbeat that leaves it out
/// makes it lost (the lease timeout when that is longer).
pub const RECONCILE_GRACE_SECS: f64 = 30.0;

/// The coordinator's state owner.
pub struct Core {
    state: Mutex<State>,
    store: Store,
    cfg: CoordinatorConfig,
    log_generation: watch::Sender<u64>,
    /// Set once at shutdown: every worker session ends (workers reconnect).
    closing: watch::Sender<bool>,
    /// This core, for tasks it starts (proposals computed off the lock).
    me: std::sync::Weak<Core>,
    /// Proposals being computed or applied.
    proposals: std::sync::atomic::AtomicUsize,
    /// Tests hold proposals here, before the fit ([`Core::hold_proposals`]).
    proposal_gate: Arc<crate::gate::Gate>,
    /// Tests hold a submit here, while its batch is built ([`Core::hold_builds`]).
    build_gate: Arc<crate::gate::Gate>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

impl Core {
    /// Opens the database in the data dir and rebuilds memory from it. Running
    /// attempts get `restart_grace_secs` for their workers to reconnect.
    pub fn open(cfg: CoordinatorConfig) -> Result<Arc<Core>, CoreError> {
        liandan_common::lockdir::create_private_dir(&cfg.data_dir).map_err(|e| {
            CoreError::FailedPrecondition(format!(
                "cannot create data dir {}: {e}; check the path and its permissions",
                cfg.data_dir.display()
            ))
        })?;
        let store = Store::open(&cfg.data_dir.join("coordinator.db"))?;
        // A cancel commits in chunks; one a crash cut short is finished first.
        futures::executor::block_on(store.commit(vec![Op::FinishCancels]))?;
        let state = load(&store, &cfg)?;
        let (log_generation, _) = watch::channel(0);
        let (closing, _) = watch::channel(false);
        Ok(Arc::new_cyclic(|me| Core {
            state: Mutex::new(state),
            store,
            cfg,
            log_generation,
            closing,
            me: me.clone(),
            proposals: Default::default(),
            proposal_gate: Default::default(),
            build_gate: Default::default(),
        }))
    }

    /// Resolves when the coordinator shuts down: worker sessions end then.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Ends every worker session (at shutdown); returns how many were open.
    pub fn end_sessions(&self) -> usize {
        self.closing.send_replace(true);
        self.lock()
            .workers
            .values()
            .filter(|w| w.session.is_some())
            .count()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `v` back once everything decided before this call is durable.
    /// Every reply built from memory goes through here: memory runs ahead of
    /// the database by the batches in flight, and a caller must never be told
    /// of a sweep, job or result that a crash now would revert.
    pub async fn committed<T>(&self, v: T) -> Result<T, CoreError> {
        self.store.barrier().await?;
        Ok(v)
    }

    /// Subscribes to "new log lines are durable" notifications.
    pub fn log_updates(&self) -> watch::Receiver<u64> {
        self.log_generation.subscribe()
    }

    /// Waits for a batch to be durable, then delivers the messages decided
    /// with it. The delivery survives the caller: a client that resets its
    /// RPC (Ctrl-C during a submit) drops this future, and the decisions
    /// already queued to the store (a job now `running` on W) must still
    /// reach W, or W would never run a job the database says it runs. So a
    /// guard hands the rest to a task when dropped early; the usual path
    /// spawns nothing (the dispatch benchmark lost a third with a spawn per call).
    async fn finish(
        &self,
        fut: impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
        sends: Sends,
    ) -> Result<(), CoreError> {
        type Commit =
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;
        struct Deliver {
            fut: Option<Commit>,
            sends: Option<Sends>,
        }
        impl Drop for Deliver {
            fn drop(&mut self) {
                if let (Some(fut), Some(sends)) = (self.fut.take(), self.sends.take()) {
                    // Dropped before delivering: finish from a task. Outside a
                    // runtime (shutdown) there is nothing left to deliver to.
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            if fut.await.is_ok() {
                                for (tx, msg) in sends {
                                    let _ = tx.send(msg);
                                }
                            }
                        });
                    }
                }
            }
        }
        let mut d = Deliver {
            fut: Some(Box::pin(fut)),
            sends: Some(sends),
        };
        let r = match d.fut.as_mut() {
            Some(f) => f.as_mut().await,
            None => Ok(()),
        };
        d.fut = None;
        let sends = d.sends.take().unwrap_or_default();
        r?;
        for (tx, msg) in sends {
            let _ = tx.send(msg);
        }
        Ok(())
    }

    // ------------------------------------------------------------ sweeps

    /// Validates, expands and stores a sweep in one transaction. The same spec
    /// under the same name returns the existing sweep (`created = false`).
    pub async fn submit(
        &self,
        text: &str,
        format: &str,
        name: &str,
    ) -> Result<(pb::Sweep, bool, Vec<String>), CoreError> {
        self.submit_as(text, format, name, "").await
    }

    /// [`Core::submit`] for the user `owner`, whose sweep it becomes.
    pub async fn submit_as(
        &self,
        text: &str,
        format: &str,
        name: &str,
        owner: &str,
    ) -> Result<(pb::Sweep, bool, Vec<String>), CoreError> {
        let owner = owner.to_string();
        let max = self.cfg.max_spec_bytes;
        if max > 0 && text.len() as u64 > max {
            return Err(CoreError::ResourceExhausted(format!(
                "the sweep file is {} bytes, over max_spec_bytes ({max}): listings and every worker carry it; generate long value lists with a distribution or a smaller grid, or raise max_spec_bytes",
                text.len()
            )));
        }
        let format = Format::parse(format).ok_or_else(|| {
            CoreError::InvalidArgument(format!("unknown spec format {format:?}; use yaml or toml"))
        })?;
        // Parsing and expanding a big sweep takes seconds of CPU: not on a runtime thread.
        let (text, requested) = (text.to_string(), name.to_string());
        let t0 = std::time::Instant::now();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, CoreError> {
            let c = sweep::check(&text, format, &requested)
                .map_err(|e| CoreError::InvalidArgument(format!("invalid sweep spec: {e}")))?;
            let (spec_json, spec_hash) = sweep::spec_identity(&c.spec);
            Ok((
                c.warnings,
                c.spec,
                spec_json,
                spec_hash,
                c.name,
                c.sweep_id,
                c.expansion,
            ))
        })
        .await
        .map_err(|e| CoreError::FailedPrecondition(format!("expanding the sweep: {e}")))??;
        let (warnings, spec, spec_json, spec_hash, name, sweep_id, expansion) = prepared;
        tracing::debug!(
            jobs = expansion.jobs.len(),
            secs = t0.elapsed().as_secs_f64(),
            "sweep parsed and expanded"
        );
        let spec = Arc::new(spec);
        // Sequence numbers for the jobs, reserved in a moment under the lock
        // (a refused submit leaves a gap, which is harmless: they only order rows).
        let n = expansion.jobs.len() as i64;
        let reserved = {
            let mut st = self.lock();
            match st.sweeps.get(&sweep_id) {
                // A resubmit (the usual idempotent retry) answers before any building.
                Some(existing) if existing.spec_hash == spec_hash => {
                    Err(sweep_info(&st, &sweep_id))
                }
                _ => {
                    let f = st.next_seq;
                    st.next_seq += n;
                    Ok((f, st.attempt_floors.get(&sweep_id).copied().unwrap_or(0)))
                }
            }
        };
        let (first_seq, floor) = match reserved {
            Ok(f) => f,
            Err(info) => return self.committed((info, false, warnings)).await,
        };
        // Everything a million-job sweep needs in memory and in the batch is
        // built here, off the lock and off the runtime threads; the lock is
        // then held only to check and insert.
        let built = {
            let (spec, sweep_id, name, spec_json, spec_hash, owner) = (
                spec.clone(),
                sweep_id.clone(),
                name.clone(),
                spec_json.clone(),
                spec_hash.clone(),
                owner.clone(),
            );
            let gate = self.build_gate.clone();
            tokio::task::spawn_blocking(move || {
                gate.wait_open();
                build_sweep(
                    spec, sweep_id, name, owner, spec_json, spec_hash, expansion, first_seq, floor,
                )
            })
            .await
            .map_err(|e| CoreError::FailedPrecondition(format!("building the sweep: {e}")))?
        };
        let Built {
            mut ops,
            jobs: new_jobs,
            sweep: new_sweep,
        } = built;
        let decided = {
            let mut st = self.lock();
            if let Some(existing) = st.sweeps.get(&sweep_id) {
                if existing.spec_hash == spec_hash {
                    // "Exists" only once the first submit's commit is durable.
                    Err(sweep_info(&st, &sweep_id))
                } else {
                    return Err(CoreError::AlreadyExists(format!(
                        "a different sweep named {name:?} exists ({sweep_id}); submit with --name to choose another name"
                    )));
                }
            } else {
                if let Some((j, _)) = new_jobs.iter().find(|(j, _)| st.jobs.contains_key(j)) {
                    return Err(CoreError::AlreadyExists(format!("job id {j} already belongs to another sweep (a hash collision); submit under another --name")));
                }
                let quota = self.cfg.max_queued_jobs_per_user;
                if quota > 0 && !owner.is_empty() {
                    let queued: u64 = st
                        .sweeps
                        .values()
                        .filter(|s| s.owner == owner)
                        .map(|s| s.counts[state_index(JobState::Queued)])
                        .sum();
                    if queued + new_jobs.len() as u64 > quota {
                        return Err(CoreError::ResourceExhausted(format!(
                            "{owner} has {queued} queued job(s) and this sweep adds {}: over max_queued_jobs_per_user ({quota}); wait for jobs to run, cancel or delete a sweep, or ask an admin to raise the quota",
                            new_jobs.len()
                        )));
                    }
                }
                st.jobs.reserve(new_jobs.len());
                st.jobs.extend(new_jobs);
                st.sweeps.insert(sweep_id.clone(), new_sweep);
                let mut sends = Vec::new();
                self.dispatch(&mut st, &mut ops, &mut sends);
                Ok((self.store.enqueue(ops), sends))
            }
        };
        let (fut, sends) = match decided {
            Ok(v) => v,
            Err(info) => return self.committed((info, false, warnings)).await,
        };
        tracing::debug!(
            secs = t0.elapsed().as_secs_f64(),
            "sweep in memory; committing"
        );
        self.finish(fut, sends).await?;
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "sweep committed");
        let info = sweep_info(&self.lock(), &sweep_id);
        self.committed((info, true, warnings)).await
    }

    fn sweep_id(&self, st: &State, id: &str) -> Result<SweepId, CoreError> {
        let nf = || CoreError::NotFound {
            kind: "sweep",
            id: id.chars().take(80).collect(),
            hint: "status",
        };
        let sid = match SweepId::parse(id) {
            Ok(s) if st.sweeps.contains_key(&s) => s,
            // Also accept the sweep's name, or a unique prefix of its id.
            _ => match st.sweeps.iter().find(|(_, s)| s.name == id) {
                Some((k, _)) => k.clone(),
                None if id.starts_with("sw-") => {
                    let full =
                        unique_prefix("sweep", id, st.sweeps.keys().map(|k| k.as_str()), "status")?;
                    SweepId::parse(&full).map_err(|_| nf())?
                }
                None => return Err(nf()),
            },
        };
        if st.sweeps.contains_key(&sid) {
            Ok(sid)
        } else {
            Err(nf())
        }
    }

    /// A job by its id or a unique prefix of it (as git and docker take
    /// short ids): `job-44abe2` is the job whose id starts so, if only one does.
    pub fn resolve_job(&self, s: &str) -> Result<String, CoreError> {
        // Not even the shape of an id (`job-../x`): refused as such.
        let jid = JobId::parse(s).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        if st.jobs.contains_key(&jid) {
            return Ok(s.to_string());
        }
        unique_prefix("job", s, st.jobs.keys().map(|k| k.as_str()), "jobs SWEEP")
    }

    /// A worker by its id or a unique prefix of it.
    pub fn resolve_worker(&self, s: &str) -> Result<String, CoreError> {
        let wid = WorkerId::parse(s).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        if st.workers.contains_key(&wid) {
            return Ok(s.to_string());
        }
        unique_prefix(
            "worker",
            s,
            st.workers.keys().map(|k| k.as_str()),
            "workers",
        )
    }

    /// Who owns a job: its sweep's owner.
    pub fn job_owner(&self, id: &str) -> Result<String, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        st.jobs
            .get(&jid)
            .and_then(|j| st.sweeps.get(&j.sweep))
            .map(|s| s.owner.clone())
            .ok_or_else(|| CoreError::NotFound {
                kind: "job",
                id: jid.to_string(),
                hint: "jobs SWEEP",
            })
    }

    /// The tokens `liandan tokens add` issued (hashes only), by name.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.lock().tokens.values().cloned().collect()
    }

    /// Stores a newly issued token (its hash); refused if the name is taken.
    pub async fn issue_token(&self, t: IssuedToken) -> Result<IssuedToken, CoreError> {
        let fut = {
            let mut st = self.lock();
            if st.tokens.contains_key(&t.name) {
                return Err(CoreError::FailedPrecondition(format!(
                    "a token named {} exists; revoke it first (liandan tokens revoke {})",
                    t.name, t.name
                )));
            }
            st.tokens.insert(t.name.clone(), t.clone());
            self.store.enqueue(vec![Op::PutToken {
                name: t.name.clone(),
                role: if t.admin { "admin" } else { "user" }.into(),
                hash: t.hash.clone(),
                created_at: t.created_at,
            }])
        };
        self.finish(fut, Vec::new()).await?;
        Ok(t)
    }

    /// Removes an issued token: it is refused from then on.
    pub async fn revoke_token(&self, name: &str) -> Result<IssuedToken, CoreError> {
        let (fut, t) = {
            let mut st = self.lock();
            let t = st.tokens.remove(name).ok_or_else(|| CoreError::NotFound {
                kind: "token",
                id: name.chars().take(80).collect(),
                hint: "tokens list",
            })?;
            let op = Op::DeleteToken {
                name: name.to_string(),
            };
            (self.store.enqueue(vec![op]), t)
        };
        self.finish(fut, Vec::new()).await?;
        Ok(t)
    }

    pub fn get_sweep(&self, id: &str) -> Result<pb::Sweep, CoreError> {
        let st = self.lock();
        let sid = self.sweep_id(&st, id)?;
        Ok(sweep_info(&st, &sid))
    }

    /// One page of sweeps in submission order, without their specs, and the
    /// token of the next page ("" after the last).
    pub fn list_sweeps_page(
        &self,
        page_size: u32,
        token: &str,
    ) -> Result<(Vec<pb::Sweep>, String), CoreError> {
        let after = match token {
            "" => None,
            t => Some(
                t.split_once('|')
                    .and_then(|(c, id)| Some((c.parse::<f64>().ok()?, id.to_string())))
                    .ok_or_else(|| bad_token(t))?,
            ),
        };
        let size = page_len(page_size, SWEEPS_PAGE);
        let max_bytes = self.page_bytes();
        let st = self.lock();
        let mut keys: Vec<(f64, &SweepId)> =
            st.sweeps.iter().map(|(k, s)| (s.created_at, k)).collect();
        keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.as_str().cmp(b.1.as_str())));
        let start = match &after {
            None => 0,
            Some((c, id)) => keys.partition_point(|(t, k)| {
                t.total_cmp(c).then(k.as_str().cmp(id.as_str())) != std::cmp::Ordering::Greater
            }),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (t, k) in &keys[start..] {
            if out.len() >= size || bytes >= max_bytes {
                let last: &pb::Sweep = out.last().expect("a page holds one sweep at least");
                return Ok((out.clone(), format!("{}|{}", last.created_at, last.id)));
            }
            let mut info = sweep_info(&st, k);
            debug_assert_eq!(info.created_at, *t);
            info.spec_json.clear();
            bytes += prost::Message::encoded_len(&info);
            out.push(info);
        }
        Ok((out, String::new()))
    }

    /// One page of a sweep's jobs (in order, optionally of one state) and the
    /// next page's token. A page scans at most [`JOBS_SCAN`] jobs, so a
    /// filtered page may be short and still not the last.
    pub fn list_jobs_page(
        &self,
        sweep: &str,
        state: &str,
        page_size: u32,
        token: &str,
    ) -> Result<(Vec<pb::Job>, String), CoreError> {
        let filter = job_state_filter(state)?;
        let from: usize = match token {
            "" => 0,
            t => t.parse().map_err(|_| bad_token(t))?,
        };
        let size = page_len(page_size, JOBS_PAGE);
        let max_bytes = self.page_bytes();
        let st = self.lock();
        let sid = self.sweep_id(&st, sweep)?;
        let jobs = &st.sweeps[&sid].jobs;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = from.min(jobs.len());
        let end = jobs.len().min(i.saturating_add(JOBS_SCAN));
        while i < end && out.len() < size && bytes < max_bytes {
            if let Some(m) = st.jobs.get(&jobs[i]) {
                if filter.is_none_or(|f| m.state == f) {
                    let info = job_info(&jobs[i], m);
                    bytes += prost::Message::encoded_len(&info);
                    if m.attempt > 0 {
                        bytes += LAST_ATTEMPT_BYTES;
                    }
                    out.push(info);
                }
            }
            i += 1;
        }
        let next = if i < jobs.len() {
            i.to_string()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// Fills in the `last_attempt` of each job that has had one, from the
    /// store: the worker it ran on, since when and how it ended (for a queued
    /// job, the attempt it is retried after), which `liandan jobs` shows (one
    /// indexed lookup per job, off the lock).
    pub async fn fill_last_attempts(&self, jobs: &mut [pb::Job]) -> Result<(), CoreError> {
        let keys: Vec<(usize, String, i64)> = jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| j.attempt > 0)
            .map(|(i, j)| (i, j.id.clone(), j.attempt as i64))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let found = self
            .store
            .read(move |c| {
                use rusqlite::OptionalExtension;
                let mut st = c.prepare_cached("SELECT attempt, worker_id, state, started_at, ended_at, exit_code, signal, message FROM attempts WHERE job_id=?1 AND attempt=?2")?;
                let mut out = Vec::with_capacity(keys.len());
                for (i, job, attempt) in keys {
                    let a = st
                        .query_row(rusqlite::params![job, attempt], |r| {
                            let mut a = attempt_row(r)?;
                            // Cut by bytes (on a character boundary): the page reserved them.
                            let mut cut = a.message.len().min(LISTED_MESSAGE_BYTES);
                            while !a.message.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            a.message.truncate(cut);
                            Ok(a)
                        })
                        .optional()?;
                    if let Some(a) = a {
                        out.push((i, a));
                    }
                }
                Ok(out)
            })
            .await?;
        for (i, a) in found {
            jobs[i].last_attempt = Some(a);
        }
        Ok(())
    }

    /// Bytes of items one listing page holds at most: a quarter of the
    /// message limit, at most [`PAGE_BYTES`].
    pub fn page_bytes(&self) -> usize {
        (self.cfg.max_message_bytes / 4).min(PAGE_BYTES)
    }

    pub fn list_sweeps(&self) -> Vec<pb::Sweep> {
        let st = self.lock();
        let mut v: Vec<pb::Sweep> = st.sweeps.keys().map(|k| sweep_info(&st, k)).collect();
        v.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        v
    }

    /// Deletes a sweep: its jobs, attempts, logs, metrics and checkpoint rows
    /// (the files go with the next orphan scan), remembering its highest
    /// attempt number so that a sweep submitted again under its name starts
    /// above it. Refused while a job runs (cancel first: a running job holds
    /// its worker's GPUs until its process is gone), and while jobs are
    /// queued unless `force`. `permit` judges the caller against the owner,
    /// under the same lock as the deletion.
    pub async fn delete_sweep(
        &self,
        id: &str,
        force: bool,
        permit: Permit<'_>,
    ) -> Result<(pb::Sweep, u64), CoreError> {
        let (fut, info, n) = {
            let mut st = self.lock();
            let sid = self.sweep_id(&st, id)?;
            permit(&st.sweeps[&sid].owner)?;
            let info = sweep_info(&st, &sid);
            let c = info.counts.unwrap_or_default();
            // Running jobs hold their worker's GPUs until their processes
            // are gone: a sweep goes only once none runs.
            if c.running > 0 {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} has {} running job(s); cancel it first (liandan cancel {sid}), or `liandan delete --force`, which cancels and waits for them",
                    c.running
                )));
            }
            if c.queued > 0 && !force {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} has {} queued job(s); cancel it first (liandan cancel {sid}) or delete with --force",
                    c.queued
                )));
            }
            let Some(sweep) = st.sweeps.remove(&sid) else {
                return Err(CoreError::NotFound {
                    kind: "sweep",
                    id: sid.to_string(),
                    hint: "status",
                });
            };
            let mut max_attempt = sweep.attempt_floor;
            for jid in &sweep.jobs {
                if let Some(job) = st.jobs.remove(jid) {
                    max_attempt = max_attempt.max(job.attempt);
                }
                st.checkpoints.remove(jid);
            }
            st.attempt_floors.insert(sid.clone(), max_attempt);
            tracing::info!(sweep = %sid, name = %sweep.name, jobs = sweep.jobs.len(), "sweep deleted");
            let op = Op::DeleteSweep {
                id: sid.to_string(),
                max_attempt,
            };
            (self.store.enqueue(vec![op]), info, sweep.jobs.len() as u64)
        };
        self.finish(fut, Vec::new()).await?;
        Ok((info, n))
    }

    /// Pauses, resumes or cancels a sweep.
    pub async fn set_sweep_state(&self, id: &str, new: SweepState) -> Result<pb::Sweep, CoreError> {
        self.set_sweep_state_as(id, new, &anyone).await
    }

    /// [`Core::set_sweep_state`] if `permit` allows it for the sweep's owner.
    pub async fn set_sweep_state_as(
        &self,
        id: &str,
        new: SweepState,
        permit: Permit<'_>,
    ) -> Result<pb::Sweep, CoreError> {
        let (fut, sends, sid) = {
            let mut st = self.lock();
            let sid = self.sweep_id(&st, id)?;
            permit(&st.sweeps[&sid].owner)?;
            let cur = st.sweeps[&sid].state;
            if cur == SweepState::Cancelled && new != SweepState::Cancelled {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} was cancelled; submit it again under a new name to rerun it"
                )));
            }
            // A sweep that is done keeps its history: pausing or cancelling
            // it would relabel finished work.
            let info = sweep_info(&st, &sid);
            if matches!(info.state.as_str(), "finished" | "failed") && new != SweepState::Active {
                let c = info.counts.unwrap_or_default();
                let verb = if new == SweepState::Paused {
                    "pause"
                } else {
                    "cancel"
                };
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} is {} ({} succeeded, {} failed): there is nothing left to {verb}; `liandan delete {sid}` removes it",
                    info.state, c.succeeded, c.failed
                )));
            }
            let mut ops = vec![Op::SetSweepState {
                id: sid.to_string(),
                state: new.as_str().into(),
            }];
            let mut sends = Vec::new();
            if let Some(s) = st.sweeps.get_mut(&sid) {
                s.state = new;
            }
            self.dispatch(&mut st, &mut ops, &mut sends);
            (self.store.enqueue(ops), sends, sid)
        };
        self.finish(fut, sends).await?;
        if new == SweepState::Cancelled {
            // The sweep is cancelled (nothing more starts); its jobs end in
            // chunks, each under the lock for a moment, so a million-job
            // cancel never stalls heartbeats. The chunks run in a task the
            // caller cannot cancel (a client gone mid-RPC must not leave the
            // sweep half-cancelled); a crash between chunks is finished at
            // start (`Op::FinishCancels`).
            let Some(me) = self.me.upgrade() else {
                return Err(CoreError::FailedPrecondition(
                    "the coordinator is stopping".into(),
                ));
            };
            let chunks = tokio::spawn({
                let sid = sid.clone();
                async move { me.cancel_chunks(&sid).await }
            });
            chunks.await.map_err(|e| {
                CoreError::FailedPrecondition(format!("cancelling the sweep: {e}"))
            })??;
        }
        let info = sweep_info(&self.lock(), &sid);
        self.committed(info).await
    }

    /// Ends every job of cancelled sweep `sid`, [`CANCEL_CHUNK`] per hold of the lock.
    async fn cancel_chunks(&self, sid: &SweepId) -> Result<(), CoreError> {
        {
            let sid = sid.clone();
            let mut from = 0;
            loop {
                let (fut, sends, next, total) = {
                    let mut st = self.lock();
                    let Some(s) = st.sweeps.get(&sid) else { break };
                    let total = s.jobs.len();
                    let end = (from + CANCEL_CHUNK).min(total);
                    let ids: Vec<JobId> = s.jobs[from.min(end)..end].to_vec();
                    let (mut ops, mut sends) = (Vec::new(), Vec::new());
                    for j in ids {
                        self.cancel_job_locked(&mut st, &j, &mut ops, &mut sends);
                    }
                    (self.store.enqueue(ops), sends, end, total)
                };
                self.finish(fut, sends).await?;
                if next >= total {
                    break;
                }
                from = next;
            }
        }
        Ok(())
    }

    /// `liandan retry`: the sweep's failed jobs (or the one job, failed or
    /// cancelled) are queued again with their retries reset; their attempts
    /// go on from their last number, so nothing an old attempt sends is taken
    /// for a new one's. Returns how many were queued and the sweep.
    pub async fn retry(
        &self,
        sweep: &str,
        job: Option<&str>,
        permit: Permit<'_>,
    ) -> Result<(u64, pb::Sweep), CoreError> {
        let (fut, sends, sid, n) = {
            let mut st = self.lock();
            let sid = self.sweep_id(&st, sweep)?;
            let s = &st.sweeps[&sid];
            permit(&s.owner)?;
            if s.state == SweepState::Cancelled {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} was cancelled: its jobs do not run again; submit it under a new name"
                )));
            }
            if s.spec.has_search() {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} searches adaptively (its search decides what runs next); retry is for grid and random sweeps"
                )));
            }
            let targets: Vec<JobId> = match job {
                Some(j) => {
                    let jid =
                        JobId::parse(j).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
                    match st.jobs.get(&jid) {
                        Some(m) if m.sweep == sid => {
                            if !matches!(m.state, JobState::Failed | JobState::Cancelled) {
                                return Err(CoreError::FailedPrecondition(format!(
                                    "job {jid} is {}: only a failed or cancelled job runs again",
                                    m.state.as_str()
                                )));
                            }
                            vec![jid]
                        }
                        _ => {
                            return Err(CoreError::NotFound {
                                kind: "job",
                                id: jid.to_string(),
                                hint: "jobs SWEEP",
                            })
                        }
                    }
                }
                None => s
                    .jobs
                    .iter()
                    .filter(|j| st.jobs.get(*j).is_some_and(|m| m.state == JobState::Failed))
                    .cloned()
                    .collect(),
            };
            let mut ops = Vec::with_capacity(targets.len());
            for jid in &targets {
                let Some(m) = st.jobs.get_mut(jid) else {
                    continue;
                };
                let Some(next) = m.state.on(JobEvent::Retry) else {
                    continue;
                };
                let from = m.state;
                m.state = next;
                m.retries_used = 0;
                m.worker_deaths = 0;
                m.stop = StopRequest::None;
                ops.push(Op::UpdateJob(m.update()));
                if let Some(s) = st.sweeps.get_mut(&sid) {
                    s.moved(from, next);
                    s.ready.push_back(jid.clone());
                }
            }
            tracing::info!(sweep = %sid, jobs = targets.len(), "jobs queued again (retry)");
            let mut sends = Vec::new();
            self.dispatch(&mut st, &mut ops, &mut sends);
            (self.store.enqueue(ops), sends, sid, targets.len() as u64)
        };
        self.finish(fut, sends).await?;
        let info = sweep_info(&self.lock(), &sid);
        Ok((n, info))
    }

    fn cancel_job_locked(&self, st: &mut State, id: &JobId, ops: &mut Vec<Op>, sends: &mut Sends) {
        self.stop_job_locked(st, id, StopRequest::Cancel, ops, sends);
    }

    /// Cancels or prunes a job: a queued one ends now; a running one is asked
    /// to stop (its worker sends SIGTERM, then SIGKILL after the grace period)
    /// and ends when its attempt does. A cancel overrides an earlier prune.
    fn stop_job_locked(
        &self,
        st: &mut State,
        id: &JobId,
        why: StopRequest,
        ops: &mut Vec<Op>,
        sends: &mut Sends,
    ) {
        let Some(job) = st.jobs.get_mut(id) else {
            return;
        };
        let (event, reason) = match why {
            StopRequest::None => return,
            StopRequest::Cancel => (JobEvent::Cancel, "cancelled"),
            StopRequest::Prune => (JobEvent::Prune, "pruned"),
        };
        match job.state {
            JobState::Queued => {
                if let Some(next) = job.state.on(event) {
                    job.state = next;
                    ops.push(Op::UpdateJob(job.update()));
                    let sid = job.sweep.clone();
                    if let Some(s) = st.sweeps.get_mut(&sid) {
                        s.moved(JobState::Queued, next);
                    }
                }
            }
            JobState::Running
                if job.stop == StopRequest::None
                    || (why == StopRequest::Cancel && job.stop != StopRequest::Cancel) =>
            {
                job.stop = why;
                ops.push(Op::UpdateJob(job.update()));
                let attempt = job.attempt;
                if let Some(tx) = job
                    .worker
                    .as_ref()
                    .and_then(|w| st.workers.get(w))
                    .and_then(|w| w.session.as_ref())
                    .map(|s| s.tx.clone())
                {
                    sends.push((tx, cancel_msg(id, attempt, reason)));
                }
            }
            _ => {}
        }
    }

    pub async fn cancel_job(&self, id: &str) -> Result<pb::Job, CoreError> {
        self.cancel_job_as(id, &anyone).await
    }

    /// [`Core::cancel_job`] if `permit` allows it for the job's sweep's owner.
    pub async fn cancel_job_as(&self, id: &str, permit: Permit<'_>) -> Result<pb::Job, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let (fut, sends) = {
            let mut st = self.lock();
            let Some(job) = st.jobs.get(&jid) else {
                return Err(CoreError::NotFound {
                    kind: "job",
                    id: jid.to_string(),
                    hint: "jobs SWEEP",
                });
            };
            permit(
                st.sweeps
                    .get(&job.sweep)
                    .map(|s| s.owner.as_str())
                    .unwrap_or(""),
            )?;
            let mut ops = Vec::new();
            let mut sends = Vec::new();
            self.cancel_job_locked(&mut st, &jid, &mut ops, &mut sends);
            (self.store.enqueue(ops), sends)
        };
        self.finish(fut, sends).await?;
        self.get_job(id).await
    }

    // -------------------------------------------------------------- jobs

    /// Every job of a sweep (in process; the API pages, [`Core::list_jobs_page`]).
    pub fn list_jobs(&self, sweep: &str, state: &str) -> Result<Vec<pb::Job>, CoreError> {
        let filter = job_state_filter(state)?;
        let st = self.lock();
        let sid = self.sweep_id(&st, sweep)?;
        Ok(st.sweeps[&sid]
            .jobs
            .iter()
            .filter_map(|j| st.jobs.get(j).map(|m| (j, m)))
            .filter(|(_, m)| filter.is_none_or(|f| m.state == f))
            .map(|(j, m)| job_info(j, m))
            .collect())
    }

    /// A job with its attempts.
    pub async fn get_job(&self, id: &str) -> Result<pb::Job, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let mut info = {
            let st = self.lock();
            let m = st.jobs.get(&jid).ok_or_else(|| CoreError::NotFound {
                kind: "job",
                id: jid.to_string(),
                hint: "jobs SWEEP",
            })?;
            job_info(&jid, m)
        };
        self.store.barrier().await?;
        let key = jid.to_string();
        info.attempts = self
            .store
            .read(move |c| {
                let mut st = c.prepare_cached("SELECT attempt, worker_id, state, started_at, ended_at, exit_code, signal, message FROM attempts WHERE job_id=?1 ORDER BY attempt")?;
                let rows = st.query_map([key], attempt_row)?;
                rows.collect()
            })
            .await?;
        Ok(info)
    }

    /// The current attempt of a job and whether it has ended (for log following).
    pub fn job_progress(&self, id: &JobId) -> Option<(u64, bool)> {
        let st = self.lock();
        st.jobs.get(id).map(|m| (m.attempt, m.state.is_terminal()))
    }

    /// Whether a job waits in the queue for its next attempt.
    pub fn job_queued(&self, id: &JobId) -> bool {
        let st = self.lock();
        st.jobs.get(id).is_some_and(|m| m.state == JobState::Queued)
    }

    /// The sweep id a user named (id or name), checked to exist.
    pub fn resolve_sweep(&self, sweep: &str) -> Result<SweepId, CoreError> {
        let st = self.lock();
        self.sweep_id(&st, sweep)
    }

    /// One chunk of results: jobs `from..from + limit` of the sweep, with the
    /// parameters of trials not in `sent` (which it extends). The lock is held
    /// per chunk only, so a million-job listing never stalls the scheduler.
    pub fn results_chunk(
        &self,
        sid: &SweepId,
        from: usize,
        limit: usize,
        sent: &mut HashSet<TrialId>,
    ) -> Result<(pb::GetResultsResponse, bool), CoreError> {
        let st = self.lock();
        let s = sweep_mem(&st, sid)?;
        let end = (from + limit).min(s.jobs.len());
        let mut chunk = pb::GetResultsResponse {
            sweep: (from == 0).then(|| sweep_info(&st, sid)),
            jobs: Vec::with_capacity(end.saturating_sub(from)),
            trials: Vec::new(),
        };
        for j in &s.jobs[from.min(end)..end] {
            let Some(m) = st.jobs.get(j) else { continue };
            if sent.insert(m.trial.clone()) {
                chunk.trials.push(pb::TrialParams {
                    trial_id: m.trial.to_string(),
                    params_json: m.params_json.to_string(),
                });
            }
            chunk.jobs.push(pb::JobResult {
                job_id: j.to_string(),
                trial_id: m.trial.to_string(),
                seed: m.seed,
                state: m.state.as_str().into(),
                params_json: String::new(),
                final_metric: m.final_metric,
                best_metric: m.best_metric,
            });
        }
        Ok((chunk, end >= s.jobs.len()))
    }

    /// The sweep's trials ranked by their seed mean (best first, `limit` of
    /// them, 0 = all), then trials without a value in submission order, in
    /// chunks of `chunk` trials; the first chunk carries the sweep and totals.
    /// One pass over the sweep's trials under the lock, none over its jobs
    /// unless trials without a value are asked for.
    pub fn trial_results(
        &self,
        sid: &SweepId,
        best: bool,
        limit: usize,
        chunk: usize,
    ) -> Result<Vec<pb::GetTrialResultsResponse>, CoreError> {
        let st = self.lock();
        let s = sweep_mem(&st, sid)?;
        let maximize = s
            .spec
            .metric
            .as_ref()
            .is_some_and(|m| m.goal == Goal::Maximize);
        let ranking = s.outcomes.rank(maximize, best, limit);
        let mut trials: Vec<pb::TrialResult> = ranking
            .top
            .iter()
            .map(|(id, t)| pb::TrialResult {
                trial_id: id.to_string(),
                params_json: t.params_json.to_string(),
                values: t
                    .values(best)
                    .into_iter()
                    .map(|(seed, value)| pb::SeedValue { seed, value })
                    .collect(),
            })
            .collect();
        if limit == 0 || trials.len() < limit {
            let mut seen = HashSet::new();
            for jid in &s.jobs {
                if limit > 0 && trials.len() >= limit {
                    break;
                }
                let Some(m) = st.jobs.get(jid) else { continue };
                if !s.outcomes.has_value(&m.trial, best) && seen.insert(&m.trial) {
                    trials.push(pb::TrialResult {
                        trial_id: m.trial.to_string(),
                        params_json: m.params_json.to_string(),
                        values: Vec::new(),
                    });
                }
            }
        }
        let mut chunks = Vec::new();
        let mut rest = trials.into_iter().peekable();
        while chunks.is_empty() || rest.peek().is_some() {
            chunks.push(pb::GetTrialResultsResponse {
                trials: rest.by_ref().take(chunk.max(1)).collect(),
                ..Default::default()
            });
        }
        let first = &mut chunks[0];
        first.sweep = Some(sweep_info(&st, sid));
        first.trials_total = s.trials;
        first.trials_ranked = ranking.ranked as u64;
        first.jobs_without_value = (s.jobs.len() as u64).saturating_sub(ranking.values as u64);
        first.share_hyperparameters = ranking.shares.as_ref().map(|x| x.hyperparameters);
        first.share_seeds = ranking.shares.as_ref().map(|x| x.seeds);
        Ok(chunks)
    }

    pub fn refused_stale(&self) -> u64 {
        self.lock().refused_stale
    }

    // ----------------------------------------------------------- workers

    pub fn list_workers(&self) -> Vec<pb::Worker> {
        let st = self.lock();
        st.workers
            .iter()
            .map(|(id, w)| worker_info(id, w))
            .collect()
    }

    /// Drains a worker (no new jobs; running ones finish), or lifts the drain (`undo`).
    pub async fn drain(&self, id: &str, undo: bool) -> Result<pb::Worker, CoreError> {
        let wid = WorkerId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let (fut, sends) = {
            let mut st = self.lock();
            let w = st
                .workers
                .get_mut(&wid)
                .ok_or_else(|| CoreError::NotFound {
                    kind: "worker",
                    id: wid.to_string(),
                    hint: "workers",
                })?;
            w.draining = !undo;
            let mut sends = Vec::new();
            if let (false, Some(s)) = (undo, &w.session) {
                sends.push((
                    s.tx.clone(),
                    pb::CoordinatorMessage {
                        msg: Some(pb::coordinator_message::Msg::Drain(pb::Drain {})),
                    },
                ));
            }
            let mut ops = vec![worker_upsert(&wid, w)];
            if undo {
                self.dispatch(&mut st, &mut ops, &mut sends);
            }
            (self.store.enqueue(ops), sends)
        };
        self.finish(fut, sends).await?;
        let info = self
            .lock()
            .workers
            .get(&wid)
            .map(|w| worker_info(&wid, w))
            .unwrap_or_default();
        self.committed(info).await
    }

    /// Removes a disconnected worker that holds no job from the records
    /// (`liandan workers --forget`); it is registered again if it comes back.
    pub async fn forget_worker(&self, id: &str) -> Result<pb::Worker, CoreError> {
        let wid = WorkerId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let (fut, info) = {
            let mut st = self.lock();
            let w = st.workers.get(&wid).ok_or_else(|| CoreError::NotFound {
                kind: "worker",
                id: wid.to_string(),
                hint: "workers",
            })?;
            if w.session.is_some() {
                return Err(CoreError::FailedPrecondition(format!(
                    "worker {wid} is connected; stop its daemon first (systemctl stop liandan-worker), then forget it"
                )));
            }
            if !w.running.is_empty() {
                return Err(CoreError::FailedPrecondition(format!(
                    "worker {wid} still holds {} job(s); they are requeued when its lease expires (lease_timeout_secs), then forget it",
                    w.running.len()
                )));
            }
            let info = worker_info(&wid, w);
            st.workers.remove(&wid);
            tracing::info!(worker = %wid, "worker forgotten");
            let op = Op::DeleteWorker {
                id: wid.to_string(),
            };
            (self.store.enqueue(vec![op]), info)
        };
        self.finish(fut, Vec::new()).await?;
        Ok(info)
    }

    /// A worker opened its stream. Returns the session id and the welcome.
    pub async fn hello(
        &self,
        hello: pb::Hello,
        tx: mpsc::UnboundedSender<pb::CoordinatorMessage>,
        cert: Option<WorkerId>,
    ) -> Result<(WorkerId, u64), CoreError> {
        if !hello.worker_id.is_empty() {
            WorkerId::parse(&hello.worker_id)
                .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        }
        let resources = hello.resources.unwrap_or_default();
        for l in &resources.labels {
            liandan_common::names::validate("label", l)
                .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        }
        let (fut, sends, session, wid) = {
            let mut st = self.lock();
            let (wid, issued) =
                identify(&st, &hello.worker_id, &hello.worker_secret, cert.as_ref())?;
            st.next_session += 1;
            let session = st.next_session;
            let now = Instant::now();
            let lease = secs(self.cfg.lease_timeout_secs);
            let w = st
                .workers
                .entry(wid.clone())
                .or_insert_with(|| WorkerMem::unknown(now + lease));
            if cert.is_some() {
                w.cert_bound = true;
            }
            if let Some((_, hash)) = &issued {
                w.secret_hash = Some(hash.clone());
            }
            let issued_secret = issued.map(|(secret, _)| secret).unwrap_or_default();
            // Shown in listings: no control characters (terminal escapes).
            w.hostname = hello
                .hostname
                .chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect();
            w.resources = resources;
            w.session = Some(Session {
                id: session,
                tx: tx.clone(),
            });
            w.lease_deadline = now + lease;
            w.last_seen = now_secs();
            w.known = true;
            w.stopping = false;
            let acked_seq = w.acked_seq;
            let previously_running: Vec<JobId> = w.running.iter().cloned().collect();

            let mut ops = Vec::new();
            let mut sends = Vec::new();
            let mut keep = Vec::new();
            let mut kill = Vec::new();
            let mut kept: HashSet<JobId> = HashSet::new();
            for h in &hello.held {
                let (current, cancel) = held_verdict(&st, &wid, h);
                kill.extend(cancel);
                if let Some(jid) = current {
                    if let Some(j) = st.jobs.get_mut(&jid) {
                        j.gpus = h.gpu_uuids.clone();
                    }
                    keep.push(h.clone());
                    kept.insert(jid);
                }
            }
            // Attempts we believed ran there that the worker no longer has are lost.
            for jid in previously_running {
                if !kept.contains(&jid) {
                    self.lose_attempt(
                        &mut st,
                        &jid,
                        "the worker restarted without this attempt",
                        &mut ops,
                    );
                }
            }
            // Recompute free capacity from what it really runs.
            if let Some(w) = st.workers.get_mut(&wid) {
                w.running = kept.clone();
                w.free_cpus = w.resources.cpu_slots;
                w.free_gpus = w.resources.gpus.iter().map(|g| g.uuid.clone()).collect();
            }
            for jid in &kept {
                let (cpus, gpus) = st
                    .jobs
                    .get(jid)
                    .map(|j| (j.cpus, j.gpus.clone()))
                    .unwrap_or_default();
                if let Some(w) = st.workers.get_mut(&wid) {
                    w.free_cpus = w.free_cpus.saturating_sub(cpus);
                    w.free_gpus.retain(|g| !gpus.contains(g));
                }
            }
            if let Some(w) = st.workers.get(&wid) {
                ops.push(worker_upsert(&wid, w));
            }
            let welcome = pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                    worker_id: wid.to_string(),
                    acked_seq,
                    heartbeat_interval_ms: (self.cfg.heartbeat_interval_secs * 1000.0) as u32,
                    keep,
                    kill,
                    worker_secret: issued_secret,
                })),
            };
            sends.push((tx.clone(), welcome));
            if st.workers.get(&wid).is_some_and(|w| w.draining) {
                sends.push((
                    tx,
                    pb::CoordinatorMessage {
                        msg: Some(pb::coordinator_message::Msg::Drain(pb::Drain {})),
                    },
                ));
            }
            self.dispatch(&mut st, &mut ops, &mut sends);
            (self.store.enqueue(ops), sends, session, wid)
        };
        self.finish(fut, sends).await?;
        tracing::info!(worker = %wid, session, "worker connected");
        Ok((wid, session))
    }

    /// Whether `secret` is the one issued with `worker`'s id (join-token
    /// workers), for RPCs outside the session (checkpoint transfers).
    pub fn worker_secret_ok(&self, worker: &str, secret: &str) -> bool {
        let Ok(wid) = WorkerId::parse(worker) else {
            return false;
        };
        let st = self.lock();
        st.workers.get(&wid).is_some_and(|w| {
            !w.cert_bound
                && w.secret_hash
                    .as_deref()
                    .is_some_and(|h| liandan_common::auth::token_eq(h, &secret_hash(secret)))
        })
    }

    /// Whether `worker` runs an attempt of `job` now (any attempt: a resume
    /// fetch comes before the worker reports its new attempt started).
    pub fn runs_job(&self, job: &JobId, worker: &str) -> bool {
        let st = self.lock();
        st.jobs.get(job).is_some_and(|j| {
            j.state == JobState::Running && j.worker.as_ref().is_some_and(|w| w.as_str() == worker)
        })
    }

    /// A heartbeat renews the worker's lease.
    /// A heartbeat renews the worker's lease; `stopping` says it is shutting
    /// down (SIGTERM): it gets no new jobs until it says hello again.
    /// A heartbeat: renews the worker's lease and reconciles what it holds
    /// with what the coordinator believes (a Kubernetes-style controller; no
    /// single lost message can leave the two apart for good). An attempt the
    /// coordinator has running on the worker that the worker does not hold,
    /// once its assignment had time to arrive, is lost: the job is requeued
    /// without spending a retry. An attempt the worker holds that is not
    /// current is told to stop.
    pub async fn heartbeat(
        &self,
        wid: &WorkerId,
        session: u64,
        hb: pb::Heartbeat,
    ) -> Result<(), CoreError> {
        // Generous on purpose: an assignment reaches the worker only after
        // its batch commits (behind a big submit, seconds), a heartbeat is
        // judged after the records queued before it, and a loaded machine
        // stretches both (seen: a 2 s grace misfired once in CI). A lost
        // assignment is rare and a slow repair harmless; a wrong repair runs
        // the job twice.
        let grace = secs(self.cfg.lease_timeout_secs.max(RECONCILE_GRACE_SECS));
        let (fut, sends) = {
            let mut st = self.lock();
            let Some(w) = st.workers.get_mut(wid) else {
                // Forgotten while its stream was open: it must say hello again.
                return Err(CoreError::FailedPrecondition(
                    "unknown worker; say hello first".into(),
                ));
            };
            if w.session.as_ref().is_none_or(|s| s.id != session) {
                // A newer stream of this worker replaced this one: it ends
                // here (kept open, it would look alive and hold nothing).
                return Err(CoreError::FailedPrecondition(
                    "this stream was replaced by a newer one from the same worker".into(),
                ));
            }
            w.lease_deadline = Instant::now() + secs(self.cfg.lease_timeout_secs);
            w.last_seen = now_secs();
            if hb.disk.is_some() {
                w.disk = hb.disk;
            }
            if hb.stopping && !w.stopping {
                tracing::info!(worker = %wid, "worker is shutting down; no new jobs for it");
            }
            w.stopping |= hb.stopping;
            if !hb.reports_held {
                // An older worker that sends no list: nothing to reconcile.
                return Ok(());
            }
            if w.running.is_empty() && hb.held.is_empty() {
                return Ok(());
            }
            let tx = w.session.as_ref().map(|s| s.tx.clone());
            let believed: Vec<JobId> = w.running.iter().cloned().collect();
            let held: HashSet<(&str, u64)> = hb
                .held
                .iter()
                .map(|h| (h.job_id.as_str(), h.attempt))
                .collect();
            let mut ops = Vec::new();
            let mut sends = Vec::new();
            for jid in believed {
                let Some(j) = st.jobs.get(&jid) else { continue };
                let settled = j.assigned_at.is_none_or(|t| t.elapsed() >= grace);
                if j.accepts(j.attempt, wid.as_str())
                    && settled
                    && !held.contains(&(jid.as_str(), j.attempt))
                {
                    tracing::warn!(worker = %wid, job = %jid, attempt = j.attempt, "the worker does not hold an attempt it was given; requeued without spending a retry");
                    self.lose_attempt(
                        &mut st,
                        &jid,
                        "the worker does not hold this attempt (its assignment was lost)",
                        &mut ops,
                    );
                }
            }
            for h in &hb.held {
                if let (Some(c), Some(tx)) = (held_verdict(&st, wid, h).1, &tx) {
                    sends.push((
                        tx.clone(),
                        pb::CoordinatorMessage {
                            msg: Some(pb::coordinator_message::Msg::Cancel(c)),
                        },
                    ));
                }
            }
            if ops.is_empty() && sends.is_empty() {
                return Ok(());
            }
            self.dispatch(&mut st, &mut ops, &mut sends);
            (self.store.enqueue(ops), sends)
        };
        self.finish(fut, sends).await
    }

    /// The worker's stream ended. Its lease keeps running down.
    pub fn disconnected(&self, wid: &WorkerId, session: u64) {
        let mut st = self.lock();
        if let Some(w) = st.workers.get_mut(wid) {
            if w.session.as_ref().is_some_and(|s| s.id == session) {
                w.session = None;
                // Stored, so that worker expiry counts from here after a restart too.
                w.last_seen = now_secs();
                // Queued now; the writer commits it without anyone waiting.
                drop(self.store.enqueue(vec![worker_upsert(wid, w)]));
                tracing::info!(worker = %wid, session, "worker disconnected");
            }
        }
    }

    /// Stores a batch of records and returns the acknowledgement to send once
    /// durable. Records at or below the worker's acknowledged sequence number
    /// were stored before and are skipped; records of a stale attempt are
    /// refused, counted and logged.
    pub async fn records(
        &self,
        wid: &WorkerId,
        session: u64,
        records: Vec<pb::Record>,
    ) -> Result<pb::Ack, CoreError> {
        let (fut, sends, ack, had_logs) = {
            let mut st = self.lock();
            let Some(w) = st.workers.get_mut(wid) else {
                return Err(CoreError::FailedPrecondition(
                    "unknown worker; say hello first".into(),
                ));
            };
            if w.session.as_ref().is_none_or(|s| s.id != session) {
                return Err(CoreError::FailedPrecondition(
                    "this stream was replaced by a newer one from the same worker".into(),
                ));
            }
            // A worker's numbers grow by at most one reserved block per
            // restart; one far past what is stored is no record of this
            // worker's (taking it would make every later record a "duplicate").
            if let Some(r) = records
                .iter()
                .find(|r| r.seq > w.acked_seq.saturating_add(MAX_SEQ_JUMP))
            {
                return Err(CoreError::InvalidArgument(format!(
                    "record sequence number {} is too far past the last stored one ({})",
                    r.seq, w.acked_seq
                )));
            }
            w.lease_deadline = Instant::now() + secs(self.cfg.lease_timeout_secs);
            w.last_seen = now_secs();
            let mut acked = w.acked_seq;
            let mut refused = 0u64;
            let mut logs = Vec::new();
            let mut metrics = Vec::new();
            let mut ops = Vec::new();
            let mut sends = Vec::new();
            // Jobs whose final/best value changed in this batch: written once each.
            let mut metric_changed: Vec<JobId> = Vec::new();
            let mut metric_seen: HashSet<JobId> = HashSet::new();
            for rec in records {
                if rec.seq <= acked {
                    continue;
                }
                acked = rec.seq;
                let jid = match JobId::parse(&rec.job_id) {
                    Ok(j) => j,
                    Err(_) => {
                        refused += 1;
                        continue;
                    }
                };
                let current = st
                    .jobs
                    .get(&jid)
                    .is_some_and(|j| j.accepts(rec.attempt, wid.as_str()));
                if !current {
                    refused += 1;
                    tracing::warn!(worker = %wid, job = %jid, attempt = rec.attempt, "refused a write from a stale attempt");
                    continue;
                }
                match rec.body {
                    Some(pb::record::Body::Log(l)) => logs.push(LogRow {
                        job_id: jid.to_string(),
                        attempt: rec.attempt,
                        line: l.line,
                        stream: u8::from(l.stream == "stderr"),
                        ts: l.ts,
                        text: l.text,
                    }),
                    Some(pb::record::Body::Metric(m)) => {
                        if self.observe_metric(&mut st, &jid, &m.json, m.step, &mut ops, &mut sends)
                            && metric_seen.insert(jid.clone())
                        {
                            metric_changed.push(jid.clone());
                        }
                        metrics.push(MetricRow {
                            job_id: jid.to_string(),
                            attempt: rec.attempt,
                            step: m.step,
                            ts: m.ts,
                            json: m.json,
                        });
                    }
                    Some(pb::record::Body::Started(_)) | None => {}
                    Some(pb::record::Body::Exited(e)) => {
                        // Rows queued so far belong before the attempt's end.
                        if !logs.is_empty() {
                            ops.push(Op::Logs(std::mem::take(&mut logs)));
                        }
                        if !metrics.is_empty() {
                            ops.push(Op::Metrics(std::mem::take(&mut metrics)));
                        }
                        let outcome = Outcome::parse(&e.outcome).unwrap_or(Outcome::Failed);
                        if outcome == Outcome::DiskFull {
                            // A worker on a full disk would take the job back at once
                            // and fail it again: it gets nothing new for a while.
                            if let Some(w) = st.workers.get_mut(wid) {
                                w.disk_full_until = Some(Instant::now() + DISK_FULL_PAUSE);
                            }
                            tracing::warn!(worker = %wid, job = %jid, "the worker's disk is full; no new jobs for it for {} s", DISK_FULL_PAUSE.as_secs());
                        }
                        let code = (outcome != Outcome::Signalled).then_some(e.exit_code);
                        let signal = (e.signal != 0).then_some(e.signal);
                        self.end_attempt(
                            &mut st,
                            &jid,
                            rec.attempt,
                            outcome,
                            code,
                            signal,
                            &e.message,
                            &mut ops,
                        );
                    }
                }
            }
            let had_logs = !logs.is_empty() || ops.iter().any(|o| matches!(o, Op::Logs(_)));
            if !logs.is_empty() {
                ops.push(Op::Logs(logs));
            }
            if !metrics.is_empty() {
                ops.push(Op::Metrics(metrics));
            }
            for jid in &metric_changed {
                if let Some(j) = st.jobs.get(jid) {
                    ops.push(Op::JobMetrics {
                        seq: j.seq,
                        final_metric: j.final_metric,
                        best_metric: j.best_metric,
                    });
                }
            }
            if let Some(w) = st.workers.get_mut(wid) {
                w.acked_seq = acked;
            }
            ops.push(Op::WorkerAcked {
                id: wid.to_string(),
                acked_seq: acked,
            });
            if refused > 0 {
                st.refused_stale += refused;
                ops.push(Op::AddCounter {
                    name: REFUSED_STALE.into(),
                    delta: refused as i64,
                });
            }
            self.dispatch(&mut st, &mut ops, &mut sends);
            (
                self.store.enqueue(ops),
                sends,
                pb::Ack {
                    seq: acked,
                    refused,
                },
                had_logs,
            )
        };
        self.finish(fut, sends).await?;
        if had_logs {
            self.log_generation.send_modify(|g| *g += 1);
        }
        Ok(ack)
    }

    /// Feeds a metric record to the job's final/best values and its sweep's
    /// search; returns whether it set them (then the caller persists them in
    /// the same batch as the record).
    #[allow(clippy::too_many_arguments)]
    fn observe_metric(
        &self,
        st: &mut State,
        jid: &JobId,
        json: &str,
        step: Option<i64>,
        ops: &mut Vec<Op>,
        sends: &mut Sends,
    ) -> bool {
        let Some(job) = st.jobs.get(jid) else {
            return false;
        };
        let (sid, tid) = (job.sweep.clone(), job.trial.clone());
        let Some(sweep) = st.sweeps.get_mut(&sid) else {
            return false;
        };
        let Some(metric) = sweep.spec.metric.as_ref() else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return false;
        };
        let Some(x) = v
            .get(&metric.name)
            .and_then(|x| x.as_f64())
            .filter(|x| x.is_finite())
        else {
            // A NaN or infinity arrives as null (JSON has no such numbers).
            if v.get(&metric.name).is_some_and(|x| x.is_null()) {
                if let Some(job) = st.jobs.get_mut(jid) {
                    job.metric_not_finite = true;
                }
            }
            return false;
        };
        let goal = metric.goal;
        // Early stopping decides on every reported value. The reporting job is
        // running (records of other attempts were refused), so its trial is live.
        let decision = sweep.search.as_mut().and_then(|search| {
            let step = step.unwrap_or_else(|| search.next_step(&tid, jid));
            let t = search.record(&tid, jid, step, x)?;
            search.judge(t).map(|d| (t, d))
        });
        if let Some(job) = st.jobs.get_mut(jid) {
            job.final_metric = Some(x);
            if job.best_metric.is_none_or(|b| goal.better(x, b)) {
                job.best_metric = Some(x);
            }
        }
        if let Some((t, d)) = decision {
            tracing::info!(sweep = %sid, trial = %tid, rule = ?d.rule, band = d.band, value = d.value, "early stopping prunes the trial");
            self.prune_trial(st, &sid, t, ops, sends);
        }
        true
    }

    /// Stops every job of a trial that early stopping pruned: queued ones
    /// become pruned now, running ones are asked to stop (SIGTERM, so they
    /// checkpoint) and become pruned when their attempt ends.
    fn prune_trial(
        &self,
        st: &mut State,
        sid: &SweepId,
        t: usize,
        ops: &mut Vec<Op>,
        sends: &mut Sends,
    ) {
        let jobs: Vec<JobId> = st
            .sweeps
            .get(sid)
            .and_then(|s| s.search.as_ref())
            .and_then(|s| s.trials.get(t))
            .map(|t| t.jobs.clone())
            .unwrap_or_default();
        for jid in jobs {
            self.stop_job_locked(st, &jid, StopRequest::Prune, ops, sends);
        }
    }

    /// The search's view of a sweep's trials, in index order.
    fn trial_data(st: &State, search: &SweepSearch) -> Vec<TrialData> {
        search
            .trials
            .iter()
            .map(|t| {
                let mut seed_best = Vec::new();
                let mut seed_latest = Vec::new();
                let mut all_done = true;
                let mut any_usable = false;
                for j in &t.jobs {
                    let Some(m) = st.jobs.get(j) else { continue };
                    if !m.state.is_terminal() {
                        all_done = false;
                    }
                    if matches!(m.state, JobState::Succeeded | JobState::Pruned) {
                        any_usable = true;
                    }
                    if let (Some(b), Some(l)) = (m.best_metric, m.final_metric) {
                        seed_best.push(b);
                        seed_latest.push(l);
                    }
                }
                TrialData {
                    x: t.x.clone().unwrap_or_default(),
                    status: if !all_done {
                        TrialStatus::Running
                    } else if any_usable {
                        TrialStatus::Finished
                    } else {
                        TrialStatus::Failed
                    },
                    seed_best,
                    seed_latest,
                }
            })
            .collect()
    }

    /// Proposes the next trial of an adaptive sweep and queues its jobs (all
    /// seeds together, so they run side by side). False when it may not.
    fn propose_trial(&self, st: &mut State, sid: &SweepId, ops: &mut Vec<Op>) -> bool {
        let (params, index) = {
            let Some(s) = st.sweeps.get(sid) else {
                return false;
            };
            let Some(search) = s.search.as_ref().filter(|x| x.can_propose()) else {
                return false;
            };
            if s.proposing {
                return false;
            }
            if search.learns() {
                // Fitting a model takes milliseconds to tens of them: done on a
                // blocking thread from a snapshot, applied under the lock after
                // (heartbeats and records are not held up meanwhile).
                if let (Some(core), Ok(rt)) =
                    (self.me.upgrade(), tokio::runtime::Handle::try_current())
                {
                    let proposal = search.proposal(Self::trial_data(st, search));
                    if let Some(s) = st.sweeps.get_mut(sid) {
                        s.proposing = true;
                    }
                    self.proposals
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let sid = sid.clone();
                    rt.spawn(async move {
                        let t0 = std::time::Instant::now();
                        let index = proposal.index;
                        let gate = core.proposal_gate.clone();
                        let params = tokio::task::spawn_blocking(move || {
                            gate.wait_open();
                            proposal.run()
                        })
                        .await;
                        if params.is_err() {
                            // A fit that panics would panic again at once: not in a hot loop.
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        tracing::debug!(sweep = %sid, trial = index, ms = t0.elapsed().as_secs_f64() * 1e3, "proposed a trial");
                        core.apply_proposal(&sid, index, params.ok()).await;
                        core.proposals
                            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    });
                    return false;
                }
            }
            let data = if search.learns() {
                Self::trial_data(st, search)
            } else {
                Vec::new()
            };
            (search.propose(&data), search.trials.len())
        };
        self.add_proposed_trial(st, sid, index, params, ops)
    }

    /// Applies a proposal computed off the lock: the trial is added if the
    /// search still wants trial `index` (not cancelled, paused or closed
    /// meanwhile), then the sweep is dispatched.
    async fn apply_proposal(&self, sid: &SweepId, index: u64, params: Option<serde_json::Value>) {
        let (fut, sends) = {
            let mut st = self.lock();
            let mut ops = Vec::new();
            let mut sends = Vec::new();
            if let Some(s) = st.sweeps.get_mut(sid) {
                s.proposing = false;
                let wanted = s.state == SweepState::Active
                    && s.search
                        .as_ref()
                        .is_some_and(|x| x.can_propose() && x.trials.len() as u64 == index);
                match params {
                    Some(p) if wanted => {
                        self.add_proposed_trial(&mut st, sid, index as usize, p, &mut ops);
                    }
                    Some(_) => {}
                    None => {
                        tracing::error!(sweep = %sid, trial = index, "the proposal failed; it is tried again")
                    }
                }
            }
            self.dispatch(&mut st, &mut ops, &mut sends);
            (self.store.enqueue(ops), sends)
        };
        if let Err(e) = self.finish(fut, sends).await {
            tracing::error!(sweep = %sid, error = %e, "storing a proposed trial failed");
        }
    }

    /// For tests: proposals wait, before fitting, until the guard drops.
    #[doc(hidden)]
    pub fn hold_proposals(&self) -> crate::gate::Hold {
        self.proposal_gate.hold()
    }

    /// For tests: a submit's batch waits, before it is built, until the guard drops.
    #[doc(hidden)]
    pub fn hold_builds(&self) -> crate::gate::Hold {
        self.build_gate.hold()
    }

    /// For tests: submits waiting at the build gate.
    #[doc(hidden)]
    pub fn builds_held(&self) -> usize {
        self.build_gate.waiting()
    }

    /// Resolves once no proposal is being computed or applied (tests).
    #[doc(hidden)]
    pub async fn proposals_settled(&self) {
        while self.proposals.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Adds trial `index` with `params` and its jobs (one per seed), queued.
    fn add_proposed_trial(
        &self,
        st: &mut State,
        sid: &SweepId,
        index: usize,
        params: serde_json::Value,
        ops: &mut Vec<Op>,
    ) -> bool {
        let Some(seeds) = st.sweeps.get(sid).map(|s| s.spec.liandan.seeds.clone()) else {
            return false;
        };
        let (trial, jobs) = sweep::adaptive_trial(sid, index, params, &seeds);
        if jobs.iter().any(|j| st.jobs.contains_key(&j.id)) {
            tracing::error!(sweep = %sid, trial = %trial.id, "a proposed job's id exists already (a hash collision); the search stops");
            if let Some(search) = st.sweeps.get_mut(sid).and_then(|s| s.search.as_mut()) {
                search.closed = true;
            }
            return false;
        }
        let pj: Arc<str> = trial.params.to_string().into();
        ops.push(Op::InsertTrial {
            id: trial.id.to_string(),
            sweep_id: sid.to_string(),
            idx: index as i64,
            params_json: pj.to_string(),
        });
        let first_seq = st.next_seq;
        let Some(s) = st.sweeps.get_mut(sid) else {
            return false;
        };
        let base = s.jobs.len() as i64;
        let floor = s.attempt_floor;
        let mut ids = Vec::with_capacity(jobs.len());
        for (k, j) in jobs.iter().enumerate() {
            let mut mem = JobMem::queued(
                first_seq + k as i64,
                sid.clone(),
                trial.id.clone(),
                base + k as i64,
                j.seed,
                pj.clone(),
            );
            mem.attempt = floor;
            st.jobs.insert(j.id.clone(), mem);
            ids.push(j.id.clone());
        }
        st.next_seq += jobs.len() as i64;
        ops.push(Op::InsertJobs(NewJobs {
            sweep_id: sid.clone(),
            first_seq,
            first_ord: base,
            first_attempt: floor,
            jobs: jobs
                .iter()
                .map(|j| (j.id.clone(), trial.id.clone(), j.seed))
                .collect(),
        }));
        s.trials += 1;
        s.counts[state_index(JobState::Queued)] += ids.len() as u64;
        s.jobs.extend(ids.iter().cloned());
        s.ready.extend(ids.iter().cloned());
        if let Some(search) = s.search.as_mut() {
            search.add_trial(trial.id.clone(), &trial.params, ids);
        }
        tracing::info!(sweep = %sid, trial = %trial.id, index, params = %trial.params, "adaptive search proposed a trial");
        true
    }

    /// After a job of an adaptive sweep ended: whether its trial, now finished,
    /// reached metric.target (then the search proposes nothing more).
    fn check_target(&self, st: &mut State, jid: &JobId) {
        let Some(job) = st.jobs.get(jid) else { return };
        let (sid, tid) = (job.sweep.clone(), job.trial.clone());
        let Some(s) = st.sweeps.get(&sid) else { return };
        let Some(target) = s.spec.metric.as_ref().and_then(|m| m.target) else {
            return;
        };
        let Some(search) = s.search.as_ref() else {
            return;
        };
        let Some(t) = search.trial_index(&tid) else {
            return;
        };
        if reached_target(&st.jobs, search, t, target) {
            tracing::info!(sweep = %sid, trial = %tid, target, "the trial reached metric.target; no more trials are proposed");
            if let Some(search) = st.sweeps.get_mut(&sid).and_then(|s| s.search.as_mut()) {
                search.closed = true;
            }
        }
    }

    /// Ends a job's current attempt as lost (its worker is gone or forgot it).
    fn lose_attempt(&self, st: &mut State, jid: &JobId, why: &str, ops: &mut Vec<Op>) {
        let attempt = st.jobs.get(jid).map(|j| j.attempt).unwrap_or(0);
        self.end_attempt(st, jid, attempt, Outcome::Lost, None, None, why, ops);
    }

    /// Ends the current attempt of a job: records how, frees its resources and
    /// moves the job on through the transition function.
    #[allow(clippy::too_many_arguments)]
    fn end_attempt(
        &self,
        st: &mut State,
        jid: &JobId,
        attempt: u64,
        outcome: Outcome,
        code: Option<i32>,
        signal: Option<i32>,
        message: &str,
        ops: &mut Vec<Op>,
    ) {
        let Some(job) = st.jobs.get_mut(jid) else {
            return;
        };
        if job.state != JobState::Running || job.attempt != attempt {
            return;
        }
        // A job whose worker dies under it attempt after attempt is what
        // kills it (`kill -9 $PPID`): from max_worker_deaths in a row on,
        // each death is its failure. A lost lease neither counts nor clears.
        let mut message = std::borrow::Cow::Borrowed(message);
        let outcome = match outcome {
            Outcome::Interrupted => {
                job.worker_deaths += 1;
                let max = self.cfg.max_worker_deaths;
                if max > 0 && job.worker_deaths >= max {
                    message = format!(
                        "{message}; its worker died during {} attempts of this job in a row, so the job is taken to be what kills it (max_worker_deaths = {max}): counted as a failure",
                        job.worker_deaths
                    )
                    .into();
                    Outcome::WorkerDied
                } else {
                    outcome
                }
            }
            Outcome::Lost => outcome,
            _ => {
                job.worker_deaths = 0;
                outcome
            }
        };
        // A sweep that requires its metric fails a job that exited 0 without
        // ever reporting it, rather than count a result with no value.
        let required = st
            .sweeps
            .get(&job.sweep)
            .filter(|s| s.spec.liandan.require_metric)
            .and_then(|s| s.spec.metric.as_ref());
        let outcome = match required {
            Some(m) if outcome == Outcome::Succeeded && job.final_metric.is_none() => {
                message = if job.metric_not_finite {
                    format!(
                        "exited 0 but reported the metric {:?} only as NaN or infinity (did the training diverge?), and the sweep requires a value (liandan.require_metric)",
                        m.name
                    )
                } else {
                    format!(
                        "exited 0 but never reported the metric {:?}, which the sweep requires (liandan.require_metric): check liandan.metric_pattern against what the program prints, or write the metric to LIANDAN_METRICS_FILE",
                        m.name
                    )
                }
                .into();
                Outcome::NoMetric
            }
            _ => outcome,
        };
        let retries = st
            .sweeps
            .get(&job.sweep)
            .map(|s| s.spec.liandan.retries)
            .unwrap_or(0);
        let retries_left = job.retries_used < retries;
        let Some(next) = job.state.on(JobEvent::Ended {
            outcome,
            stop: job.stop,
            retries_left,
        }) else {
            return;
        };
        ops.push(Op::EndAttempt {
            job_id: jid.to_string(),
            attempt,
            state: outcome.as_str().into(),
            ended_at: now_secs(),
            exit_code: code,
            signal,
            message: message.chars().take(4096).collect(),
        });
        let worker = job.worker.take();
        let (cpus, gpus) = (std::mem::take(&mut job.cpus), std::mem::take(&mut job.gpus));
        job.state = next;
        let mut delay = None;
        if next == JobState::Queued && outcome.counts_as_failure() {
            job.retries_used += 1;
            let backoff = (self.cfg.retry_backoff_secs * 2f64.powi(job.retries_used as i32 - 1))
                .min(self.cfg.retry_backoff_max_secs);
            delay = Some(secs(backoff));
        }
        if next == JobState::Succeeded {
            // Invariant 3: a result is recorded at most once per job.
            job.result_recorded = true;
        }
        ops.push(Op::UpdateJob(job.update()));
        let sweep_id = job.sweep.clone();
        if let Some(s) = st.sweeps.get_mut(&sweep_id) {
            s.running = s.running.saturating_sub(1);
            s.moved(JobState::Running, next);
            if next == JobState::Succeeded {
                if job.final_metric.is_none() && s.spec.metric.is_some() {
                    s.silent += 1;
                }
                s.outcomes.record(
                    &job.trial,
                    &job.params_json,
                    job.seed,
                    job.final_metric,
                    job.best_metric,
                );
            }
        }
        if let Some(w) = worker.as_ref().and_then(|w| st.workers.get_mut(w)) {
            w.running.remove(jid);
            w.free_cpus += cpus;
            w.free_gpus.extend(gpus);
        }
        if next == JobState::Queued {
            match delay {
                Some(d) => st.delayed.push(Reverse((Instant::now() + d, jid.clone()))),
                None => {
                    if let Some(s) = st.sweeps.get_mut(&sweep_id) {
                        // A requeued job goes first: it may already have progress.
                        s.ready.push_front(jid.clone());
                    }
                }
            }
        }
        if next.is_terminal() {
            self.check_target(st, jid);
        }
        if outcome == Outcome::Succeeded {
            tracing::debug!(job = %jid, attempt, state = next.as_str(), "attempt succeeded");
        } else {
            tracing::info!(job = %jid, attempt, outcome = outcome.as_str(), state = next.as_str(), "attempt ended");
        }
    }

    /// Forgets workers gone for `worker_expiry_days` that hold nothing and
    /// are not drained (the registrations of machines that never came back).
    fn expire_workers(&self, st: &mut State, ops: &mut Vec<Op>) {
        let days = self.cfg.worker_expiry_days;
        if days <= 0.0 {
            return;
        }
        // A check measured in days need not run on every 200 ms tick.
        let every = Duration::from_secs_f64((days * 86_400.0 / 2.0).min(60.0));
        let now = Instant::now();
        if st
            .last_expiry
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        st.last_expiry = Some(now);
        let before = now_secs() - days * 86_400.0;
        let gone: Vec<WorkerId> = st
            .workers
            .iter()
            // A drained one stays: the drain must still hold when it comes back.
            .filter(|(_, w)| {
                w.session.is_none() && w.running.is_empty() && !w.draining && w.last_seen < before
            })
            .map(|(k, _)| k.clone())
            .collect();
        for wid in gone {
            tracing::info!(worker = %wid, days, "forgetting a worker not seen for worker_expiry_days");
            st.workers.remove(&wid);
            ops.push(Op::DeleteWorker {
                id: wid.to_string(),
            });
        }
    }

    /// Expires leases, releases delayed retries and dispatches. Called by a
    /// timer every [`TICK`]; time comes from tokio so tests can pause it.
    ///
    /// A lease measures how long the coordinator has been running without
    /// hearing from a worker. When ticks stop for longer than [`STALL`], the
    /// coordinator itself did not run (SIGSTOP, a VM or swap stall, a suspended
    /// laptop): no worker could renew its lease meanwhile, and the heartbeats
    /// sent during the stall are still queued. So every lease moves on by the
    /// stall instead of expiring at once and restarting every running job of
    /// the cluster (the chaos suite found that: seed 1795805961348097836).
    pub async fn tick(&self) -> Result<(), CoreError> {
        let (fut, sends) = {
            let mut st = self.lock();
            let now = Instant::now();
            if let Some(prev) = st.last_tick {
                let gap = now.saturating_duration_since(prev);
                if gap > STALL {
                    let stalled = gap - TICK;
                    for w in st.workers.values_mut() {
                        w.lease_deadline += stalled;
                    }
                    tracing::warn!(
                        secs = gap.as_secs_f64(),
                        "the coordinator did not run for a while (stopped or stalled); every lease is extended by that time, since no worker could renew it"
                    );
                }
            }
            st.last_tick = Some(now);
            let mut ops = Vec::new();
            self.expire_workers(&mut st, &mut ops);
            let expired: Vec<WorkerId> = st
                .workers
                .iter()
                .filter(|(_, w)| {
                    w.lease_deadline <= now && (!w.running.is_empty() || w.session.is_some())
                })
                .map(|(k, _)| k.clone())
                .collect();
            for wid in expired {
                let running: Vec<JobId> = st
                    .workers
                    .get(&wid)
                    .map(|w| w.running.iter().cloned().collect())
                    .unwrap_or_default();
                if !running.is_empty() {
                    tracing::warn!(worker = %wid, jobs = running.len(), "lease expired; requeueing its attempts");
                }
                for jid in running {
                    self.lose_attempt(
                        &mut st,
                        &jid,
                        "the worker stopped heartbeating (lease expired)",
                        &mut ops,
                    );
                }
                if let Some(w) = st.workers.get_mut(&wid) {
                    // A silent stream is as good as gone; the worker reconnects with a fresh hello.
                    w.session = None;
                }
            }
            while let Some(Reverse((at, _))) = st.delayed.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((_, jid))) = st.delayed.pop() else {
                    break;
                };
                let sweep = st
                    .jobs
                    .get(&jid)
                    .filter(|j| j.state == JobState::Queued)
                    .map(|j| j.sweep.clone());
                if let Some(s) = sweep.and_then(|s| st.sweeps.get_mut(&s)) {
                    s.ready.push_back(jid);
                }
            }
            let mut sends = Vec::new();
            self.dispatch(&mut st, &mut ops, &mut sends);
            if ops.is_empty() {
                return Ok(());
            }
            (self.store.enqueue(ops), sends)
        };
        self.finish(fut, sends).await
    }

    /// Matches ready jobs to free capacity: whole GPUs on one worker, CPU slots
    /// otherwise, required labels; fair between sweeps (fewest running first,
    /// then priority), within each sweep's concurrency cap.
    fn dispatch(&self, st: &mut State, ops: &mut Vec<Op>, sends: &mut Sends) {
        let workers: Vec<WorkerId> = st
            .workers
            .iter()
            .filter(|(_, w)| {
                w.session.is_some()
                    && w.known
                    && !w.draining
                    && !w.stopping
                    && w.disk_full_until.is_none_or(|t| t <= Instant::now())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for wid in workers {
            while let Some(w) = st.workers.get(&wid) {
                if w.free_cpus == 0 && w.free_gpus.is_empty() {
                    break;
                }
                // max_running_jobs_per_user: a user at the quota waits.
                let quota = self.cfg.max_running_jobs_per_user;
                let mut running_by_owner: HashMap<&str, u32> = HashMap::new();
                if quota > 0 {
                    for s in st.sweeps.values().filter(|s| !s.owner.is_empty()) {
                        *running_by_owner.entry(s.owner.as_str()).or_default() += s.running;
                    }
                }
                let mut candidates: Vec<(i32, u32, f64, SweepId)> = st
                    .sweeps
                    .iter()
                    .filter(|(_, s)| {
                        s.state == SweepState::Active
                            && (!s.ready.is_empty()
                                || s.search.as_ref().is_some_and(|x| x.can_propose()))
                            && s.spec.liandan.concurrency.is_none_or(|c| s.running < c)
                            && running_by_owner
                                .get(s.owner.as_str())
                                .is_none_or(|r| *r < quota)
                    })
                    .map(|(k, s)| (-s.spec.liandan.priority, s.running, s.created_at, k.clone()))
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                candidates
                    .sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2)));
                let mut assigned = false;
                for (_, _, _, sid) in candidates {
                    let (need_gpus, need_cpus, labels) = {
                        let r = &st.sweeps[&sid].spec.liandan.resources;
                        (
                            r.gpus,
                            if r.gpus == 0 { r.cpus } else { 0 },
                            r.labels.clone(),
                        )
                    };
                    let fits = st.workers.get(&wid).is_some_and(|w| {
                        w.free_gpus.len() as u32 >= need_gpus
                            && w.free_cpus >= need_cpus
                            && labels.iter().all(|l| w.resources.labels.contains(l))
                    });
                    if !fits {
                        continue;
                    }
                    // Pop the next job that is still queued (cancelled ones are skipped
                    // lazily); an adaptive sweep with nothing queued proposes a trial now,
                    // when a slot is free, so it learns from every result so far.
                    let mut next = None;
                    for _ in 0..2 {
                        if let Some(s) = st.sweeps.get_mut(&sid) {
                            while let Some(j) = s.ready.pop_front() {
                                if st.jobs.get(&j).is_some_and(|m| m.state == JobState::Queued) {
                                    next = Some(j);
                                    break;
                                }
                            }
                        }
                        if next.is_some() || !self.propose_trial(st, &sid, ops) {
                            break;
                        }
                    }
                    let Some(jid) = next else { continue };
                    self.assign(st, &sid, &jid, &wid, need_gpus, need_cpus, ops, sends);
                    assigned = true;
                    break;
                }
                if !assigned {
                    break;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn assign(
        &self,
        st: &mut State,
        sid: &SweepId,
        jid: &JobId,
        wid: &WorkerId,
        gpus: u32,
        cpus: u32,
        ops: &mut Vec<Op>,
        sends: &mut Sends,
    ) {
        let Some(w) = st.workers.get_mut(wid) else {
            return;
        };
        let taken: Vec<String> = w.free_gpus.drain(..gpus as usize).collect();
        w.free_cpus -= cpus;
        w.running.insert(jid.clone());
        let tx = w.session.as_ref().map(|s| s.tx.clone());
        let Some(job) = st.jobs.get_mut(jid) else {
            return;
        };
        let Some(next) = job.state.on(JobEvent::Assign) else {
            return;
        };
        job.state = next;
        job.attempt += 1;
        job.worker = Some(wid.clone());
        job.gpus = taken.clone();
        job.cpus = cpus;
        job.assigned_at = Some(Instant::now());
        ops.push(Op::InsertAttempt {
            job_id: jid.to_string(),
            attempt: job.attempt,
            worker_id: wid.to_string(),
            started_at: now_secs(),
        });
        ops.push(Op::UpdateJob(job.update()));
        let (attempt, seed, params_json, trial) = (
            job.attempt,
            job.seed,
            job.params_json.to_string(),
            job.trial.to_string(),
        );
        let resume_from = st
            .checkpoints
            .get(jid)
            .and_then(|v| v.iter().max_by_key(|c| c.step))
            .map(checkpoint_info);
        let Some(s) = st.sweeps.get_mut(sid) else {
            return;
        };
        s.running += 1;
        s.moved(JobState::Queued, JobState::Running);
        if let Some(tx) = tx {
            sends.push((
                tx,
                pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::Assign(pb::Assignment {
                        job_id: jid.to_string(),
                        attempt,
                        sweep_id: sid.to_string(),
                        trial_id: trial,
                        seed,
                        params_json,
                        spec_json: s.run_spec_json.to_string(),
                        gpu_uuids: taken,
                        resume_from,
                        cpu_slots: cpus,
                    })),
                },
            ));
        }
    }

    // ------------------------------------------------------- checkpoints

    /// Whether `worker` holds `attempt`, the current attempt of a running job.
    pub fn holds(&self, jid: &JobId, attempt: u64, worker: &str) -> bool {
        self.lock()
            .jobs
            .get(jid)
            .is_some_and(|j| j.accepts(attempt, worker))
    }

    /// Counts a refused write from a stale attempt (durably, like every counter).
    pub async fn refuse_stale(&self, what: &str, jid: &str, attempt: u64, worker: &str) {
        let fut = {
            let mut st = self.lock();
            st.refused_stale += 1;
            tracing::warn!(
                job = jid,
                attempt,
                worker,
                "refused a {what} from a stale attempt"
            );
            self.store.enqueue(vec![Op::AddCounter {
                name: REFUSED_STALE.into(),
                delta: 1,
            }])
        };
        let _ = fut.await;
    }

    /// Records a durable checkpoint file that `worker` uploaded and returns
    /// the files no longer kept.
    pub async fn add_checkpoint(
        &self,
        row: CheckpointRow,
        worker: &str,
    ) -> Result<Vec<String>, CoreError> {
        let jid =
            JobId::parse(&row.job_id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let row_attempt = row.attempt;
        let (fut, removed) = {
            let mut st = self.lock();
            let current = st
                .jobs
                .get(&jid)
                .is_some_and(|j| j.accepts(row.attempt, worker));
            if !current {
                st.refused_stale += 1;
                tracing::warn!(job = %jid, attempt = row.attempt, "refused a checkpoint from a stale attempt");
                (
                    self.store.enqueue(vec![Op::AddCounter {
                        name: REFUSED_STALE.into(),
                        delta: 1,
                    }]),
                    None,
                )
            } else {
                let (keep_last, keep_best, goal) = {
                    let j = &st.jobs[&jid];
                    let s = &st.sweeps[&j.sweep];
                    (
                        s.spec
                            .liandan
                            .checkpoint
                            .keep_last
                            .unwrap_or(self.cfg.checkpoint_keep_last)
                            as usize,
                        s.spec.liandan.checkpoint.keep_best,
                        s.spec.metric.as_ref().map(|m| m.goal),
                    )
                };
                let list = st.checkpoints.entry(jid.clone()).or_default();
                list.retain(|c| c.step != row.step);
                list.push(row.clone());
                list.sort_by_key(|c| c.step);
                let mut keep: HashSet<i64> =
                    list.iter().rev().take(keep_last).map(|c| c.step).collect();
                if keep_best {
                    if let Some(goal) = goal {
                        let best = list.iter().filter(|c| c.metric.is_some()).fold(
                            None::<&CheckpointRow>,
                            |b, c| match b {
                                Some(b)
                                    if !goal.better(
                                        c.metric.unwrap_or(f64::NAN),
                                        b.metric.unwrap_or(f64::NAN),
                                    ) =>
                                {
                                    Some(b)
                                }
                                _ => Some(c),
                            },
                        );
                        if let Some(b) = best {
                            keep.insert(b.step);
                        }
                    }
                }
                let mut ops = vec![Op::InsertCheckpoint(row)];
                let mut removed = Vec::new();
                list.retain(|c| {
                    if keep.contains(&c.step) {
                        true
                    } else {
                        ops.push(Op::DeleteCheckpoint {
                            job_id: c.job_id.clone(),
                            step: c.step,
                        });
                        removed.push(c.file.clone());
                        false
                    }
                });
                (self.store.enqueue(ops), Some(removed))
            }
        };
        fut.await?;
        removed.ok_or_else(|| {
            CoreError::FailedPrecondition(format!(
                "attempt {} is not the current attempt of {jid}; checkpoint refused",
                row_attempt
            ))
        })
    }

    pub fn checkpoints(&self, id: &str) -> Result<Vec<CheckpointRow>, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        if !st.jobs.contains_key(&jid) {
            return Err(CoreError::NotFound {
                kind: "job",
                id: jid.to_string(),
                hint: "jobs SWEEP",
            });
        }
        Ok(st.checkpoints.get(&jid).cloned().unwrap_or_default())
    }

    /// Every stored checkpoint file the database knows (paths relative to
    /// the checkpoint root), for orphan collection.
    pub fn checkpoint_files(&self) -> HashSet<String> {
        let st = self.lock();
        st.checkpoints
            .values()
            .flatten()
            .map(|c| c.file.clone())
            .collect()
    }

    /// Forgets a checkpoint whose file failed verification, so it is never used.
    pub async fn drop_checkpoint(&self, job_id: &str, step: i64) -> Result<(), CoreError> {
        let fut = {
            let mut st = self.lock();
            if let Ok(jid) = JobId::parse(job_id) {
                if let Some(l) = st.checkpoints.get_mut(&jid) {
                    l.retain(|c| c.step != step);
                }
            }
            self.store.enqueue(vec![
                Op::DeleteCheckpoint {
                    job_id: job_id.to_string(),
                    step,
                },
                Op::AddCounter {
                    name: "corrupt_checkpoints".into(),
                    delta: 1,
                },
            ])
        };
        fut.await?;
        Ok(())
    }
}

fn cancel_msg(id: &JobId, attempt: u64, reason: &str) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Cancel(pb::Cancel {
            job_id: id.to_string(),
            attempt,
            reason: reason.into(),
        })),
    }
}

pub(crate) fn checkpoint_info(c: &CheckpointRow) -> pb::Checkpoint {
    pb::Checkpoint {
        job_id: c.job_id.clone(),
        attempt: c.attempt,
        step: c.step,
        size: c.size,
        blake3: c.blake3.clone(),
        metric: c.metric,
        created_at: c.created_at,
    }
}

fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Who a hello is from. With a client certificate: the id the certificate
/// binds (the handler checked the hello names it). Without one (the join
/// token): an id the coordinator issued, proven by its secret; a worker that
/// has none yet (its first hello) is issued a new id and secret, returned
/// here as (secret, hash). An id once used with a certificate is refused
/// without it. Ids stored before secrets existed get one on their next hello.
fn identify(
    st: &State,
    claimed: &str,
    secret: &str,
    cert: Option<&WorkerId>,
) -> Result<(WorkerId, Option<(String, String)>), CoreError> {
    if let Some(id) = cert {
        return Ok((id.clone(), None));
    }
    let issue = || {
        let secret = liandan_common::auth::generate_token();
        let hash = secret_hash(&secret);
        let id = WorkerId::from_suffix(&liandan_common::ids::short_hash(&[hash.as_bytes()], 6));
        (id, Some((secret, hash)))
    };
    let Ok(claimed) = WorkerId::parse(claimed) else {
        return Ok(issue());
    };
    let Some(w) = st.workers.get(&claimed) else {
        // Unknown here (a new worker, or one whose coordinator lost its data).
        return Ok(issue());
    };
    if w.cert_bound {
        return Err(CoreError::PermissionDenied(format!(
            "worker id {claimed} is bound to a client certificate; only that certificate can use it"
        )));
    }
    match &w.secret_hash {
        Some(h)
            if !secret.is_empty() && liandan_common::auth::token_eq(h, &secret_hash(secret)) =>
        {
            Ok((claimed, None))
        }
        Some(_) => Err(CoreError::PermissionDenied(format!(
            "wrong or missing secret for worker {claimed}; a worker presents the secret the coordinator issued with its id (kept in its state dir)"
        ))),
        None => {
            // Registered before issued identities: it gets its secret now.
            let secret = liandan_common::auth::generate_token();
            let hash = secret_hash(&secret);
            tracing::warn!(worker = %claimed, "issuing a secret to a worker registered before worker secrets");
            Ok((claimed, Some((secret, hash))))
        }
    }
}

fn worker_upsert(id: &WorkerId, w: &WorkerMem) -> Op {
    Op::UpsertWorker {
        id: id.to_string(),
        hostname: w.hostname.clone(),
        resources_json: resources_to_json(&w.resources),
        acked_seq: w.acked_seq,
        draining: w.draining,
        last_seen: w.last_seen,
        cert_bound: w.cert_bound,
        secret_hash: w.secret_hash.clone(),
    }
}

fn resources_to_json(r: &pb::Resources) -> String {
    serde_json::json!({
        "cpu_slots": r.cpu_slots,
        "memory_bytes": r.memory_bytes,
        "labels": r.labels,
        "gpus": r.gpus.iter().map(|g| serde_json::json!({"index": g.index, "uuid": g.uuid, "name": g.name, "memory_bytes": g.memory_bytes})).collect::<Vec<_>>(),
    })
    .to_string()
}

fn resources_from_json(s: &str) -> pb::Resources {
    let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
    pb::Resources {
        cpu_slots: v["cpu_slots"].as_u64().unwrap_or(0) as u32,
        memory_bytes: v["memory_bytes"].as_u64().unwrap_or(0),
        labels: v["labels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        gpus: v["gpus"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|g| pb::Gpu {
                        index: g["index"].as_u64().unwrap_or(0) as u32,
                        uuid: g["uuid"].as_str().unwrap_or_default().into(),
                        name: g["name"].as_str().unwrap_or_default().into(),
                        memory_bytes: g["memory_bytes"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn job_info(id: &JobId, m: &JobMem) -> pb::Job {
    pb::Job {
        id: id.to_string(),
        sweep_id: m.sweep.to_string(),
        trial_id: m.trial.to_string(),
        seed: m.seed,
        state: m.state.as_str().into(),
        attempt: m.attempt,
        retries_used: m.retries_used as u64,
        params_json: m.params_json.to_string(),
        attempts: Vec::new(),
        final_metric: m.final_metric,
        best_metric: m.best_metric,
        worker_id: m.worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
        last_attempt: None,
    }
}

/// Bytes a page keeps free per job with an attempt for its `last_attempt` (filled in
/// after the page is cut, from the store).
const LAST_ATTEMPT_BYTES: usize = 320;

/// Bytes of an attempt's message a listing carries.
const LISTED_MESSAGE_BYTES: usize = 200;

/// An `attempts` row (`attempt, worker_id, state, started_at, ended_at,
/// exit_code, signal, message`) as the wire's Attempt.
fn attempt_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<pb::Attempt> {
    Ok(pb::Attempt {
        attempt: r.get::<_, i64>(0)? as u64,
        worker_id: r.get(1)?,
        state: r.get(2)?,
        started_at: r.get(3)?,
        ended_at: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
        exit_code: r.get::<_, Option<i32>>(5)?.unwrap_or(0),
        signal: r.get::<_, Option<i32>>(6)?.unwrap_or(0),
        message: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
    })
}

fn worker_info(id: &WorkerId, w: &WorkerMem) -> pb::Worker {
    let mut running: Vec<String> = w.running.iter().map(|j| j.to_string()).collect();
    running.sort();
    pb::Worker {
        id: id.to_string(),
        hostname: w.hostname.clone(),
        connected: w.session.is_some(),
        draining: w.draining,
        resources: Some(w.resources.clone()),
        running_jobs: running,
        last_seen: w.last_seen,
        free_cpu_slots: w.free_cpus,
        free_gpus: w.free_gpus.len() as u32,
        disk: w.disk,
    }
}

/// A sweep as submit inserts it: its batch, its jobs and its memory.
struct Built {
    ops: Vec<Op>,
    jobs: Vec<(JobId, JobMem)>,
    sweep: SweepMem,
}

/// Builds a new sweep's batch and memory from its expansion (no lock held).
#[allow(clippy::too_many_arguments)]
fn build_sweep(
    spec: Arc<SweepSpec>,
    sweep_id: SweepId,
    name: String,
    owner: String,
    spec_json: String,
    spec_hash: String,
    expansion: sweep::Expansion,
    first_seq: i64,
    floor: u64,
) -> Built {
    let created_at = now_secs();
    let mut ops = Vec::with_capacity(expansion.trials.len() + 2);
    ops.push(Op::InsertSweep {
        id: sweep_id.to_string(),
        name: name.clone(),
        spec_json: spec_json.clone(),
        spec_hash: spec_hash.clone(),
        method: spec.method.as_str().into(),
        algorithm: liandan_common::rng::ALGORITHM.into(),
        created_at,
        owner: owner.clone(),
    });
    let mut params_by_trial = HashMap::new();
    for t in &expansion.trials {
        let pj: Arc<str> = t.params.to_string().into();
        ops.push(Op::InsertTrial {
            id: t.id.to_string(),
            sweep_id: sweep_id.to_string(),
            idx: t.index as i64,
            params_json: pj.to_string(),
        });
        params_by_trial.insert(t.id.clone(), pj);
    }
    let mut jobs = Vec::with_capacity(expansion.jobs.len());
    let mut job_ids = Vec::with_capacity(expansion.jobs.len());
    for (ord, j) in expansion.jobs.iter().enumerate() {
        let params = params_by_trial
            .get(&j.trial)
            .cloned()
            .unwrap_or_else(|| "{}".into());
        let mut mem = JobMem::queued(
            first_seq + ord as i64,
            sweep_id.clone(),
            j.trial.clone(),
            ord as i64,
            j.seed,
            params,
        );
        mem.attempt = floor;
        jobs.push((j.id.clone(), mem));
        job_ids.push(j.id.clone());
    }
    ops.push(Op::InsertJobs(NewJobs {
        sweep_id: sweep_id.clone(),
        first_seq,
        first_ord: 0,
        first_attempt: floor,
        jobs: expansion
            .jobs
            .iter()
            .map(|j| (j.id.clone(), j.trial.clone(), j.seed))
            .collect(),
    }));
    let mut search = SweepSearch::for_spec(&spec);
    if let Some(search) = search.as_mut() {
        let mut by_trial: HashMap<&TrialId, Vec<JobId>> = HashMap::new();
        for j in &expansion.jobs {
            by_trial.entry(&j.trial).or_default().push(j.id.clone());
        }
        for t in &expansion.trials {
            search.add_trial(
                t.id.clone(),
                &t.params,
                by_trial.remove(&t.id).unwrap_or_default(),
            );
        }
    }
    let sweep = SweepMem {
        search,
        name,
        owner,
        attempt_floor: floor,
        run_spec_json: run_spec_json(&spec),
        spec,
        spec_json: spec_json.into(),
        spec_hash,
        state: SweepState::Active,
        algorithm: liandan_common::rng::ALGORITHM.into(),
        created_at,
        trials: expansion.trials.len() as u64,
        ready: job_ids.iter().cloned().collect(),
        counts: [job_ids.len() as u64, 0, 0, 0, 0, 0],
        silent: 0,
        jobs: job_ids,
        running: 0,
        outcomes: Outcomes::default(),
        proposing: false,
    };
    Built { ops, jobs, sweep }
}

fn run_spec_json(spec: &SweepSpec) -> Arc<str> {
    let mut run = spec.clone();
    run.parameters.clear();
    serde_json::to_string(&run).unwrap_or_default().into()
}

fn sweep_info(st: &State, id: &SweepId) -> pb::Sweep {
    let Some(s) = st.sweeps.get(id) else {
        return pb::Sweep::default();
    };
    let k = s.counts;
    let c = pb::JobCounts {
        queued: k[0],
        running: k[1],
        succeeded: k[2],
        failed: k[3],
        cancelled: k[4],
        pruned: k[5],
        succeeded_without_metric: s.silent,
    };
    let search_done = s.search.as_ref().is_none_or(|x| !x.can_propose());
    let state = match s.state {
        SweepState::Cancelled => "cancelled",
        SweepState::Paused => "paused",
        // Done, and nothing of it succeeded: say so, not "finished".
        SweepState::Active
            if c.queued == 0
                && c.running == 0
                && search_done
                && c.succeeded == 0
                && c.failed > 0 =>
        {
            "failed"
        }
        SweepState::Active if c.queued == 0 && c.running == 0 && search_done => "finished",
        SweepState::Active
            if c.running == 0 && c.succeeded + c.failed + c.cancelled + c.pruned == 0 =>
        {
            "queued"
        }
        SweepState::Active => "running",
    };
    pb::Sweep {
        id: id.to_string(),
        name: s.name.clone(),
        state: state.into(),
        method: s.spec.method.as_str().into(),
        metric_name: s
            .spec
            .metric
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        metric_goal: s
            .spec
            .metric
            .as_ref()
            .map(|m| m.goal.as_str().to_string())
            .unwrap_or_default(),
        trials: s.trials,
        jobs: s.jobs.len() as u64,
        counts: Some(c),
        created_at: s.created_at,
        spec_json: s.spec_json.to_string(),
        algorithm: s.algorithm.clone(),
        unbounded: s.spec.is_lazy()
            && s.spec.run_cap.is_none()
            && s.search.as_ref().is_some_and(|x| x.can_propose())
            && s.state != SweepState::Cancelled,
        owner: s.owner.clone(),
    }
}

/// Rebuilds memory from the database.
fn load(store: &Store, cfg: &CoordinatorConfig) -> Result<State, CoreError> {
    let grace_deadline = Instant::now() + secs(cfg.restart_grace_secs);
    store
        .read_now(|c| {
            let mut st = State::default();
            {
                let mut q = c.prepare("SELECT id, name, spec_json, spec_hash, state, algorithm, created_at, owner FROM sweeps")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, f64>(6)?, r.get::<_, String>(7)?)))?;
                for row in rows {
                    let (id, name, spec_json, spec_hash, state, algorithm, created_at, owner) = row?;
                    let (Ok(sid), Ok(spec)) = (SweepId::parse(&id), serde_json::from_str::<SweepSpec>(&spec_json)) else {
                        tracing::error!(sweep = %id, "stored sweep cannot be read; skipping it");
                        continue;
                    };
                    st.sweeps.insert(
                        sid,
                        SweepMem {
                            name,
                            owner,
                            attempt_floor: 0,
                            run_spec_json: run_spec_json(&spec),
                            spec: Arc::new(spec),
                            spec_json: spec_json.into(),
                            spec_hash,
                            state: SweepState::parse(&state).unwrap_or(SweepState::Active),
                            algorithm,
                            created_at,
                            trials: 0,
                            jobs: Vec::new(),
                            ready: VecDeque::new(),
                            running: 0,
                            counts: [0; 6],
                            silent: 0,
                            search: None,
                            outcomes: Outcomes::default(),
                        proposing: false,
                        },
                    );
                }
            }
            {
                let mut q = c.prepare("SELECT id, max_attempt FROM deleted_sweeps")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                for row in rows {
                    let (id, max) = row?;
                    if let Ok(sid) = SweepId::parse(&id) {
                        if let Some(s) = st.sweeps.get_mut(&sid) {
                            s.attempt_floor = max as u64;
                        }
                        st.attempt_floors.insert(sid, max as u64);
                    }
                }
            }
            let mut params: HashMap<String, Arc<str>> = HashMap::new();
            // Trials of sweeps with search state, by sweep, in index order.
            let mut trial_order: HashMap<SweepId, Vec<(i64, TrialId)>> = HashMap::new();
            {
                let mut q = c.prepare("SELECT id, sweep_id, params_json, idx FROM trials")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?)))?;
                for row in rows {
                    let (id, sweep, p, idx) = row?;
                    if let Some((sid, s)) = SweepId::parse(&sweep).ok().and_then(|sid| st.sweeps.get_mut(&sid).map(|s| (sid, s))) {
                        s.trials += 1;
                        if s.spec.has_search() {
                            if let Ok(tid) = TrialId::parse(&id) {
                                trial_order.entry(sid).or_default().push((idx, tid));
                            }
                        }
                    }
                    params.insert(id, p.into());
                }
            }
            {
                let mut q = c.prepare("SELECT id, sweep_id, trial_id, ord, seed, state, attempt, retries_used, worker_id, cancel_requested, final_metric, best_metric, result_recorded, seq, worker_deaths FROM jobs ORDER BY seq")?;
                let rows = q.query_map([], |r| {
                    Ok(JobRow {
                        id: r.get(0)?,
                        sweep_id: r.get(1)?,
                        trial_id: r.get(2)?,
                        ord: r.get(3)?,
                        seed: r.get(4)?,
                        state: r.get(5)?,
                        attempt: r.get::<_, i64>(6)? as u64,
                        retries_used: r.get(7)?,
                        worker_id: r.get(8)?,
                        cancel_requested: r.get::<_, i64>(9)?,
                        final_metric: r.get(10)?,
                        best_metric: r.get(11)?,
                        result_recorded: r.get(12)?,
                        seq: r.get(13)?,
                        worker_deaths: r.get(14)?,
                    })
                })?;
                for row in rows {
                    let j = row?;
                    st.next_seq = st.next_seq.max(j.seq + 1);
                    let (Ok(jid), Ok(sid), Ok(tid), Some(state)) = (JobId::parse(&j.id), SweepId::parse(&j.sweep_id), TrialId::parse(&j.trial_id), JobState::parse(&j.state)) else {
                        // Only this binary writes these rows; say so loudly rather than drop a job quietly.
                        tracing::error!(job = %j.id, state = %j.state, "stored job cannot be read; it is not scheduled (is the database from a newer liandan?)");
                        continue;
                    };
                    let worker = j.worker_id.as_deref().and_then(|w| WorkerId::parse(w).ok());
                    let Some(s) = st.sweeps.get_mut(&sid) else {
                        tracing::error!(job = %jid, sweep = %sid, "stored job belongs to a sweep that cannot be read; it is not scheduled");
                        continue;
                    };
                    s.jobs.push(jid.clone());
                    s.counts[state_index(state)] += 1;
                    let params_json = params.get(&j.trial_id).cloned().unwrap_or_else(|| "{}".into());
                    let mut cpus = 0;
                    match state {
                        JobState::Queued => s.ready.push_back(jid.clone()),
                        JobState::Succeeded => {
                            if j.final_metric.is_none() && s.spec.metric.is_some() {
                                s.silent += 1;
                            }
                            s.outcomes.record(&tid, &params_json, j.seed, j.final_metric, j.best_metric)
                        }
                        JobState::Running => {
                            s.running += 1;
                            let r = &s.spec.liandan.resources;
                            cpus = if r.gpus == 0 { r.cpus } else { 0 };
                        }
                        _ => {}
                    }
                    if let (JobState::Running, Some(w)) = (state, &worker) {
                        st.workers
                            .entry(w.clone())
                            .or_insert_with(|| WorkerMem::unknown(grace_deadline))
                            .running
                            .insert(jid.clone());
                    }
                    st.jobs.insert(
                        jid,
                        JobMem {
                            seq: j.seq,
                            sweep: sid,
                            trial: tid,
                            ord: j.ord,
                            seed: j.seed,
                            state,
                            attempt: j.attempt,
                            retries_used: j.retries_used,
                            worker_deaths: j.worker_deaths,
                            worker,
                            stop: StopRequest::from_db(j.cancel_requested),
                            final_metric: j.final_metric,
                            best_metric: j.best_metric,
                            metric_not_finite: false,
                            result_recorded: j.result_recorded,
                            params_json,
                            gpus: Vec::new(),
                            cpus,
                            assigned_at: (state == JobState::Running).then(Instant::now),
                        },
                    );
                }
            }
            {
                let mut q = c.prepare("SELECT name, role, hash, created_at FROM tokens")?;
                let rows = q.query_map([], |r| {
                    Ok(IssuedToken {
                        name: r.get(0)?,
                        admin: r.get::<_, String>(1)? == "admin",
                        hash: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                })?;
                for t in rows {
                    let t = t?;
                    st.tokens.insert(t.name.clone(), t);
                }
            }
            {
                let mut q = c.prepare("SELECT id, hostname, resources_json, acked_seq, draining, last_seen, cert_bound, secret_hash FROM workers")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, bool>(4)?, r.get::<_, f64>(5)?, r.get::<_, bool>(6)?, r.get::<_, Option<String>>(7)?)))?;
                for row in rows {
                    let (id, hostname, res, acked, draining, last_seen, cert_bound, secret_hash) = row?;
                    let Ok(wid) = WorkerId::parse(&id) else { continue };
                    let w = st.workers.entry(wid).or_insert_with(|| WorkerMem::unknown(grace_deadline));
                    w.hostname = hostname;
                    w.resources = resources_from_json(&res);
                    w.acked_seq = acked as u64;
                    w.draining = draining;
                    w.last_seen = last_seen;
                    w.cert_bound = cert_bound;
                    w.secret_hash = secret_hash;
                    w.lease_deadline = grace_deadline;
                }
            }
            {
                let mut q = c.prepare("SELECT job_id, attempt, step, size, blake3, metric, created_at, file FROM checkpoints ORDER BY job_id, step")?;
                let rows = q.query_map([], |r| {
                    Ok(CheckpointRow {
                        job_id: r.get(0)?,
                        attempt: r.get::<_, i64>(1)? as u64,
                        step: r.get(2)?,
                        size: r.get::<_, i64>(3)? as u64,
                        blake3: r.get(4)?,
                        metric: r.get(5)?,
                        created_at: r.get(6)?,
                        file: r.get(7)?,
                    })
                })?;
                for row in rows {
                    let row = row?;
                    if let Ok(jid) = JobId::parse(&row.job_id) {
                        st.checkpoints.entry(jid).or_default().push(row);
                    }
                }
            }
            load_search(c, &mut st, trial_order)?;
            st.refused_stale = crate::store::counter(c, REFUSED_STALE)? as u64;
            Ok(st)
        })
        .map_err(CoreError::from)
}

/// Rebuilds the search state of sweeps that adapt or stop early: trials in
/// index order with their jobs, metric histories from the stored metric rows,
/// and whether metric.target was already reached.
fn load_search(
    c: &rusqlite::Connection,
    st: &mut State,
    mut trial_order: HashMap<SweepId, Vec<(i64, TrialId)>>,
) -> Result<(), rusqlite::Error> {
    let sids: Vec<SweepId> = st
        .sweeps
        .iter()
        .filter(|(_, s)| s.spec.has_search())
        .map(|(k, _)| k.clone())
        .collect();
    for sid in sids {
        let Some(mut search) = st
            .sweeps
            .get(&sid)
            .and_then(|s| SweepSearch::for_spec(&s.spec))
        else {
            continue;
        };
        let mut order = trial_order.remove(&sid).unwrap_or_default();
        order.sort();
        let Some(s) = st.sweeps.get(&sid) else {
            continue;
        };
        let mut by_trial: HashMap<TrialId, Vec<(i64, JobId)>> = HashMap::new();
        for j in &s.jobs {
            if let Some(m) = st.jobs.get(j) {
                by_trial
                    .entry(m.trial.clone())
                    .or_default()
                    .push((m.ord, j.clone()));
            }
        }
        for (_, tid) in order {
            let mut jobs = by_trial.remove(&tid).unwrap_or_default();
            jobs.sort();
            let params: serde_json::Value = jobs
                .first()
                .and_then(|(_, j)| st.jobs.get(j))
                .and_then(|m| serde_json::from_str(&m.params_json).ok())
                .unwrap_or(serde_json::Value::Null);
            search.add_trial(tid, &params, jobs.into_iter().map(|(_, j)| j).collect());
        }
        if let Some(target) = s.spec.metric.as_ref().and_then(|m| m.target) {
            search.closed =
                (0..search.trials.len()).any(|t| reached_target(&st.jobs, &search, t, target));
        }
        // Histories matter only while something may still be judged: a sweep with
        // no queued or running job and no trial left to propose skips its metric rows.
        let live =
            s.counts[state_index(JobState::Queued)] + s.counts[state_index(JobState::Running)] > 0
                || (search.can_propose() && s.state != SweepState::Cancelled);
        if let (true, Some(_), Some(metric)) = (live, &s.spec.early_terminate, &s.spec.metric) {
            let mut q =
                c.prepare("SELECT step, json FROM metrics WHERE job_id = ?1 ORDER BY id")?;
            for t in 0..search.trials.len() {
                let (tid, jobs) = (search.trials[t].id.clone(), search.trials[t].jobs.clone());
                for j in jobs {
                    let rows = q.query_map([j.to_string()], |r| {
                        Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, String>(1)?))
                    })?;
                    for row in rows {
                        let (step, json) = row?;
                        let value = serde_json::from_str::<serde_json::Value>(&json)
                            .ok()
                            .and_then(|v| v.get(&metric.name).and_then(|x| x.as_f64()))
                            .filter(|x| x.is_finite());
                        if let Some(x) = value {
                            let step = step.unwrap_or_else(|| search.next_step(&tid, &j));
                            search.record(&tid, &j, step, x);
                        }
                    }
                }
            }
            search.settle_loaded();
            // A trial pruned before the restart stays pruned.
            for t in 0..search.trials.len() {
                let pruned = search.trials[t].jobs.iter().any(|j| {
                    st.jobs.get(j).is_some_and(|m| {
                        m.state == JobState::Pruned || m.stop == StopRequest::Prune
                    })
                });
                search.trials[t].stopped = pruned;
            }
        }
        if let Some(s) = st.sweeps.get_mut(&sid) {
            s.search = Some(search);
        }
    }
    Ok(())
}

/// Whether trial `t`, with every seed ended, reached metric.target on the
/// combined best value of its succeeded seeds.
fn reached_target(
    jobs: &HashMap<JobId, JobMem>,
    search: &SweepSearch,
    t: usize,
    target: f64,
) -> bool {
    let trial = &search.trials[t].jobs;
    if !trial
        .iter()
        .all(|j| jobs.get(j).is_some_and(|m| m.state.is_terminal()))
    {
        return false;
    }
    let best: Vec<f64> = trial
        .iter()
        .filter_map(|j| jobs.get(j))
        .filter(|m| m.state == JobState::Succeeded)
        .filter_map(|m| m.best_metric)
        .collect();
    search.meets_target(target, &best)
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    #[test]
    fn a_prefix_names_one_id_or_is_refused() {
        let ids = ["job-0a1b", "job-0a2c", "job-ffff"];
        let pick = |p: &str| unique_prefix("job", p, ids.iter().copied(), "jobs SWEEP");
        assert_eq!(pick("job-f").expect("unique"), "job-ffff");
        assert_eq!(pick("job-0a1").expect("unique"), "job-0a1b");
        let e = pick("job-0a").expect_err("ambiguous");
        assert!(
            matches!(&e, CoreError::InvalidArgument(m) if m.contains("job-0a1b, job-0a2c") && m.contains("give more of it")),
            "{e}"
        );
        for none in ["job-", "job-9", "jo", "x"] {
            assert!(
                matches!(pick(none), Err(CoreError::NotFound { .. })),
                "{none}"
            );
        }
    }
}
