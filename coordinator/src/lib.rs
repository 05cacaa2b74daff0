//! The liandan coordinator: the one place that knows what must run.
//!
//! - [`store`]: durable state in SQLite with group commit.
//! - [`model`]: the job state machine.
//! - [`results`]: per-trial results, kept as jobs succeed.
//! - [`core`]: the state owner: scheduling, leases, fencing, retries.
//! - [`grpc`]: thin gRPC edges for users and workers.
//! - [`logs`], [`checkpoints`]: log following and checkpoint files.
//!
//! [`run`] serves on a given listener until a shutdown future resolves, so
//! tests start the coordinator in-process on `127.0.0.1:0`.

pub mod checkpoints;
pub mod conn;
pub mod core;
pub mod gate;
pub mod grpc;
pub mod logs;
pub mod model;
pub mod results;
pub mod search;
pub mod security;
pub mod store;
pub mod wire;

use liandan_common::config::CoordinatorConfig;
use liandan_proto::v1 as pb;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

/// Why the coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Core(#[from] core::CoreError),
    #[error("cannot prepare the checkpoint directory: {0}")]
    Checkpoints(std::io::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Another coordinator holds the data directory.
    #[error("data directory: {0}")]
    Locked(liandan_common::lockdir::LockError),
    #[error("cannot create the data directory {0}: {1}; check the path and its permissions (data_dir, --data-dir)")]
    DataDir(std::path::PathBuf, std::io::Error),
}

/// After the shutdown signal: how long connections get to finish (workers are
/// told to reconnect and their streams are closed first) before the server
/// is stopped regardless.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves the coordinator on `listener` until `shutdown` resolves, with the
/// `security` loaded from `cfg` beforehand ([`security::Security::load`], so a
/// refusal happens before anything listens). Health is NOT_SERVING until the
/// state is loaded, then SERVING.
pub async fn run(
    cfg: CoordinatorConfig,
    security: security::Security,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // One coordinator per data directory, for as long as this one runs.
    liandan_common::lockdir::create_private_dir(&cfg.data_dir)
        .map_err(|e| RunError::DataDir(cfg.data_dir.clone(), e))?;
    let _lock = liandan_common::lockdir::lock_dir(&cfg.data_dir, "coordinator.lock")
        .map_err(RunError::Locked)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let api = grpc::Api::new().with_auth(security.auth.clone());
    let local = listener.local_addr().ok();
    // The shutdown signal stops accepting connections; `stopping` then ends
    // the workers' streams and bounds the wait for the rest.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let (server, max_connections) =
        spawn_server(&cfg, &security, &api, health_service, listener, shutdown)?;
    tracing::info!(listen = ?local, max_connections, data_dir = %cfg.data_dir.display(), "coordinator listening; loading state");

    // Load the state off the runtime threads, then turn SERVING.
    let cfg2 = cfg.clone();
    let loaded = tokio::task::spawn_blocking(move || core::Core::open(cfg2)).await;
    let core = match loaded {
        Ok(Ok(core)) => core,
        Ok(Err(e)) => {
            server.abort();
            return Err(e.into());
        }
        Err(e) => {
            server.abort();
            return Err(core::CoreError::FailedPrecondition(format!("loading state: {e}")).into());
        }
    };
    let ckpts = Arc::new(
        checkpoints::CheckpointStore::new(&cfg.data_dir)
            .map_err(RunError::Checkpoints)?
            .with_upload_limits(
                cfg.max_uploads as usize,
                std::time::Duration::from_secs_f64(cfg.upload_idle_timeout_secs),
            ),
    );
    // Orphans from before this start go before any upload can begin; then
    // every ORPHAN_SCAN.
    ckpts.collect_orphans(&core).await;
    api.set_ready(core.clone(), ckpts.clone());
    let (orphan_core, orphan_ckpts) = (core.clone(), ckpts);
    let orphans = tokio::spawn(async move {
        loop {
            tokio::time::sleep(checkpoints::ORPHAN_SCAN).await;
            orphan_ckpts.collect_orphans(&orphan_core).await;
        }
    });
    set_health(&health, ServingStatus::Serving).await;
    let liveness = liandan_common::systemd::Liveness::new();
    let ticker = spawn_ticker(core.clone(), liveness.clone());
    liandan_common::systemd::ready("serving");
    let watchdog = liandan_common::systemd::spawn_watchdog(liveness);
    tracing::info!("coordinator ready");
    let result = serve_until_stopped(server, stopping, &core).await;
    ticker.abort();
    orphans.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    liandan_common::systemd::stopping();
    match result {
        Ok(r) => r.map_err(RunError::from),
        Err(e) => Err(core::CoreError::FailedPrecondition(format!("server task: {e}")).into()),
    }
}

