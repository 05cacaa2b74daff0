//! Durable state: embedded SQLite (bundled, WAL, `synchronous=FULL`) behind a
//! narrow interface: [`Store::commit`] applies a batch of [`Op`]s durably, and a
//! few read queries serve the user API and the start-up load.
//!
//! Group commit: one dedicated writer thread owns the write connection. It takes
//! every batch waiting in its queue, applies them all in one transaction, fsyncs
//! once, and only then answers each caller. So throughput grows with load instead
//! of collapsing to one fsync per event, and nothing is acknowledged before it is
//! durable (invariant 6). A failed commit is fatal to the coordinator: its memory
//! could be ahead of the disk, so it exits and recovers from the database.
//!
//! Reads use a second connection on a blocking thread; no SQLite call ever runs
//! on an async runtime thread.
//!
//! The interface is engine-neutral: ops in ([`Engine::commit`]), typed rows
//! out ([`Reads`]), and the [`Store`] (the writer thread, group commit, the
//! barrier, reads off the runtime) is written against those two traits. The
//! suite in `suite.rs` is what any engine must pass: SQLite now, PostgreSQL
//! next. This module and its children are the only place in the coordinator
//! with SQL: `sqlite.rs` holds the schema, the migrations and the writes;
//! `reads.rs` every query.

mod reads;
mod sqlite;
#[cfg(test)]
mod suite;

pub use reads::{
    AttemptRecord, StoredLine, StoredMetric, SweepRecord, TokenRecord, TrialRecord, WorkerRecord,
};
pub use sqlite::SCHEMA_VERSION;

use liandan_common::ids::{JobId, SweepId, TrialId, WorkerId};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// A store failure. Read failures go to the caller; write failures are fatal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this binary understands ({SCHEMA_VERSION}); upgrade liandan-coordinator")]
    TooNew { found: i64 },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database writer stopped")]
    WriterGone,
    #[error("database commit failed: {0}")]
    CommitFailed(String),
}

/// One stored log line.
#[derive(Clone, Debug)]
pub struct LogRow {
    pub job_id: String,
    pub attempt: u64,
    pub line: u64,
    /// 0 = stdout, 1 = stderr.
    pub stream: u8,
    pub ts: f64,
    pub text: String,
}

/// One stored metric record.
#[derive(Clone, Debug)]
pub struct MetricRow {
    pub job_id: String,
    pub attempt: u64,
    pub step: Option<i64>,
    pub ts: f64,
    pub json: String,
}

/// What changes in a job's row as it moves through its states. A shared id
/// and a static state name: built on every state change, it allocates
/// nothing.
#[derive(Clone, Debug)]
pub struct JobUpdate {
    /// The row's key ([`JobRow::seq`]).
    pub seq: i64,
    pub state: &'static str,
    pub attempt: u64,
    pub retries_used: u32,
    pub worker_id: Option<WorkerId>,
    /// [`crate::model::StopRequest::to_db`].
    pub cancel_requested: i64,
    pub final_metric: Option<f64>,
    pub best_metric: Option<f64>,
    pub result_recorded: bool,
    /// Attempts in a row that ended with their worker's death.
    pub worker_deaths: u32,
}

/// A stored job row, as start-up reads it.
#[derive(Clone, Debug)]
pub struct JobRow {
    /// The row's key: assigned by the coordinator in submission order.
    pub seq: i64,
    pub id: String,
    pub sweep_id: String,
    pub trial_id: String,
    pub ord: i64,
    pub seed: i64,
    pub state: String,
    pub attempt: u64,
    pub retries_used: u32,
    pub worker_id: Option<String>,
    /// [`crate::model::StopRequest::to_db`].
    pub cancel_requested: i64,
    pub final_metric: Option<f64>,
    pub best_metric: Option<f64>,
    pub result_recorded: bool,
    pub worker_deaths: u32,
}

/// Jobs submitted together: (id, trial, seed) each, queued and never run; the
/// i-th gets key `first_seq + i` and order `first_ord + i` in its sweep.
#[derive(Clone, Debug)]
pub struct NewJobs {
    pub sweep_id: SweepId,
    pub first_seq: i64,
    pub first_ord: i64,
    /// The attempt number stored (the first attempt is this + 1): above
    /// every attempt of a deleted sweep with the same id.
    pub first_attempt: u64,
    pub jobs: Vec<(JobId, TrialId, i64)>,
}

/// A stored checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointRow {
    pub job_id: String,
    pub attempt: u64,
    pub step: i64,
    pub size: u64,
    pub blake3: String,
    pub metric: Option<f64>,
    pub created_at: f64,
    pub file: String,
}

