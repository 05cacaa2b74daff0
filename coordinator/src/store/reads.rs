//! The SQLite engine's read queries ([`Reads`] on a read connection), and
//! the typed rows every engine returns: the core and the log and metric
//! readers see rows, never SQL. Start-up reads stream rows through a
//! callback, so a million jobs are never held twice in memory.

use super::{CheckpointRow, JobRow, Reads, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

/// SQLite's read connection.
pub(super) struct SqliteReads {
    conn: Connection,
}

impl SqliteReads {
    pub(super) fn new(conn: Connection) -> SqliteReads {
        SqliteReads { conn }
    }
}

/// A stored sweep, as start-up reads it.
#[derive(Clone, Debug)]
pub struct SweepRecord {
    pub id: String,
    pub name: String,
    pub spec_json: String,
    pub spec_hash: String,
    pub state: String,
    pub algorithm: String,
    pub created_at: f64,
    pub owner: String,
}

/// A stored trial.
#[derive(Clone, Debug)]
pub struct TrialRecord {
    pub id: String,
    pub sweep_id: String,
    pub params_json: String,
    pub idx: i64,
}

/// A stored issued token (its hash, never the token).
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub name: String,
    pub role: String,
    pub hash: String,
    pub created_at: f64,
}

/// A stored worker.
#[derive(Clone, Debug)]
pub struct WorkerRecord {
    pub id: String,
    pub hostname: String,
    pub resources_json: String,
    pub acked_seq: u64,
    pub draining: bool,
    pub last_seen: f64,
    pub cert_bound: bool,
    pub secret_hash: Option<String>,
}

/// A stored attempt: its outcome and times (unset ones while it runs).
#[derive(Clone, Debug, Default)]
pub struct AttemptRecord {
    pub attempt: u64,
    pub worker_id: String,
    pub state: String,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
}

/// A stored log line of one attempt.
#[derive(Clone, Debug)]
pub struct StoredLine {
    pub line: u64,
    /// 0 = stdout, 1 = stderr.
    pub stream: u8,
    pub ts: f64,
    pub text: String,
}

/// A stored metric record, with its row id (the page token).
#[derive(Clone, Debug)]
pub struct StoredMetric {
    pub id: i64,
    pub attempt: u64,
    pub step: Option<i64>,
    pub ts: f64,
    pub json: String,
}

const ATTEMPT_COLUMNS: &str =
    "attempt, worker_id, state, started_at, ended_at, exit_code, signal, message";

fn attempt_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptRecord> {
    Ok(AttemptRecord {
        attempt: r.get::<_, i64>(0)? as u64,
        worker_id: r.get(1)?,
        state: r.get(2)?,
        started_at: r.get(3)?,
        ended_at: r.get(4)?,
        exit_code: r.get(5)?,
        signal: r.get(6)?,
        message: r.get(7)?,
    })
}

impl Reads for SqliteReads {
    /// A counter's value (0 when absent).
    fn counter(&self, name: &str) -> Result<i64, StoreError> {
        Ok(super::sqlite::counter(&self.conn, name)?)
    }

