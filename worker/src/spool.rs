//! The local durable spool and journal (`worker.db`, SQLite).
//!
//! Spool: every record a job produces (log line, metric, start, exit) gets the
//! next sequence number and goes into the spool first; the session sends the
//! unacknowledged tail and deletes records only when the coordinator
//! acknowledges them. After a reconnect or a restart the tail is sent again;
//! the coordinator stores each sequence number once.
//!
//! Bound: when the spool holds `spool_max_bytes`, [`Spool::append`] waits for
//! acknowledgements before accepting more, so a job's output reader stops
//! reading and the job blocks on its next write. Nothing is dropped.
//!
//! Journal: the attempts this worker holds (written before the process starts),
//! so a restarted worker knows what was running.
//!
//! Sequence numbers are never reused, even after a crash: a record can reach
//! the coordinator before its spool row is written (the session sends from
//! memory), so the highest number on disk may be below one the coordinator
//! has. Numbers are therefore handed out from a reserved block whose end is on
//! disk (fsynced) before any number of the block is used, and a restarted
//! worker starts above it. (The chaos suite found the reuse: a worker killed
//! right after sending an exit record reused its number for the next record,
//! the coordinator took that one for a duplicate, and the job it ended stayed
//! "running" forever.)

use liandan_proto::v1 as pb;
use prost::Message;
use rusqlite::{params, Connection};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::Notify;

/// Version of the worker's on-disk format.
pub const JOURNAL_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spool(seq INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS attempts(
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER, start_ticks INTEGER,
    gpus TEXT NOT NULL, cpus INTEGER NOT NULL, dir TEXT NOT NULL, exit_seq INTEGER,
    PRIMARY KEY(job_id, attempt));
CREATE TABLE IF NOT EXISTS uploads(
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, blake3 TEXT NOT NULL, metric REAL, done INTEGER NOT NULL,
    PRIMARY KEY(job_id, attempt, step));
"#;

/// A journaled attempt.
#[derive(Clone, Debug)]
pub struct JournalEntry {
    pub job_id: String,
    pub attempt: u64,
    pub pid: Option<i32>,
    pub start_ticks: Option<u64>,
    pub gpus: Vec<String>,
    pub cpus: u32,
    pub dir: String,
    /// Sequence number of its exit record, once it ended.
    pub exit_seq: Option<u64>,
}

/// A checkpoint waiting for (or done with) upload.
#[derive(Clone, Debug)]
pub struct UploadEntry {
    pub job_id: String,
    pub attempt: u64,
    pub step: i64,
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub metric: Option<f64>,
    pub done: bool,
}

type JournalWrite = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

/// Sequence numbers reserved at a time (one fsynced write per block).
const SEQ_BLOCK: u64 = 100_000;

enum DbOp {
    Insert(Vec<(u64, Vec<u8>)>),
    /// Durably records that numbers up to this one may be used.
    Reserve(u64, tokio::sync::oneshot::Sender<rusqlite::Result<()>>),
    DeleteUpTo(u64),
    Exec(
        JournalWrite,
        tokio::sync::oneshot::Sender<rusqlite::Result<()>>,
    ),
}

struct Inner {
    next_seq: u64,
    /// Numbers up to here are reserved on disk (see the module docs).
    reserved: u64,
    pending: VecDeque<(u64, pb::Record, usize)>,
    /// The unacknowledged exit records, by sequence number: their attempts
    /// still count as held (the coordinator has not heard they ended).
    exits: std::collections::BTreeMap<u64, (String, u64)>,
    bytes: u64,
    /// Records up to here were sent on the current session.
    sent_up_to: u64,
}

/// The spool and journal. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Mutex<Inner>>,
    db: mpsc::Sender<DbOp>,
    reader: Arc<Mutex<Connection>>,
    /// Woken when records are appended.
    pub new_records: Arc<Notify>,
    space: Arc<Notify>,
    max_bytes: u64,
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("worker database {0}: {1}")]
    Open(String, rusqlite::Error),
    #[error("worker database format {found} is newer than this binary ({JOURNAL_VERSION}); upgrade liandan-worker")]
    TooNew { found: i64 },
    #[error("worker database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("worker database writer stopped")]
    Gone,
}