/// One write. A batch of ops from one caller is applied in order, in one
/// transaction shared with other callers' batches.
#[derive(Clone, Debug)]
pub enum Op {
    InsertSweep {
        id: String,
        name: String,
        spec_json: String,
        spec_hash: String,
        method: String,
        algorithm: String,
        created_at: f64,
        owner: String,
    },
    InsertTrial {
        id: String,
        sweep_id: String,
        idx: i64,
        params_json: String,
    },
    /// New queued jobs of one sweep, stored with consecutive keys and orders.
    InsertJobs(NewJobs),
    SetSweepState {
        id: String,
        state: String,
    },
    /// Ends the queued jobs of cancelled sweeps and asks their running ones
    /// to stop: completes a cancel that a crash interrupted between its
    /// chunks (run at start).
    FinishCancels,
    UpdateJob(JobUpdate),
    /// A job's final and best values of the sweep metric, in the same batch
    /// as the metric rows that changed them (an acknowledged metric must be
    /// the job's result after a crash, not only its memory's).
    JobMetrics {
        seq: i64,
        final_metric: Option<f64>,
        best_metric: Option<f64>,
    },
    InsertAttempt {
        job_id: String,
        attempt: u64,
        worker_id: String,
        started_at: f64,
    },
    EndAttempt {
        job_id: String,
        attempt: u64,
        state: String,
        ended_at: f64,
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: String,
    },
    Logs(Vec<LogRow>),
    Metrics(Vec<MetricRow>),
    /// A worker forgotten (`liandan workers --forget`, or expired).
    DeleteWorker {
        id: String,
    },
    /// A sweep and everything of it (`liandan delete`), remembering its
    /// highest attempt number.
    DeleteSweep {
        id: String,
        max_attempt: u64,
    },
    /// A user token issued by `liandan tokens add` (its hash only).
    PutToken {
        name: String,
        role: String,
        hash: String,
        created_at: f64,
    },
    DeleteToken {
        name: String,
    },
    UpsertWorker {
        id: String,
        hostname: String,
        resources_json: String,
        acked_seq: u64,
        draining: bool,
        last_seen: f64,
        /// Once true, stays true.
        cert_bound: bool,
        /// Kept when `None`.
        secret_hash: Option<String>,
    },
    WorkerAcked {
        id: String,
        acked_seq: u64,
    },
    AddCounter {
        name: String,
        delta: i64,
    },
    InsertCheckpoint(CheckpointRow),
    DeleteCheckpoint {
        job_id: String,
        step: i64,
    },
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A storage engine's write side, owned by the writer thread.
pub trait Engine: Send + 'static {
    /// Applies `batches`, in order, in one transaction: durable when this
    /// returns Ok, nothing of them applied when it fails. Empty batches
    /// (barriers) alone commit nothing.
    fn commit(&mut self, batches: &[&[Op]]) -> Result<(), StoreError>;
}

/// Every read the coordinator makes, typed, on an engine's read connection.
/// Callers hold it as a [`Reader`] and use the closure-taking helpers on it
/// (`each_job`, `each_trial`, ...).
pub trait Reads {
    /// A counter's value (0 when absent).
    fn counter(&self, name: &str) -> Result<i64, StoreError>;
    /// One attempt of a job, if it was stored.
    fn attempt(&self, job: &str, attempt: u64) -> Result<Option<AttemptRecord>, StoreError>;
    /// A job's attempts, oldest first.
    fn attempts(&self, job: &str) -> Result<Vec<AttemptRecord>, StoreError>;
    /// At most `limit` log lines of an attempt from line `from`, of one
    /// stream (0 stdout, 1 stderr) or both, in line order.
    fn log_lines(
        &self,
        job: &str,
        attempt: u64,
        from: u64,
        stream: Option<u8>,
        limit: i64,
    ) -> Result<Vec<StoredLine>, StoreError>;
    /// The number of an attempt's last log line (of one stream or both; 0 for none).
    fn last_log_line(&self, job: &str, attempt: u64, stream: Option<u8>)
        -> Result<u64, StoreError>;
    /// At most `limit` metric records of a job (one attempt, or all for 0)
    /// after record `after` (a [`StoredMetric::id`]), in the order stored.
    fn metrics_after(
        &self,
        job: &str,
        attempt: u64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredMetric>, StoreError>;
    /// Each metric record of a job as (step, json), in the order stored.
    fn for_each_metric_of(
        &self,
        job: &str,
        f: &mut dyn FnMut(Option<i64>, String),
    ) -> Result<(), StoreError>;
    /// Each metric record (its JSON) of one attempt, in the order stored,
    /// until `f` returns true.
    fn scan_metrics_of_attempt(
        &self,
        job: &str,
        attempt: u64,
        f: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), StoreError>;
    /// Every stored sweep.
    fn sweeps(&self) -> Result<Vec<SweepRecord>, StoreError>;
    /// Deleted sweeps' ids with the highest attempt number they used.
    fn deleted_sweeps(&self) -> Result<Vec<(String, u64)>, StoreError>;
    fn for_each_trial(&self, f: &mut dyn FnMut(TrialRecord)) -> Result<(), StoreError>;
    /// Each stored job, in submission order (its `seq`).
    fn for_each_job(&self, f: &mut dyn FnMut(JobRow)) -> Result<(), StoreError>;
    /// Every issued token.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Every stored worker.
    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;
    /// Each stored checkpoint, by job and step.
    fn for_each_checkpoint(&self, f: &mut dyn FnMut(CheckpointRow)) -> Result<(), StoreError>;
}

/// What a read closure is handed: the engine's reads.
pub type Reader<'a> = dyn Reads + 'a;

impl Reader<'_> {
    pub fn each_metric_of(
        &self,
        job: &str,
        mut f: impl FnMut(Option<i64>, String),
    ) -> Result<(), StoreError> {
        self.for_each_metric_of(job, &mut f)
    }

