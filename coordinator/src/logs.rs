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
        .read(move |c| c.log_lines(&key, attempt, from, stream, PAGE))
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| pb::LogLine {
            job_id: String::new(),
            attempt,
            line: r.line,
            stream: if r.stream == 1 { "stderr" } else { "stdout" }.into(),
            ts: r.ts,
            text: r.text,
        })
        .collect())
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
        .read(move |c| c.last_log_line(&key, attempt, stream))
        .await?)
}

/// What of a job's log to send ([`follow`]).
pub struct LogRead {
    pub job: JobId,
    pub attempt: u64,
    /// The first line (from 1).
    pub from: u64,
    /// Or the last this many (0 for from `from`).
    pub tail: u64,
    /// Go on with new lines until the attempt ends.
    pub follow: bool,
    /// 0 = stdout, 1 = stderr, None for both.
    pub stream: Option<u8>,
}

/// Sends a job's log lines from `from` (or the last `tail`), then, with
/// `follow`, new lines until the attempt ends. Ends when the client goes away.
pub async fn follow(core: Arc<Core>, req: LogRead, tx: mpsc::Sender<Result<pb::LogLine, Status>>) {
    let LogRead {
        job,
        attempt,
        from,
        tail,
        follow,
        stream,
    } = req;
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
        // An attempt that has not started yet (its job is queued) is waited for.
        let done = core.job_progress(&job).is_none_or(|(cur, terminal)| {
            terminal || cur > attempt || (cur < attempt && !core.job_queued(&job))
        });
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

/// One page of a job's metric records (all attempts, or one) after the row
/// `after`, and the next page's token ("" after the last).
pub async fn metrics(
    core: &Core,
    job: &JobId,
    attempt: u64,
    page_size: u32,
    token: &str,
) -> Result<(Vec<pb::MetricRecord>, String), CoreError> {
    let after: i64 = match token {
        "" => 0,
        t => t.parse().map_err(|_| {
            CoreError::InvalidArgument(format!(
                "page_token {:?} is not one this coordinator gave out; start from the first page",
                t.chars().take(80).collect::<String>()
            ))
        })?,
    };
    let size = match page_size {
        0 => METRICS_PAGE,
        n => (n as usize).min(METRICS_PAGE),
    };
    let key = job.to_string();
    let max_bytes = core.page_bytes();
    let (rows, last, more) = core
        .store()
        .read(move |c| {
            let rows = c.metrics_after(&key, attempt, after, size as i64 + 1)?;
            let mut out = Vec::new();
            let (mut bytes, mut last, mut more) = (0, after, false);
            for row in rows {
                let (id, rec) = (
                    row.id,
                    pb::MetricRecord {
                        attempt: row.attempt,
                        step: row.step,
                        ts: row.ts,
                        json: row.json,
                    },
                );
                if out.len() >= size || bytes >= max_bytes {
                    more = true;
                    break;
                }
                bytes += prost::Message::encoded_len(&rec);
                last = id;
                out.push(rec);
            }
            Ok((out, last, more))
        })
        .await?;
    Ok((
        rows,
        if more {
            last.to_string()
        } else {
            String::new()
        },
    ))
}

/// Metric records in one page, at most.
pub const METRICS_PAGE: usize = 10_000;