impl Spool {
    pub fn open(path: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        // Private before SQLite creates it (its WAL files inherit the mode).
        let _ = liandan_common::lockdir::create_private_file(path);
        let open = || -> Result<Connection, SpoolError> {
            let c = Connection::open(path)
                .map_err(|e| SpoolError::Open(path.display().to_string(), e))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            // Survives a process crash; a power cut can lose only records not
            // yet reported to the coordinator (invariant 4 is about reported ones).
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            Ok(c)
        };
        let w = open()?;
        w.execute_batch(SCHEMA)?;
        let found: Option<i64> = w
            .query_row("SELECT value FROM meta WHERE key='version'", [], |r| {
                r.get::<_, String>(0)
            })
            .ok()
            .and_then(|v| v.parse().ok());
        match found {
            Some(v) if v > JOURNAL_VERSION => return Err(SpoolError::TooNew { found: v }),
            Some(_) => {}
            None => {
                w.execute(
                    "INSERT OR REPLACE INTO meta(key,value) VALUES('version', ?1)",
                    [JOURNAL_VERSION.to_string()],
                )?;
            }
        }
        let mut pending = VecDeque::new();
        let mut exits = std::collections::BTreeMap::new();
        let mut bytes = 0u64;
        // `last_seq`: the high-water mark of databases from before the
        // reservation (`seq_reserved`, below), which bounds every number since.
        let mut max_seq: u64 = w
            .query_row("SELECT value FROM meta WHERE key='last_seq'", [], |r| {
                r.get::<_, String>(0)
            })
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        {
            let mut q = w.prepare("SELECT seq, record FROM spool ORDER BY seq")?;
            let rows = q.query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })?;
            for row in rows {
                let (seq, blob) = row?;
                if let Ok(rec) = pb::Record::decode(blob.as_slice()) {
                    bytes += blob.len() as u64;
                    if matches!(rec.body, Some(pb::record::Body::Exited(_))) {
                        exits.insert(seq, (rec.job_id.clone(), rec.attempt));
                    }
                    pending.push_back((seq, rec, blob.len()));
                }
                max_seq = max_seq.max(seq);
            }
        }
        // Start above every number a previous run may have sent.
        let reserved: u64 = w
            .query_row("SELECT value FROM meta WHERE key='seq_reserved'", [], |r| {
                r.get::<_, String>(0)
            })
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let max_seq = max_seq.max(reserved);
        let reader = open()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("liandan-spool".into())
            .spawn(move || db_loop(w, rx))
            .map_err(|_| SpoolError::Gone)?;
        Ok(Spool {
            inner: Arc::new(Mutex::new(Inner {
                next_seq: max_seq + 1,
                reserved: max_seq,
                pending,
                exits,
                bytes,
                sent_up_to: 0,
            })),
            db: tx,
            reader: Arc::new(Mutex::new(reader)),
            new_records: Arc::new(Notify::new()),
            space: Arc::new(Notify::new()),
            max_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records (their `seq` is assigned here) and returns the last
    /// sequence number. Waits while the spool is full.
    pub async fn append(&self, records: Vec<pb::Record>) -> u64 {
        loop {
            let notified = self.space.notified();
            {
                let st = self.lock();
                if st.bytes < self.max_bytes || st.pending.is_empty() {
                    break;
                }
            }
            notified.await;
        }
        let n = records.len() as u64;
        // The reservation check and the numbering happen under one lock: two
        // appenders that both passed a separate check could otherwise number
        // past the reservation (and a crash then reuse those numbers).
        let mut records = Some(records);
        let last = loop {
            let want = {
                let mut st = self.lock();
                if st.next_seq + n <= st.reserved + 1 {
                    let mut rows = Vec::with_capacity(n as usize);
                    for mut rec in records.take().unwrap_or_default() {
                        rec.seq = st.next_seq;
                        st.next_seq += 1;
                        let blob = rec.encode_to_vec();
                        st.bytes += blob.len() as u64;
                        if matches!(rec.body, Some(pb::record::Body::Exited(_))) {
                            st.exits.insert(rec.seq, (rec.job_id.clone(), rec.attempt));
                        }
                        st.pending.push_back((rec.seq, rec, blob.len()));
                        rows.push((st.next_seq - 1, blob));
                    }
                    // Sent to the writer under the lock, so the database sees seq order.
                    let _ = self.db.send(DbOp::Insert(rows));
                    break st.next_seq - 1;
                }
                st.next_seq + n - 1 + SEQ_BLOCK
            };
            self.reserve(want).await;
        };
        self.new_records.notify_one();
        last
    }

    /// Reserves sequence numbers up to `upto` on disk; returns once the
    /// reservation is durable. If the disk write fails, nothing is reserved and
    /// the caller retries after a pause (a record is never numbered from an
    /// unreserved block).
    async fn reserve(&self, upto: u64) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ok = self.db.send(DbOp::Reserve(upto, tx)).is_ok() && matches!(rx.await, Ok(Ok(())));
        if ok {
            let mut st = self.lock();
            st.reserved = st.reserved.max(upto);
        } else {
            tracing::error!(
                upto,
                "cannot reserve record sequence numbers in the worker database; retrying"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// The highest sequence number assigned so far.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Drops records the coordinator acknowledged; true when an exit record
    /// was among them (an attempt is now off the worker's books).
    pub fn ack(&self, seq: u64) -> bool {
        let ended = {
            let mut st = self.lock();
            let before = st.exits.len();
            while st.pending.front().is_some_and(|(s, _, _)| *s <= seq) {
                if let Some((_, _, n)) = st.pending.pop_front() {
                    st.bytes -= n as u64;
                }
            }
            st.exits = st.exits.split_off(&seq.saturating_add(1));
            // Sequence numbers are never reused, even if the spool was emptied.
            if st.next_seq <= seq {
                st.next_seq = seq.saturating_add(1);
            }
            st.exits.len() < before
        };
        let _ = self.db.send(DbOp::DeleteUpTo(seq));
        self.space.notify_waiters();
        ended
    }

    /// Attempts whose exit record the coordinator has not acknowledged yet.
    pub fn unacked_exits(&self) -> Vec<(String, u64)> {
        self.lock().exits.values().cloned().collect()
    }

    /// Starts a new session: everything unacknowledged is to be sent again.
    pub fn rewind(&self) {
        self.lock().sent_up_to = 0;
    }

    /// Takes records not yet sent on this session: up to `max` of them and
    /// `max_bytes` of encoded size (at least one), so a batch always fits
    /// the coordinator's message limit, whatever the job printed.
    pub fn next_batch(&self, max: usize, max_bytes: usize) -> Vec<pb::Record> {
        let mut st = self.lock();
        let from = st.sent_up_to;
        let (mut bytes, mut taken) = (0usize, 0usize);
        let batch: Vec<pb::Record> = st
            .pending
            .iter()
            .filter(|(s, _, _)| *s > from)
            .take(max)
            .take_while(|(_, _, n)| {
                taken += 1;
                bytes += n;
                taken == 1 || bytes <= max_bytes
            })
            .map(|(_, r, _)| r.clone())
            .collect();
        if let Some(last) = batch.last() {
            st.sent_up_to = last.seq;
        }
        batch
    }

    /// Number of records not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.lock().pending.len()
    }

    /// Runs a journal write on the writer thread, after every earlier write.
    pub async fn exec(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), SpoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.db
            .send(DbOp::Exec(Box::new(f), tx))
            .map_err(|_| SpoolError::Gone)?;
        rx.await
            .map_err(|_| SpoolError::Gone)?
            .map_err(SpoolError::from)
    }

    /// Runs a read on a blocking thread: SQLite calls block, and these run
    /// from async code (per job, several times a second).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let c = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&c).map_err(SpoolError::from)
        })
        .await
        .map_err(|_| SpoolError::Gone)?
    }

    /// Persists the worker's identity.
    pub async fn set_meta(&self, key: &'static str, value: String) -> Result<(), SpoolError> {
        self.exec(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO meta(key,value) VALUES(?1,?2)",
                params![key, value],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>, SpoolError> {
        let key = key.to_string();
        self.read(move |c| {
            c.query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
        })
        .await
    }

    pub async fn journal_insert(&self, e: JournalEntry) -> Result<(), SpoolError> {
        self.exec(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO attempts(job_id,attempt,pid,start_ticks,gpus,cpus,dir,exit_seq) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
                params![e.job_id, e.attempt as i64, e.pid, e.start_ticks.map(|t| t as i64), e.gpus.join(","), e.cpus, e.dir, e.exit_seq.map(|s| s as i64)],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn journal_set_pid(
        &self,
        job: String,
        attempt: u64,
        pid: i32,
        start_ticks: Option<u64>,
    ) -> Result<(), SpoolError> {
        self.exec(move |c| {
            c.execute(
                "UPDATE attempts SET pid=?3, start_ticks=?4 WHERE job_id=?1 AND attempt=?2",
                params![job, attempt as i64, pid, start_ticks.map(|t| t as i64)],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn journal_set_exit(
        &self,
        job: String,
        attempt: u64,
        seq: u64,
    ) -> Result<(), SpoolError> {
        self.exec(move |c| {
            c.execute(
                "UPDATE attempts SET exit_seq=?3 WHERE job_id=?1 AND attempt=?2",
                params![job, attempt as i64, seq as i64],
            )
            .map(|_| ())
        })
        .await
    }

    /// Forgets attempts whose exit record the coordinator acknowledged.
    pub async fn journal_prune(&self, acked: u64) -> Result<(), SpoolError> {
        self.exec(move |c| {
            c.execute(
                "DELETE FROM attempts WHERE exit_seq IS NOT NULL AND exit_seq <= ?1",
                [acked as i64],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn journal(&self) -> Result<Vec<JournalEntry>, SpoolError> {
        self.read(|c| {
            let mut q = c.prepare("SELECT job_id, attempt, pid, start_ticks, gpus, cpus, dir, exit_seq FROM attempts ORDER BY job_id, attempt")?;
            let rows = q.query_map([], |r| {
                let gpus: String = r.get(4)?;
                Ok(JournalEntry {
                    job_id: r.get(0)?,
                    attempt: r.get::<_, i64>(1)? as u64,
                    pid: r.get(2)?,
                    start_ticks: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                    gpus: gpus.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
                    cpus: r.get(5)?,
                    dir: r.get(6)?,
                    exit_seq: r.get::<_, Option<i64>>(7)?.map(|s| s as u64),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Forgets finished uploads of attempts no longer journaled (acknowledged).
    pub async fn uploads_prune(&self) -> Result<(), SpoolError> {
        self.exec(|c| {
            c.execute(
                "DELETE FROM uploads WHERE done=1 AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.job_id=uploads.job_id AND a.attempt=uploads.attempt)",
                [],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn upload_insert(&self, u: UploadEntry) -> Result<(), SpoolError> {
        self.exec(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO uploads(job_id,attempt,step,path,size,blake3,metric,done) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
                params![u.job_id, u.attempt as i64, u.step, u.path, u.size as i64, u.blake3, u.metric, u.done],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn upload_done(
        &self,
        job: String,
        attempt: u64,
        step: i64,
    ) -> Result<(), SpoolError> {
        self.exec(move |c| {
            c.execute(
                "UPDATE uploads SET done=1 WHERE job_id=?1 AND attempt=?2 AND step=?3",
                params![job, attempt as i64, step],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn uploads_pending(&self) -> Result<Vec<UploadEntry>, SpoolError> {
        self.read(|c| {
            let mut q = c.prepare("SELECT job_id, attempt, step, path, size, blake3, metric, done FROM uploads WHERE done=0 ORDER BY job_id, attempt, step")?;
            let rows = q.query_map([], |r| {
                Ok(UploadEntry {
                    job_id: r.get(0)?,
                    attempt: r.get::<_, i64>(1)? as u64,
                    step: r.get(2)?,
                    path: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                    blake3: r.get(5)?,
                    metric: r.get(6)?,
                    done: r.get(7)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn uploads_known(&self, job: &str, attempt: u64) -> Result<Vec<i64>, SpoolError> {
        let job = job.to_string();
        self.read(move |c| {
            let mut q = c.prepare("SELECT step FROM uploads WHERE job_id=?1 AND attempt=?2")?;
            let rows = q.query_map(params![job, attempt as i64], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }
}

fn db_loop(mut conn: Connection, rx: mpsc::Receiver<DbOp>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < 1024 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut replies = Vec::new();
        let mut sync = false;
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for op in ops {
                match op {
                    DbOp::Reserve(upto, reply) => {
                        let r = tx
                            .execute(
                                "INSERT INTO meta(key,value) VALUES('seq_reserved', ?1) ON CONFLICT(key) DO UPDATE SET value=max(CAST(value AS INTEGER), CAST(?1 AS INTEGER))",
                                [upto.to_string()],
                            )
                            .map(|_| ());
                        sync = true;
                        replies.push((reply, r));
                    }
                    DbOp::Insert(rows) => {
                        let mut st = tx.prepare_cached(
                            "INSERT OR REPLACE INTO spool(seq, record) VALUES(?1, ?2)",
                        )?;
                        for (seq, blob) in rows {
                            st.execute(params![seq as i64, blob])?;
                        }
                    }
                    DbOp::DeleteUpTo(seq) => {
                        tx.prepare_cached("DELETE FROM spool WHERE seq <= ?1")?
                            .execute([seq as i64])?;
                    }
                    DbOp::Exec(f, reply) => {
                        let r = f(&tx);
                        replies.push((reply, r));
                    }
                }
            }
            tx.commit()?;
            if sync {
                // synchronous=NORMAL does not fsync a WAL commit; a checkpoint
                // does (WAL and database file), so the reservation survives a
                // power cut too.
                let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get(0))?;
                if busy != 0 {
                    return Err(rusqlite::Error::ToSqlConversionFailure(
                        "the reservation could not be synced (checkpoint busy)".into(),
                    ));
                }
            }
            Ok(())
        })();
        if let Err(e) = &result {
            tracing::error!(error = %e, "worker database write failed");
        }
        for (reply, r) in replies {
            let r = match (&result, r) {
                (Err(e), _) => Err(rusqlite::Error::ToSqlConversionFailure(
                    e.to_string().into(),
                )),
                (Ok(()), r) => r,
            };
            let _ = reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &str) -> pb::Record {
        pb::Record {
            seq: 0,
            job_id: job.into(),
            attempt: 1,
            body: None,
        }
    }

    /// A worker killed after sending records but before its spool wrote them
    /// must not number its next records with the same sequence numbers: the
    /// coordinator would take them for duplicates and drop them.
    #[tokio::test]
    async fn a_restart_never_reuses_a_sequence_number_the_disk_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.db");
        let sent = {
            let spool = Spool::open(&path, 1 << 20).unwrap();
            let last = spool.append(vec![record("job-a"), record("job-b")]).await;
            spool.exec(|_| Ok(())).await.unwrap();
            last
        };
        assert_eq!(sent, 2);
        // The crash: the rows of the records already sent never reached the disk.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("DELETE FROM spool; DELETE FROM meta WHERE key='last_seq';")
                .unwrap();
        }
        let spool = Spool::open(&path, 1 << 20).unwrap();
        let next = spool.append(vec![record("job-c")]).await;
        assert!(
            next > sent,
            "sequence number {next} reused (sent up to {sent})"
        );
        // And the reservation itself is on disk before a number is used.
        let reserved: u64 = spool
            .read(|c| {
                c.query_row("SELECT value FROM meta WHERE key='seq_reserved'", [], |r| {
                    r.get::<_, String>(0)
                })
            })
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert!(reserved >= next);
    }

    /// Many appenders at once, each batch crossing reservation blocks: no
    /// number may pass the reservation on disk, so a crash right after can
    /// never hand out a number twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_never_number_past_the_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.db");
        let spool = std::sync::Arc::new(Spool::open(&path, u64::MAX).unwrap());
        let batch = (SEQ_BLOCK / 3 + 7) as usize;
        let mut highest = 0;
        for _round in 0..6 {
            let mut tasks = Vec::new();
            for t in 0..8 {
                let sp = spool.clone();
                tasks.push(tokio::spawn(async move {
                    let recs = (0..batch).map(|_| record(&format!("job-{t}"))).collect();
                    sp.append(recs).await
                }));
            }
            for t in tasks {
                highest = highest.max(t.await.unwrap());
            }
            let st = spool.lock();
            assert!(
                st.next_seq - 1 <= st.reserved,
                "numbered up to {} with only {} reserved",
                st.next_seq - 1,
                st.reserved
            );
        }
        spool.exec(|_| Ok(())).await.unwrap();
        drop(spool);
        // The crash: every spooled row lost; the reservation alone survives.
        Connection::open(&path)
            .unwrap()
            .execute_batch("DELETE FROM spool; DELETE FROM meta WHERE key='last_seq';")
            .unwrap();
        let spool = Spool::open(&path, 1 << 20).unwrap();
        let next = spool.append(vec![record("job-z")]).await;
        assert!(
            next > highest,
            "sequence number {next} reused (assigned up to {highest})"
        );
    }

    /// Heartbeats count an ended attempt as held until its exit record is
    /// acknowledged: tracked on append, dropped on ack, rebuilt on reopen.
    #[tokio::test]
    async fn unacknowledged_exits_stay_held_until_acked_and_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.db");
        let exit = |job: &str| pb::Record {
            seq: 0,
            job_id: job.into(),
            attempt: 2,
            body: Some(pb::record::Body::Exited(pb::JobExited::default())),
        };
        let seq_a = {
            let spool = Spool::open(&path, 1 << 20).unwrap();
            let a = spool.append(vec![record("job-x"), exit("job-a")]).await;
            let b = spool.append(vec![exit("job-b")]).await;
            assert_eq!(
                spool.unacked_exits(),
                vec![("job-a".to_string(), 2), ("job-b".to_string(), 2)]
            );
            spool.ack(a);
            assert_eq!(spool.unacked_exits(), vec![("job-b".to_string(), 2)]);
            spool.exec(|_| Ok(())).await.unwrap();
            b
        };
        let spool = Spool::open(&path, 1 << 20).unwrap();
        assert_eq!(
            spool.unacked_exits(),
            vec![("job-b".to_string(), 2)],
            "rebuilt from disk"
        );
        spool.ack(seq_a + 10);
        assert!(spool.unacked_exits().is_empty());
    }
}
