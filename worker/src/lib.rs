//! The liandan worker daemon.
//!
//! - [`spool`]: the durable local spool of records and the journal of attempts.
//! - [`runner`]: one attempt as a supervised process group.
//! - [`checkpoint`]: checkpoint uploads and resume downloads.
//! - [`gpu`]: NVML discovery (the daemon never initialises CUDA).
//! - [`jail`]: the job user, per-attempt cgroups, opening what jobs wrote.
//!
//! [`run`] owns the state dir (locked), recovers the journal, then keeps one
//! bidirectional stream to the coordinator, reconnecting with backoff and
//! jitter. Jobs keep running while disconnected; their records wait in the spool.

pub mod checkpoint;
mod ctx;
mod error;
pub mod gpu;
pub mod jail;
mod recovery;
pub mod retention;
pub mod runner;
mod session;
pub mod spool;
mod supervisor;

use ctx::StopReason;
pub use ctx::{Client, WorkerCtx};
pub use error::WorkerError;
pub use recovery::prepare;
use session::connect_loop;
use supervisor::{retention_loop, upload_loop};

use liandan_common::config::WorkerConfig;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Endpoint;

/// Runs the worker until `shutdown` resolves, then drains: running jobs get
/// SIGTERM (their chance to checkpoint) and are reported as preempted.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    liandan_common::auth::install_crypto_provider();
    let mut endpoint = Endpoint::from_shared(cfg.coordinator.clone())
        .map_err(|e| WorkerError::Url(cfg.coordinator.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Checkpoint uploads are bulk transfers: the default 64 KiB window caps them.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    if !cfg.tls_ca.is_empty() {
        let read = |p: &str, what: &str| {
            std::fs::read(p).map_err(|e| WorkerError::Tls(format!("cannot read {what} {p}: {e}")))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read(&cfg.tls_ca, "tls_ca")?),
        );
        if !cfg.tls_cert.is_empty() {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(&cfg.tls_cert, "tls_cert")?,
                read(&cfg.tls_key, "tls_key")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| WorkerError::Tls(format!("TLS configuration: {e}")))?;
    }
    let (ctx, _lock) = prepare(cfg).await?;
    tracing::info!(worker = %ctx.id(), gpus = ctx.resources.gpus.len(), slots = ctx.resources.cpu_slots, "worker starting");
    let uploader = tokio::spawn(upload_loop(ctx.clone()));
    let retention = tokio::spawn(retention_loop(ctx.clone()));
    let watchdog = liandan_common::systemd::spawn_watchdog(ctx.liveness.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let sessions = tokio::spawn(connect_loop(ctx.clone(), endpoint, stop_rx));
    shutdown.await;
    tracing::info!("stopping: no new jobs; asking running jobs to checkpoint and exit");
    liandan_common::systemd::stopping();
    ctx.stopping.store(true, Ordering::SeqCst);
    // Tell the coordinator first (if connected), then stop the jobs.
    let announced = ctx.stop_announced.notified();
    ctx.announce_stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(2), announced).await;
    ctx.stop_all(StopReason::Preempt);
    let grace = Duration::from_secs_f64(ctx.cfg.grace_period_secs) + Duration::from_secs(70);
    let deadline = tokio::time::Instant::now() + grace;
    while ctx.alive_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the session deliver what is in the spool, briefly.
    let flush_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ctx.spool.unacked() > 0 && tokio::time::Instant::now() < flush_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let _ = sessions.await;
    uploader.abort();
    retention.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(c) = &ctx.cgroups {
        c.close();
    }
    Ok(())
}
