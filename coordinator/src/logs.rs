//! Reading stored log lines and metrics, and following a job's log as new
//! lines become durable (woken by the core's log generation counter, so a line
//! reaches a follower as soon as its batch commits).

use crate::core::{Core, CoreError};
use liandan_common::ids::JobId;
use liandan_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

const PAGE: i64 = 5000;

async fn read_page(
    core: &Core,
    job: &JobId,
    attempt: u64,
    from: u64,
    stream: Option<u8>,
) -> Result<Vec<pb::LogLine>, CoreError> {
    let key = job.to_string();
    let rows = core
        .store()
        .read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT line, stream, ts, text FROM logs WHERE job_id=?1 AND attempt=?2 AND line>=?3 AND (?4 IS NULL OR stream=?4) ORDER BY line LIMIT ?5",
            )?;
            let rows = st.query_map(rusqlite::params![key, attempt as i64, from as i64, stream, PAGE], |r| {
                Ok(pb::LogLine {
                    job_id: String::new(),
                    attempt,
                    line: r.get::<_, i64>(0)? as u64,
                    stream: if r.get::<_, u8>(1)? == 1 { "stderr".into() } else { "stdout".into() },
                    ts: r.get(2)?,
                    text: r.get(3)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(rows)
}

async fn last_line(
    core: &Core,
    job: &JobId,
    attempt: u64,
    stream: Option<u8>,
) -> Result<u64, CoreError> {
    let key = job.to_string();
    Ok(core
        .store()
        .read(move |c| {
            c.query_row(
                "SELECT COALESCE(MAX(line), 0) FROM logs WHERE job_id=?1 AND attempt=?2 AND (?3 IS NULL OR stream=?3)",
                rusqlite::params![key, attempt as i64, stream],
                |r| r.get::<_, i64>(0),
            )
        })
        .await? as u64)
}

/// Sends a job's log lines from `from` (or the last `tail`), then, with
/// `follow`, new lines until the attempt ends. Ends when the client goes away.
#[allow(clippy::too_many_arguments)]
pub async fn follow(
    core: Arc<Core>,
    job: JobId,
    attempt: u64,
    from: u64,
    tail: u64,
    follow: bool,
    stream: Option<u8>,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
) {
    let mut updates = core.log_updates();
    let mut next = from;
    if tail > 0 {
        match last_line(&core, &job, attempt, stream).await {
            Ok(last) => next = next.max(last.saturating_sub(tail) + 1),
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
    let mut finishing = false;
    loop {
        // Mark the generation we have seen before reading, so no commit is missed.
        updates.borrow_and_update();
        let page = match read_page(&core, &job, attempt, next, stream).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let full = page.len() as i64 == PAGE;
        for mut line in page {
            next = line.line + 1;
            line.job_id = job.to_string();
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        if !follow || finishing {
            return;
        }
        let done = core
            .job_progress(&job)
            .is_none_or(|(cur, terminal)| terminal || cur != attempt);
        if done {
            // Everything visible in memory was queued to the store; an empty
            // commit is a barrier after which it is all durable. Read once more.
            if core.store().commit(Vec::new()).await.is_err() {
                return;
            }
            finishing = true;
            continue;
        }
        tokio::select! {
            _ = updates.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// A job's metric records (all attempts, or one).
pub async fn metrics(
    core: &Core,
    job: &JobId,
    attempt: u64,
) -> Result<Vec<pb::MetricRecord>, CoreError> {
    let key = job.to_string();
    Ok(core
        .store()
        .read(move |c| {
            let mut st = c.prepare_cached("SELECT attempt, step, ts, json FROM metrics WHERE job_id=?1 AND (?2 = 0 OR attempt=?2) ORDER BY id")?;
            let rows = st.query_map(rusqlite::params![key, attempt as i64], |r| {
                Ok(pb::MetricRecord { attempt: r.get::<_, i64>(0)? as u64, step: r.get(1)?, ts: r.get(2)?, json: r.get(3)? })
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })
        .await?)
}
