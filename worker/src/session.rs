//! The session with the coordinator: connect with backoff, hello, then
//! heartbeats, assignments, stops and records both ways.

use crate::ctx::WorkerCtx;
use crate::supervisor::start;
use liandan_common::ids::WorkerId;
use liandan_proto::v1 as pb;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

pub(crate) async fn connect_loop(
    ctx: Arc<WorkerCtx>,
    endpoint: Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let max = Duration::from_secs_f64(ctx.cfg.reconnect_max_secs);
    let mut ready_sent = false;
    loop {
        ctx.liveness.beat();
        if *stop.borrow() {
            return;
        }
        let connected = tokio::select! {
            c = endpoint.connect() => c,
            _ = stop.changed() => return,
        };
        match connected {
            Ok(channel) => {
                *ctx.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
                let r = session(&ctx, channel, &mut stop, &mut ready_sent, &mut backoff).await;
                *ctx.channel.lock().unwrap_or_else(|p| p.into_inner()) = None;
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "session with the coordinator ended; reconnecting")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, coordinator = %ctx.cfg.coordinator, "cannot reach the coordinator; retrying")
            }
        }
        // Exponential backoff with jitter, so a fleet does not reconnect in lockstep.
        let jitter = Duration::from_millis(
            liandan_common::rng::Rng::keyed(
                "jitter",
                &[liandan_common::time::now_secs().to_bits()],
            )
            .below(backoff.as_millis() as u64 / 2 + 1),
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(max);
    }
}

async fn session(
    ctx: &Arc<WorkerCtx>,
    channel: Channel,
    stop: &mut watch::Receiver<bool>,
    ready_sent: &mut bool,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut client = ctx.client(channel);
    let (out, out_rx) = mpsc::channel::<pb::WorkerMessage>(32);
    let secret = ctx
        .identity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let me = ctx
        .worker_id
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|w| w.to_string())
        .unwrap_or_default();
    let hello = pb::Hello {
        worker_id: me,
        worker_secret: secret,
        hostname: gethostname::gethostname().to_string_lossy().to_string(),
        resources: Some(ctx.resources.clone()),
        held: ctx.held().await,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    out.send(pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Hello(hello)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let welcome = match inbound.message().await.map_err(|e| e.to_string())? {
        Some(pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(w)),
        }) => w,
        _ => return Err("the coordinator did not answer hello with welcome".into()),
    };
    if !welcome.worker_secret.is_empty() {
        // Issued an identity (a first hello, or one from before issued
        // identities): kept in the state dir before anything else happens.
        let id = WorkerId::parse(&welcome.worker_id).map_err(|e| e.to_string())?;
        ctx.spool
            .set_meta("worker_id", id.to_string())
            .await
            .map_err(|e| e.to_string())?;
        ctx.spool
            .set_meta("worker_secret", welcome.worker_secret.clone())
            .await
            .map_err(|e| e.to_string())?;
        *ctx.identity.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((id.to_string(), welcome.worker_secret.clone()));
        *ctx.worker_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        tracing::info!(worker = %id, "the coordinator issued this worker its identity");
    }
    *backoff = Duration::from_millis(100);
    let ended = ctx.spool.ack(welcome.acked_seq);
    let _ = ctx.spool.journal_prune(welcome.acked_seq).await;
    if ended {
        ctx.retention.notify_one();
    }
    for k in &welcome.kill {
        tracing::warn!(job = %k.job_id, attempt = k.attempt, reason = ?k.reason(), "coordinator says this attempt must stop");
        ctx.stop(&k.job_id, k.attempt, crate::ctx::stop_reason(k));
    }
    ctx.spool.rewind();
    tracing::info!(worker = %ctx.id(), acked = welcome.acked_seq, unacked = ctx.spool.unacked(), "connected to the coordinator");
    if !*ready_sent {
        *ready_sent = true;
        // Ready only now: the journal is recovered and the worker is registered.
        liandan_common::systemd::ready("connected");
    }
    let hb = Duration::from_millis(welcome.heartbeat_interval_ms.clamp(100, 60_000) as u64);
    let mut heartbeat = tokio::time::interval(hb);
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    ctx.spool.new_records.notify_one();
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|e| e.to_string())?.ok_or("the coordinator closed the session")?;
                match msg.msg {
                    Some(pb::coordinator_message::Msg::Ack(a)) => {
                        let ended = ctx.spool.ack(a.seq);
                        let _ = ctx.spool.journal_prune(a.seq).await;
                        if ended {
                            ctx.retention.notify_one();
                        }
                        if a.refused > 0 {
                            tracing::warn!(refused = a.refused, "the coordinator refused records from stale attempts");
                        }
                    }
                    Some(pb::coordinator_message::Msg::Assign(a)) => start(ctx, a),
                    Some(pb::coordinator_message::Msg::Cancel(c)) => {
                        ctx.stop(&c.job_id, c.attempt, crate::ctx::stop_reason(&c));
                    }
                    Some(pb::coordinator_message::Msg::Drain(_)) => {
                        // The coordinator stops assigning; running jobs finish.
                        tracing::info!("draining: this worker takes no new jobs");
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                let stopping = ctx.stopping.load(Ordering::SeqCst);
                out.send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat { held: ctx.held_now(), stopping, reports_held: true, disk: ctx.disk() })) }).await.map_err(|e| e.to_string())?;
                // The main loop is alive while it heartbeats (or keeps trying to connect).
                ctx.liveness.beat();
            }
            _ = ctx.announce_stop.notified() => {
                // Said before any preempted exit record, on the same ordered stream,
                // so the coordinator never hands a stopping worker a requeued job.
                out.send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat { held: ctx.held_now(), stopping: true, reports_held: true, disk: ctx.disk() })) }).await.map_err(|e| e.to_string())?;
                ctx.stop_announced.notify_waiters();
            }
            _ = ctx.spool.new_records.notified() => send_pending(ctx, &out).await?,
            _ = flush.tick() => send_pending(ctx, &out).await?,
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn send_pending(
    ctx: &WorkerCtx,
    out: &mpsc::Sender<pb::WorkerMessage>,
) -> Result<(), String> {
    loop {
        // 4 MiB a message: well under the coordinator's limit (16 MiB by default).
        let batch = ctx.spool.next_batch(4096, 4 << 20);
        if batch.is_empty() {
            return Ok(());
        }
        out.send(pb::WorkerMessage {
            msg: Some(pb::worker_message::Msg::Records(pb::Records {
                records: batch,
            })),
        })
        .await
        .map_err(|e| e.to_string())?;
    }
}
