//! The SQLite engine: schema and migrations, the connections, and how a
//! group of batches of [`Op`]s is applied in one transaction.

use super::reads::SqliteReads;
use super::{Engine, Op, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// The schema version this binary writes. Older databases are migrated forward;
/// newer ones are refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[&str] = &[
    // version 1
    r#"
    CREATE TABLE sweeps(
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec_json TEXT NOT NULL, spec_hash TEXT NOT NULL,
        state TEXT NOT NULL, method TEXT NOT NULL, algorithm TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE trials(id TEXT PRIMARY KEY, sweep_id TEXT NOT NULL, idx INTEGER NOT NULL, params_json TEXT NOT NULL);
    CREATE TABLE jobs(
        id TEXT PRIMARY KEY, sweep_id TEXT NOT NULL, trial_id TEXT NOT NULL, ord INTEGER NOT NULL, seed INTEGER NOT NULL,
        state TEXT NOT NULL, attempt INTEGER NOT NULL, retries_used INTEGER NOT NULL, worker_id TEXT,
        cancel_requested INTEGER NOT NULL, final_metric REAL, best_metric REAL, result_recorded INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL);
    CREATE INDEX jobs_by_sweep ON jobs(sweep_id, ord);
    CREATE TABLE attempts(
        job_id TEXT NOT NULL, attempt INTEGER NOT NULL, worker_id TEXT NOT NULL, state TEXT NOT NULL,
        started_at REAL NOT NULL, ended_at REAL, exit_code INTEGER, signal INTEGER, message TEXT,
        PRIMARY KEY(job_id, attempt)) WITHOUT ROWID;
    CREATE TABLE workers(
        id TEXT PRIMARY KEY, hostname TEXT NOT NULL, resources_json TEXT NOT NULL, acked_seq INTEGER NOT NULL,
        draining INTEGER NOT NULL, last_seen REAL NOT NULL);
    CREATE TABLE logs(
        job_id TEXT NOT NULL, attempt INTEGER NOT NULL, line INTEGER NOT NULL, stream INTEGER NOT NULL,
        ts REAL NOT NULL, text TEXT NOT NULL, PRIMARY KEY(job_id, attempt, line)) WITHOUT ROWID;
    CREATE TABLE metrics(
        id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, attempt INTEGER NOT NULL, step INTEGER, ts REAL NOT NULL, json TEXT NOT NULL);
    CREATE INDEX metrics_by_job ON metrics(job_id, id);
    CREATE TABLE checkpoints(
        job_id TEXT NOT NULL, attempt INTEGER NOT NULL, step INTEGER NOT NULL, size INTEGER NOT NULL,
        blake3 TEXT NOT NULL, metric REAL, created_at REAL NOT NULL, file TEXT NOT NULL,
        PRIMARY KEY(job_id, step));
    CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    "#,
    // version 2: jobs are keyed by an integer the coordinator assigns in
    // submission order (`seq`), not by their id. Ids are hashes, so a unique
    // index on them took a million random B-tree inserts per million-job sweep
    // (most of a 9 s submit); appends in `seq` order are sequential. Id
    // uniqueness is checked in memory at submission, where all ids are.
    r#"
    CREATE TABLE jobs_v2(
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL, sweep_id TEXT NOT NULL, trial_id TEXT NOT NULL, ord INTEGER NOT NULL,
        seed INTEGER NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL, retries_used INTEGER NOT NULL, worker_id TEXT,
        cancel_requested INTEGER NOT NULL, final_metric REAL, best_metric REAL, result_recorded INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL);
    INSERT INTO jobs_v2(id,sweep_id,trial_id,ord,seed,state,attempt,retries_used,worker_id,cancel_requested,final_metric,best_metric,result_recorded,updated_at)
        SELECT id,sweep_id,trial_id,ord,seed,state,attempt,retries_used,worker_id,cancel_requested,final_metric,best_metric,result_recorded,updated_at
        FROM jobs ORDER BY sweep_id, ord;
    DROP TABLE jobs;
    ALTER TABLE jobs_v2 RENAME TO jobs;
    "#,
    // version 3: worker identity. A worker id once used with a client
    // certificate is usable only with it; a join-token worker's id comes with
    // a secret the coordinator issued (its BLAKE3 hash is kept).
    r#"
    ALTER TABLE workers ADD COLUMN cert_bound INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workers ADD COLUMN secret_hash TEXT;
    "#,
    // version 4: interruptions (worker deaths) in a row per job, so that a
    // job that kills its worker stops being requeued (max_worker_deaths).
    r#"
    ALTER TABLE jobs ADD COLUMN worker_deaths INTEGER NOT NULL DEFAULT 0;
    "#,
    // version 5: users. A sweep's owner (the name of the token that submitted
    // it) and the tokens `liandan tokens` issued (only their BLAKE3 hash).
    r#"
    ALTER TABLE sweeps ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    CREATE TABLE tokens(name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
    "#,
    // version 6: a deleted sweep's highest attempt number. Ids come from
    // names, so a sweep submitted again under a deleted one's name has the
    // same job ids: its attempts are numbered above every old one, and what
    // an old attempt still sends is fenced off as stale.
    r#"
    CREATE TABLE deleted_sweeps(id TEXT PRIMARY KEY, max_attempt INTEGER NOT NULL);
    "#,
];

pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    // Private before SQLite creates it (its WAL files inherit the mode). A
    // failure here shows up as SQLite's own error just below.
    let _ = liandan_common::lockdir::create_private_file(path);
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew { found: version });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// SQLite's write connection (WAL, `synchronous=FULL`).
pub(super) struct SqliteEngine {
    conn: Connection,
}

/// Opens (creating and migrating) the database at `path`: the engine for the
/// writer thread and a read connection.
pub(super) fn open_engine(path: &Path) -> Result<(SqliteEngine, SqliteReads), StoreError> {
    let mut writer = open(path)?;
    migrate(&mut writer)?;
    let reader = open(path)?;
    Ok((SqliteEngine { conn: writer }, SqliteReads::new(reader)))
}

impl Engine for SqliteEngine {
    fn commit(&mut self, batches: &[&[Op]]) -> Result<(), StoreError> {
        if batches.iter().all(|ops| ops.is_empty()) {
            // Only barriers: everything before them is already committed.
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for ops in batches {
            for op in ops.iter() {
                apply(&tx, op)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn apply(tx: &rusqlite::Transaction, op: &Op) -> Result<(), rusqlite::Error> {
    match op {
        Op::InsertSweep {
            id,
            name,
            spec_json,
            spec_hash,
            method,
            algorithm,
            created_at,
            owner,
        } => {
            tx.prepare_cached("INSERT INTO sweeps(id,name,spec_json,spec_hash,state,method,algorithm,created_at,owner) VALUES(?1,?2,?3,?4,'active',?5,?6,?7,?8)")?
                .execute(params![id, name, spec_json, spec_hash, method, algorithm, created_at, owner])?;
        }
        Op::InsertTrial {
            id,
            sweep_id,
            idx,
            params_json,
        } => {
            tx.prepare_cached(
                "INSERT INTO trials(id,sweep_id,idx,params_json) VALUES(?1,?2,?3,?4)",
            )?
            .execute(params![id, sweep_id, idx, params_json])?;
        }
        Op::InsertJobs(n) => insert_jobs(tx, n)?,
        Op::SetSweepState { id, state } => {
            tx.prepare_cached("UPDATE sweeps SET state=?2 WHERE id=?1")?
                .execute(params![id, state])?;
        }
        Op::FinishCancels => finish_cancels(tx)?,
        Op::UpdateJob(j) => {
            tx.prepare_cached(
                "UPDATE jobs SET state=?2, attempt=?3, retries_used=?4, worker_id=?5, cancel_requested=?6, final_metric=?7, best_metric=?8, result_recorded=?9, updated_at=?10, worker_deaths=?11 WHERE seq=?1",
            )?
            .execute(params![
                j.seq, j.state, j.attempt as i64, j.retries_used, j.worker_id.as_ref().map(|w| w.as_str()), j.cancel_requested, j.final_metric, j.best_metric, j.result_recorded,
                liandan_common::time::now_secs(), j.worker_deaths
            ])?;
        }
        Op::JobMetrics {
            seq,
            final_metric,
            best_metric,
        } => {
            tx.prepare_cached("UPDATE jobs SET final_metric=?2, best_metric=?3 WHERE seq=?1")?
                .execute(params![seq, final_metric, best_metric])?;
        }
        Op::InsertAttempt {
            job_id,
            attempt,
            worker_id,
            started_at,
        } => {
            tx.prepare_cached("INSERT INTO attempts(job_id,attempt,worker_id,state,started_at) VALUES(?1,?2,?3,'running',?4)")?
                .execute(params![job_id, *attempt as i64, worker_id, started_at])?;
        }
        Op::EndAttempt {
            job_id,
            attempt,
            state,
            ended_at,
            exit_code,
            signal,
            message,
        } => {
            tx.prepare_cached("UPDATE attempts SET state=?3, ended_at=?4, exit_code=?5, signal=?6, message=?7 WHERE job_id=?1 AND attempt=?2")?
                .execute(params![job_id, *attempt as i64, state, ended_at, exit_code, signal, message])?;
        }
        Op::Logs(rows) => insert_logs(tx, rows)?,
        Op::Metrics(rows) => insert_metrics(tx, rows)?,
        Op::UpsertWorker {
            id,
            hostname,
            resources_json,
            acked_seq,
            draining,
            last_seen,
            cert_bound,
            secret_hash,
        } => {
            tx.prepare_cached(
                "INSERT INTO workers(id,hostname,resources_json,acked_seq,draining,last_seen,cert_bound,secret_hash) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)
                 ON CONFLICT(id) DO UPDATE SET hostname=?2, resources_json=?3, acked_seq=max(acked_seq, ?4), draining=?5, last_seen=?6,
                 cert_bound=max(cert_bound, ?7), secret_hash=COALESCE(?8, secret_hash)",
            )?
            .execute(params![id, hostname, resources_json, *acked_seq as i64, draining, last_seen, cert_bound, secret_hash])?;
        }
        Op::DeleteWorker { id } => {
            tx.prepare_cached("DELETE FROM workers WHERE id=?1")?
                .execute(params![id])?;
        }
        Op::PutToken {
            name,
            role,
            hash,
            created_at,
        } => {
            tx.prepare_cached("INSERT INTO tokens(name,role,hash,created_at) VALUES(?1,?2,?3,?4)")?
                .execute(params![name, role, hash, created_at])?;
        }
        Op::DeleteSweep { id, max_attempt } => delete_sweep(tx, id, *max_attempt)?,
        Op::DeleteToken { name } => {
            tx.prepare_cached("DELETE FROM tokens WHERE name=?1")?
                .execute(params![name])?;
        }
        Op::WorkerAcked { id, acked_seq } => {
            tx.prepare_cached("UPDATE workers SET acked_seq=max(acked_seq, ?2) WHERE id=?1")?
                .execute(params![id, *acked_seq as i64])?;
        }
        Op::AddCounter { name, delta } => {
            tx.prepare_cached("INSERT INTO counters(name,value) VALUES(?1,?2) ON CONFLICT(name) DO UPDATE SET value=value+?2")?.execute(params![name, delta])?;
        }
        Op::InsertCheckpoint(c) => {
            tx.prepare_cached("INSERT OR REPLACE INTO checkpoints(job_id,attempt,step,size,blake3,metric,created_at,file) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)")?
                .execute(params![c.job_id, c.attempt as i64, c.step, c.size as i64, c.blake3, c.metric, c.created_at, c.file])?;
        }
        Op::DeleteCheckpoint { job_id, step } => {
            tx.prepare_cached("DELETE FROM checkpoints WHERE job_id=?1 AND step=?2")?
                .execute(params![job_id, step])?;
        }
    }
    Ok(())
}

fn insert_jobs(tx: &rusqlite::Transaction, n: &super::NewJobs) -> Result<(), rusqlite::Error> {
    let mut st = tx.prepare_cached(
        "INSERT INTO jobs(seq,id,sweep_id,trial_id,ord,seed,state,attempt,retries_used,cancel_requested,result_recorded,updated_at)
         VALUES(?1,?2,?3,?4,?5,?6,'queued',?8,0,0,0,?7)",
    )?;
    let now = liandan_common::time::now_secs();
    for (i, (id, trial, seed)) in n.jobs.iter().enumerate() {
        st.execute(params![
            n.first_seq + i as i64,
            id.as_str(),
            n.sweep_id.as_str(),
            trial.as_str(),
            n.first_ord + i as i64,
            seed,
            now,
            n.first_attempt as i64
        ])?;
    }
    Ok(())
}

/// Finishes a cancel a crash cut short: queued jobs of cancelled sweeps end
/// cancelled, running ones are asked to stop.
fn finish_cancels(tx: &rusqlite::Transaction) -> Result<(), rusqlite::Error> {
    let n = tx.execute(
        "UPDATE jobs SET state='cancelled' WHERE state='queued' AND sweep_id IN (SELECT id FROM sweeps WHERE state='cancelled')",
        [],
    )?;
    // Running ones are asked to stop (their workers hear it at hello).
    tx.execute(
        "UPDATE jobs SET cancel_requested=1 WHERE state='running' AND sweep_id IN (SELECT id FROM sweeps WHERE state='cancelled')",
        [],
    )?;
    if n > 0 {
        tracing::info!(jobs = n, "finished an interrupted cancel");
    }
    Ok(())
}

fn insert_logs(tx: &rusqlite::Transaction, rows: &[super::LogRow]) -> Result<(), rusqlite::Error> {
    let mut st = tx.prepare_cached(
        "INSERT OR IGNORE INTO logs(job_id,attempt,line,stream,ts,text) VALUES(?1,?2,?3,?4,?5,?6)",
    )?;
    for r in rows {
        st.execute(params![
            r.job_id,
            r.attempt as i64,
            r.line as i64,
            r.stream,
            r.ts,
            r.text
        ])?;
    }
    Ok(())
}

fn insert_metrics(
    tx: &rusqlite::Transaction,
    rows: &[super::MetricRow],
) -> Result<(), rusqlite::Error> {
    let mut st = tx.prepare_cached(
        "INSERT INTO metrics(job_id,attempt,step,ts,json) VALUES(?1,?2,?3,?4,?5)",
    )?;
    for r in rows {
        st.execute(params![r.job_id, r.attempt as i64, r.step, r.ts, r.json])?;
    }
    Ok(())
}

/// Removes a sweep and everything of its jobs, remembering its highest
/// attempt so a sweep submitted again under the id numbers above it.
fn delete_sweep(
    tx: &rusqlite::Transaction,
    id: &str,
    max_attempt: u64,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO deleted_sweeps(id,max_attempt) VALUES(?1,?2) ON CONFLICT(id) DO UPDATE SET max_attempt=max(max_attempt, ?2)",
    )?
    .execute(params![id, max_attempt as i64])?;
    for sql in [
        "DELETE FROM logs WHERE job_id IN (SELECT id FROM jobs WHERE sweep_id=?1)",
        "DELETE FROM metrics WHERE job_id IN (SELECT id FROM jobs WHERE sweep_id=?1)",
        "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE sweep_id=?1)",
        "DELETE FROM checkpoints WHERE job_id IN (SELECT id FROM jobs WHERE sweep_id=?1)",
        "DELETE FROM jobs WHERE sweep_id=?1",
        "DELETE FROM trials WHERE sweep_id=?1",
        "DELETE FROM sweeps WHERE id=?1",
    ] {
        tx.prepare_cached(sql)?.execute(params![id])?;
    }
    Ok(())
}

/// Reads a counter (0 when absent).
pub(super) fn counter(conn: &Connection, name: &str) -> Result<i64, rusqlite::Error> {
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name=?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn commits_are_durable_and_visible_and_migrations_are_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = Store::open(&path).unwrap();
        let mut futs = Vec::new();
        for i in 0..100 {
            futs.push(store.enqueue(vec![Op::AddCounter {
                name: "c".into(),
                delta: i,
            }]));
        }
        for f in futs {
            f.await.unwrap();
        }
        assert_eq!(store.read(|r| r.counter("c")).await.unwrap(), 4950);
        drop(store);
        // Reopening migrates nothing and keeps the data.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.read(|r| r.counter("c")).await.unwrap(), 4950);
        // A database from the future is refused with a clear message.
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("newer than this binary"), "{e}");
    }

    #[test]
    fn a_version_1_database_keeps_its_jobs_in_sweep_order_after_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (id, sweep, ord, state) in [
                ("job-b", "sw-2", 0, "queued"),
                ("job-a", "sw-1", 1, "succeeded"),
                ("job-c", "sw-1", 0, "running"),
            ] {
                conn.execute(
                    "INSERT INTO jobs(id,sweep_id,trial_id,ord,seed,state,attempt,retries_used,cancel_requested,final_metric,result_recorded,updated_at)
                     VALUES(?1,?2,'tr-x',?3,7,?4,1,0,0,0.5,1,0)",
                    params![id, sweep, ord, state],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        // Read as the migrated file holds it (a second connection; the store's own are busy).
        let c = Connection::open(&path).unwrap();
        let mut q = c
            .prepare("SELECT seq, id, state, final_metric FROM jobs ORDER BY seq")
            .unwrap();
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<f64>>(3)?,
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "job-c".into(), "running".into(), Some(0.5)),
                (2, "job-a".into(), "succeeded".into(), Some(0.5)),
                (3, "job-b".into(), "queued".into(), Some(0.5)),
            ]
        );
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        drop(store);
        assert_eq!(v, SCHEMA_VERSION);
    }
}