    pub fn scan_attempt_metrics(
        &self,
        job: &str,
        attempt: u64,
        mut f: impl FnMut(&str) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_metrics_of_attempt(job, attempt, &mut f)
    }

    pub fn each_trial(&self, mut f: impl FnMut(TrialRecord)) -> Result<(), StoreError> {
        self.for_each_trial(&mut f)
    }

    pub fn each_job(&self, mut f: impl FnMut(JobRow)) -> Result<(), StoreError> {
        self.for_each_job(&mut f)
    }

    pub fn each_checkpoint(&self, mut f: impl FnMut(CheckpointRow)) -> Result<(), StoreError> {
        self.for_each_checkpoint(&mut f)
    }
}

/// Most batches merged into one transaction.
const MAX_GROUP: usize = 512;

/// The writer thread: takes every batch waiting in the queue, commits them
/// in one transaction, and only then answers each caller. A failed commit
/// is fatal: memory may now be ahead of the disk (crash-only recovery).
fn writer_loop(
    mut engine: Box<dyn Engine>,
    rx: mpsc::Receiver<(Vec<Op>, Reply)>,
    gate: &crate::gate::Gate,
) {
    while let Ok(first) = rx.recv() {
        gate.wait_open();
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(item) => group.push(item),
                Err(_) => break,
            }
        }
        let batches: Vec<&[Op]> = group.iter().map(|(ops, _)| ops.as_slice()).collect();
        match engine.commit(&batches) {
            Ok(()) => {
                for (_, reply) in group {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "database commit failed; the coordinator stops so it can recover from the database");
                for (_, reply) in group {
                    let _ = reply.send(Err(StoreError::CommitFailed(msg.clone())));
                }
                std::process::exit(liandan_common::exit::IOERR);
            }
        }
    }
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<(Vec<Op>, Reply)>,
    reader: Arc<Mutex<Box<dyn Reads + Send>>>,
    gate: Arc<crate::gate::Gate>,
    pub path: PathBuf,
}

impl Store {
    /// Opens (creating and migrating) the SQLite database at `path` and
    /// starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let (engine, reads) = sqlite::open_engine(path)?;
        Store::with_engine(Box::new(engine), Box::new(reads), path)
    }

    /// A store over any engine: its write side (moved to the writer thread)
    /// and its read connection.
    pub fn with_engine(
        engine: Box<dyn Engine>,
        reads: Box<dyn Reads + Send>,
        path: &Path,
    ) -> Result<Store, StoreError> {
        let (tx, rx) = mpsc::channel::<(Vec<Op>, Reply)>();
        let gate = Arc::new(crate::gate::Gate::default());
        let writer_gate = gate.clone();
        std::thread::Builder::new()
            .name("liandan-db-writer".into())
            .spawn(move || writer_loop(engine, rx, &writer_gate))
            .map_err(|e| {
                StoreError::CommitFailed(format!("cannot start the writer thread: {e}"))
            })?;
        Ok(Store {
            tx,
            reader: Arc::new(Mutex::new(reads)),
            gate,
            path: path.to_path_buf(),
        })
    }

    /// Queues a batch; the returned future resolves once it is durable. Queue
    /// order is commit order, so callers that queue under a lock keep the
    /// database in the order of their decisions.
    pub fn enqueue(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send((ops, reply)).is_ok();
        async move {
            if !sent {
                return Err(StoreError::WriterGone);
            }
            rx.await.map_err(|_| StoreError::WriterGone)?
        }
    }

    /// Queues a batch and waits until it is durable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.enqueue(ops).await
    }

    /// Resolves once everything queued before this call is durable. A reply
    /// built from memory waits on it, so callers are never told of state a
    /// crash would revert (memory runs ahead of the disk by the batches in
    /// flight; queue order is commit order). Costs no disk write.
    pub fn barrier(
        &self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.enqueue(Vec::new())
    }

    /// For tests: the writer commits nothing until the returned guard drops.
    #[doc(hidden)]
    pub fn hold_commits(&self) -> crate::gate::Hold {
        self.gate.hold()
    }

    /// Runs typed reads ([`Reader`]) on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&**conn)
        })
        .await
        .map_err(|e| StoreError::CommitFailed(format!("reader task: {e}")))?
    }

    /// Runs typed reads on the calling thread (start-up only, before serving).
    pub fn read_now<T>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&**conn)
    }
}