/// The overall health and each service's, all at once.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <pb::user_service_server::UserServiceServer<grpc::Api> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health
        .set_service_status(
            <pb::worker_service_server::WorkerServiceServer<grpc::Api> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

type Served = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Starts serving every service on `listener` (health, reflection, the user
/// and worker APIs behind their size limits and authentication) until
/// `shutdown`; hands back the server's task and the connection limit.
fn spawn_server(
    cfg: &CoordinatorConfig,
    security: &security::Security,
    api: &grpc::Api,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Served, usize), RunError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let max = cfg.max_message_bytes;
    // Message size limits on every RPC; authentication before any handler runs.
    let user = tonic::service::interceptor::InterceptedService::new(
        pb::user_service_server::UserServiceServer::new(api.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        security::Check {
            auth: security.auth.clone(),
            worker: false,
        },
    );
    let worker = tonic::service::interceptor::InterceptedService::new(
        pb::worker_service_server::WorkerServiceServer::new(api.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        security::Check {
            auth: security.auth.clone(),
            worker: true,
        },
    );
    // Larger HTTP/2 windows: checkpoint uploads are bulk transfers and the
    // default 64 KiB stream window caps them far below the link's speed.
    let mut builder = tonic::transport::Server::builder();
    let handshake = std::time::Duration::from_secs_f64(cfg.handshake_timeout_secs);
    if let Some(tls) = security.tls.clone() {
        builder = builder.tls_config(tls.timeout(handshake))?;
    }
    let limits = conn::Limits::new(
        cfg.max_connections,
        cfg.max_connections_per_ip,
        handshake,
        liandan_common::daemon::raise_nofile(),
    );
    let server = builder
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        // Peers that vanished (a power cut) are found and their connections closed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(user)
        .add_service(worker)
        .serve_with_incoming_shutdown(conn::incoming(listener, limits), shutdown);
    Ok((tokio::spawn(server), limits.max))
}

/// The scheduler loop: leases, delayed retries, dispatch, and a round trip
/// through the database writer. Its progress feeds the systemd watchdog, so a
/// wedged loop or a hung disk gets the service restarted.
fn spawn_ticker(
    core: Arc<core::Core>,
    beat: Arc<liandan_common::systemd::Liveness>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(core::TICK);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            if let Err(e) = core.tick().await {
                tracing::error!(error = %e, "scheduler tick failed");
                continue;
            }
            if core.store().commit(Vec::new()).await.is_ok() {
                beat.beat();
            }
        }
    })
}

/// Serves until the server ends or the shutdown signal comes. Long-lived
/// worker streams would hold a graceful shutdown open forever: they are ended
/// first (workers reconnect with backoff), then what is in flight gets a
/// bounded time.
async fn serve_until_stopped(
    mut server: Served,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    core: &core::Core,
) -> Result<Result<(), tonic::transport::Error>, tokio::task::JoinError> {
    tokio::select! {
        r = &mut server => r,
        _ = stopping.wait_for(|s| *s) => {
            let n = core.end_sessions();
            tracing::info!(workers = n, "shutting down: worker streams closed");
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(secs = SHUTDOWN_GRACE.as_secs_f64(), "connections still open after the shutdown grace; closing them");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    }
}