    /// One attempt of a job, if it was stored.
    fn attempt(&self, job: &str, attempt: u64) -> Result<Option<AttemptRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id=?1 AND attempt=?2"
        ))?;
        Ok(st
            .query_row(params![job, attempt as i64], attempt_record)
            .optional()?)
    }

    /// A job's attempts, oldest first.
    fn attempts(&self, job: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id=?1 ORDER BY attempt"
        ))?;
        let rows = st.query_map([job], attempt_record)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// At most `limit` log lines of an attempt from line `from`, of one
    /// stream or both, in line order.
    fn log_lines(
        &self,
        job: &str,
        attempt: u64,
        from: u64,
        stream: Option<u8>,
        limit: i64,
    ) -> Result<Vec<StoredLine>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT line, stream, ts, text FROM logs WHERE job_id=?1 AND attempt=?2 AND line>=?3 AND (?4 IS NULL OR stream=?4) ORDER BY line LIMIT ?5",
        )?;
        let rows = st.query_map(
            params![job, attempt as i64, from as i64, stream, limit],
            |r| {
                Ok(StoredLine {
                    line: r.get::<_, i64>(0)? as u64,
                    stream: r.get(1)?,
                    ts: r.get(2)?,
                    text: r.get(3)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The number of an attempt's last log line (of one stream or both; 0 for none).
    fn last_log_line(
        &self,
        job: &str,
        attempt: u64,
        stream: Option<u8>,
    ) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(line), 0) FROM logs WHERE job_id=?1 AND attempt=?2 AND (?3 IS NULL OR stream=?3)",
            params![job, attempt as i64, stream],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// At most `limit` metric records of a job (one attempt, or all for 0)
    /// after row `after`, in the order they were stored.
    fn metrics_after(
        &self,
        job: &str,
        attempt: u64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredMetric>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, attempt, step, ts, json FROM metrics WHERE job_id=?1 AND (?2 = 0 OR attempt=?2) AND id > ?3 ORDER BY id LIMIT ?4",
        )?;
        let rows = st.query_map(params![job, attempt as i64, after, limit], |r| {
            Ok(StoredMetric {
                id: r.get(0)?,
                attempt: r.get::<_, i64>(1)? as u64,
                step: r.get(2)?,
                ts: r.get(3)?,
                json: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Each metric record of a job as (step, json), in the order stored.
    fn for_each_metric_of(
        &self,
        job: &str,
        f: &mut dyn FnMut(Option<i64>, String),
    ) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT step, json FROM metrics WHERE job_id = ?1 ORDER BY id")?;
        let rows = st.query_map([job], |r| Ok((r.get::<_, Option<i64>>(0)?, r.get(1)?)))?;
        for row in rows {
            let (step, json) = row?;
            f(step, json);
        }
        Ok(())
    }

    /// Each metric record (its JSON) of one attempt of a job, in the order
    /// stored, until `f` says it has seen enough (returns true).
    fn scan_metrics_of_attempt(
        &self,
        job: &str,
        attempt: u64,
        f: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT json FROM metrics WHERE job_id = ?1 AND attempt = ?2 ORDER BY id",
        )?;
        let mut rows = st.query(params![job, attempt as i64])?;
        while let Some(r) = rows.next()? {
            if f(&r.get::<_, String>(0)?) {
                break;
            }
        }
        Ok(())
    }

    /// Every stored sweep.
    fn sweeps(&self) -> Result<Vec<SweepRecord>, StoreError> {
        let mut q = self.conn.prepare(
            "SELECT id, name, spec_json, spec_hash, state, algorithm, created_at, owner FROM sweeps",
        )?;
        let rows = q.query_map([], |r| {
            Ok(SweepRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                spec_json: r.get(2)?,
                spec_hash: r.get(3)?,
                state: r.get(4)?,
                algorithm: r.get(5)?,
                created_at: r.get(6)?,
                owner: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Deleted sweeps' ids with the highest attempt number they used.
    fn deleted_sweeps(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut q = self
            .conn
            .prepare("SELECT id, max_attempt FROM deleted_sweeps")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Each stored trial.
    fn for_each_trial(&self, f: &mut dyn FnMut(TrialRecord)) -> Result<(), StoreError> {
        let mut q = self
            .conn
            .prepare("SELECT id, sweep_id, params_json, idx FROM trials")?;
        let rows = q.query_map([], |r| {
            Ok(TrialRecord {
                id: r.get(0)?,
                sweep_id: r.get(1)?,
                params_json: r.get(2)?,
                idx: r.get(3)?,
            })
        })?;
        for row in rows {
            f(row?);
        }
        Ok(())
    }

    /// Each stored job, in submission order (its `seq`).
    fn for_each_job(&self, f: &mut dyn FnMut(JobRow)) -> Result<(), StoreError> {
        let mut q = self.conn.prepare("SELECT id, sweep_id, trial_id, ord, seed, state, attempt, retries_used, worker_id, cancel_requested, final_metric, best_metric, result_recorded, seq, worker_deaths FROM jobs ORDER BY seq")?;
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
            f(row?);
        }
        Ok(())
    }

    /// Every issued token.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut q = self
            .conn
            .prepare("SELECT name, role, hash, created_at FROM tokens")?;
        let rows = q.query_map([], |r| {
            Ok(TokenRecord {
                name: r.get(0)?,
                role: r.get(1)?,
                hash: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Every stored worker.
    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let mut q = self.conn.prepare("SELECT id, hostname, resources_json, acked_seq, draining, last_seen, cert_bound, secret_hash FROM workers")?;
        let rows = q.query_map([], |r| {
            Ok(WorkerRecord {
                id: r.get(0)?,
                hostname: r.get(1)?,
                resources_json: r.get(2)?,
                acked_seq: r.get::<_, i64>(3)? as u64,
                draining: r.get(4)?,
                last_seen: r.get(5)?,
                cert_bound: r.get(6)?,
                secret_hash: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Each stored checkpoint, by job and step.
    fn for_each_checkpoint(&self, f: &mut dyn FnMut(CheckpointRow)) -> Result<(), StoreError> {
        let mut q = self.conn.prepare("SELECT job_id, attempt, step, size, blake3, metric, created_at, file FROM checkpoints ORDER BY job_id, step")?;
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
            f(row?);
        }
        Ok(())
    }
}
