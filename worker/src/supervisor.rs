//! Supervision: an assignment started as an attempt, job directories
//! retained or removed, checkpoints uploaded.

use crate::ctx::WorkerCtx;
use crate::ctx::{Running, StopReason};
use crate::{checkpoint, retention, runner};
use liandan_proto::v1 as pb;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Starts an assigned attempt: journal, fetch its checkpoint, run.
/// Takes an assignment. Not async on purpose: the session loop that calls it
/// is the only place acks are processed, and anything here that waited (for
/// spool space, say, which only an ack frees) would deadlock it; all waiting
/// happens in the spawned task.
pub(crate) fn start(ctx: &Arc<WorkerCtx>, a: pb::Assignment) {
    let key = (a.job_id.clone(), a.attempt);
    if liandan_common::ids::JobId::parse(&a.job_id).is_err() {
        tracing::error!(job = %a.job_id, "refusing an assignment with an invalid job id");
        return;
    }
    if ctx.stopping.load(Ordering::SeqCst) {
        // Crossed our stop announcement: hand it straight back, no retry spent.
        let exited = crate::ctx::exit_record(
            pb::Outcome::Preempted,
            -1,
            0,
            "the worker is shutting down".into(),
        );
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
                notices: None,
            },
        );
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        attempt_task(&ctx, &a, stop_rx).await;
        // However the task ended: the attempt is no longer this worker's.
        ctx.running().remove(&(a.job_id.clone(), a.attempt));
    });
}

/// An assigned attempt from its directory to its end: journal, spec,
/// resume checkpoint, run.
async fn attempt_task(
    ctx: &Arc<WorkerCtx>,
    a: &pb::Assignment,
    stop_rx: watch::Receiver<Option<StopReason>>,
) {
    // Retention may be removing this job's old directories right now.
    ctx.wait_not_retiring(&a.job_id).await;
    let job_dir = ctx.jobs_dir.join(&a.job_id);
    let dir = ctx.attempt_dir(&a.job_id, a.attempt);
    if let Err(e) = runner::journal(ctx, a, &dir).await {
        tracing::error!(error = %e, "cannot journal the attempt");
    }
    let spec = match serde_json::from_str::<liandan_common::sweep::SweepSpec>(&a.spec_json) {
        Ok(s) => s,
        Err(e) => {
            let rec = pb::Record {
                seq: 0,
                job_id: a.job_id.clone(),
                attempt: a.attempt,
                body: Some(pb::record::Body::Exited(crate::ctx::exit_record(
                    pb::Outcome::SpawnFailed,
                    -1,
                    0,
                    format!("bad spec from coordinator: {e}"),
                ))),
            };
            let seq = ctx.spool.append(vec![rec]).await;
            let _ = ctx
                .spool
                .journal_set_exit(a.job_id.clone(), a.attempt, seq)
                .await;
            ctx.mark_ended(&a.job_id, a.attempt);
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
}

/// Removes job directories nothing is owed from (see [`retention`]): at
/// start, whenever the coordinator acknowledged an attempt's end (at most
/// every few seconds), and every `retention_interval_secs`.
pub(crate) async fn retention_loop(ctx: Arc<WorkerCtx>) {
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
pub(crate) async fn upload_loop(ctx: Arc<WorkerCtx>) {
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
