//! The state owner: every decision the coordinator makes happens here, under
//! one lock, and is queued to the store in the same critical section (so the
//! database sees decisions in the order they were made). Messages to workers
//! and replies to callers go out only after the store says the batch is durable.
//!
//! Memory mirrors the database for scheduling speed; it is rebuilt from the
//! database at start. A failed commit stops the process (see [`crate::store`]).

use crate::model::{
    Ack, Heartbeat, Held, Hello, JobEvent, JobState, Outcome, Record, RecordBody, StopRequest,
    SweepState,
};
use crate::results::Outcomes;
use crate::search::sweep::SweepSearch;
use crate::search::{TrialData, TrialStatus};
use crate::store::{CheckpointRow, JobUpdate, LogRow, MetricRow, NewJobs, Op, Store, StoreError};
use crate::wire::StopCause;
use liandan_common::config::CoordinatorConfig;
use liandan_common::ids::{AttemptNo, JobId, SweepId, TrialId, WorkerId};
use liandan_common::sweep::{self, Format, Goal, SweepSpec};
use liandan_common::time::now_secs;
use liandan_proto::v1 as pb;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

mod attempts;
mod fleet;
mod ingest;
mod proposals;
mod query;
mod recovery;
mod retention;
mod schedule;
mod scheduler;
mod stored_checkpoints;
mod sweeps;
mod tokens;

use attempts::AttemptEnd;
use fleet::{resources_from_json, session_worker};
use proposals::reached_target;
pub(crate) use query::checkpoint_info;
use query::{sweep_info, worker_info};
use recovery::load;
use sweeps::run_spec_json;

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
    /// Jobs per state, kept with every transition (so status is O(1) at a million jobs).
    counts: StateCounts,
    /// Succeeded jobs that never reported the sweep's metric (kept likewise).
    silent: u64,
    /// Trials, metric histories and stop decisions, for sweeps that adapt or stop early.
    search: Option<SweepSearch>,
    /// Succeeded jobs' values by trial (what `results` ranks).
    outcomes: Outcomes,
    /// A proposal for this (learning) sweep is being computed off the lock.
    proposing: bool,
}

/// A sweep's jobs counted by state.
#[derive(Clone, Copy, Debug, Default)]
struct StateCounts([u64; 6]);

impl StateCounts {
    fn slot(s: JobState) -> usize {
        match s {
            JobState::Queued => 0,
            JobState::Running => 1,
            JobState::Succeeded => 2,
            JobState::Failed => 3,
            JobState::Cancelled => 4,
            JobState::Pruned => 5,
        }
    }

    fn get(&self, s: JobState) -> u64 {
        self.0[Self::slot(s)]
    }

    fn add(&mut self, s: JobState, n: u64) {
        self.0[Self::slot(s)] += n;
    }
}

impl SweepMem {
    fn moved(&mut self, from: JobState, to: JobState) {
        let from = StateCounts::slot(from);
        self.counts.0[from] = self.counts.0[from].saturating_sub(1);
        self.counts.add(to, 1);
    }

    /// Its running jobs (what `concurrency` caps).
    fn running(&self) -> u64 {
        self.counts.get(JobState::Running)
    }
}

struct JobMem {
    /// The job's row key in the store ([`JobRow::seq`]).
    seq: i64,
    sweep: SweepId,
    trial: TrialId,
    seed: i64,
    state: JobState,
    /// The current attempt: the fencing token its writes must carry.
    attempt: AttemptNo,
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
    /// The current attempt reported a finite value of the sweep's metric
    /// (what `liandan.require_metric` asks of an attempt that exits 0). Set
    /// at start-up from the stored records of running attempts.
    reported: bool,
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
    fn accepts(&self, attempt: AttemptNo, worker: &str) -> bool {
        self.state == JobState::Running
            && self.attempt == attempt
            && self.worker.as_ref().is_some_and(|w| w.as_str() == worker)
    }

    /// A new job, queued, never run.
    fn queued(
        seq: i64,
        sweep: SweepId,
        trial: TrialId,
        seed: i64,
        params_json: Arc<str>,
    ) -> JobMem {
        JobMem {
            seq,
            sweep,
            trial,
            seed,
            state: JobState::Queued,
            attempt: AttemptNo(0),
            retries_used: 0,
            worker_deaths: 0,
            worker: None,
            stop: StopRequest::None,
            final_metric: None,
            best_metric: None,
            metric_not_finite: false,
            reported: false,
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
            attempt: self.attempt.0,
            retries_used: self.retries_used,
            worker_id: self.worker.clone(),
            cancel_requested: self.stop.to_db(),
            final_metric: self.final_metric,
            best_metric: self.best_metric,
            // Invariant 3: a result is recorded at most once per job, when it succeeds.
            result_recorded: self.state == JobState::Succeeded,
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

/// What a decision made under the lock leads to, as a value: the rows to
/// persist, in order, and the messages to deliver once they are durable.
/// Domain calls return it; the RPC's entry point queues the rows while it
/// still holds the lock (queue order is decision order) and [`Core::finish`]
/// delivers after the commit.
#[derive(Default)]
#[must_use = "decided effects must be persisted and delivered"]
pub(super) struct Effects {
    ops: Vec<Op>,
    sends: Sends,
}

impl Effects {
    fn of(op: Op) -> Effects {
        Effects {
            ops: vec![op],
            sends: Vec::new(),
        }
    }

    fn op(&mut self, op: Op) {
        self.ops.push(op);
    }

    fn send(
        &mut self,
        tx: mpsc::UnboundedSender<pb::CoordinatorMessage>,
        msg: pb::CoordinatorMessage,
    ) {
        self.sends.push((tx, msg));
    }

    /// Adds what a nested decision returned, after what is here.
    fn absorb(&mut self, other: Effects) {
        self.ops.extend(other.ops);
        self.sends.extend(other.sends);
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.sends.is_empty()
    }
}

/// Effects whose rows are queued to the store: the commit to wait for, and
/// what to deliver after it.
struct Pending<F> {
    commit: F,
    sends: Sends,
}

/// What the coordinator makes of an attempt a worker says it holds (at hello
/// and in every heartbeat): the job, when it is that job's current attempt on
/// this worker; and the stop to send while its process runs: the user's
/// cancel or a prune not yet carried out, or `stale` for an attempt that is
/// not current.
fn held_verdict(st: &State, wid: &WorkerId, h: &Held) -> (Option<JobId>, Option<pb::Cancel>) {
    let Some(jid) = &h.job else {
        return (None, None);
    };
    let job = st
        .jobs
        .get(jid)
        .filter(|j| j.accepts(h.attempt, wid.as_str()));
    let cause = match job.map(|j| j.stop) {
        None => Some(StopCause::Stale),
        Some(StopRequest::None) => None,
        Some(r) => Some(StopCause::Requested(r)),
    };
    let cancel = cause
        .filter(|_| h.running)
        .map(|c| crate::wire::cancel(jid.as_str(), h.attempt, c));
    (job.map(|_| jid.clone()), cancel)
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

    /// Queues the rows of `fx` to the store, in decision order: called with
    /// the lock held, then [`Core::finish`] once it is released.
    fn enqueue(
        &self,
        fx: Effects,
    ) -> Pending<impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static> {
        Pending {
            commit: self.store.enqueue(fx.ops),
            sends: fx.sends,
        }
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
        pending: Pending<
            impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
        >,
    ) -> Result<(), CoreError> {
        let Pending { commit: fut, sends } = pending;
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
