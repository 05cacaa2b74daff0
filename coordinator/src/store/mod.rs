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
//! The interface is engine-neutral (ops in, typed rows out: [`Reader`]) so that
//! the same suite can later run against PostgreSQL. This module and its
//! children are the only place in the coordinator with SQL: `sqlite.rs` holds
//! the schema, the migrations and the writer; `reads.rs` every query.

mod reads;
mod sqlite;

pub use reads::{
    AttemptRecord, Reader, StoredLine, StoredMetric, SweepRecord, TokenRecord, TrialRecord,
    WorkerRecord,
};
pub use sqlite::SCHEMA_VERSION;

use liandan_common::ids::{JobId, SweepId, TrialId, WorkerId};
use rusqlite::Connection;
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

pub(super) type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<(Vec<Op>, Reply)>,
    reader: Arc<Mutex<Connection>>,
    gate: Arc<crate::gate::Gate>,
    pub path: PathBuf,
}

impl Store {
    /// Opens (creating and migrating) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut writer = sqlite::open(path)?;
        sqlite::migrate(&mut writer)?;
        let reader = sqlite::open(path)?;
        let (tx, rx) = mpsc::channel::<(Vec<Op>, Reply)>();
        let gate = Arc::new(crate::gate::Gate::default());
        let writer_gate = gate.clone();
        std::thread::Builder::new()
            .name("liandan-db-writer".into())
            .spawn(move || sqlite::writer_loop(writer, rx, &writer_gate))
            .map_err(|e| {
                StoreError::CommitFailed(format!("cannot start the writer thread: {e}"))
            })?;
        Ok(Store {
            tx,
            reader: Arc::new(Mutex::new(reader)),
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
            f(&Reader::new(&conn))
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
        f(&Reader::new(&conn))
    }
}
