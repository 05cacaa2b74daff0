//! Thin gRPC edges: decode, call [`Core`], encode. No decisions here. The one
//! `From<CoreError> for Status` lives at the bottom.

use crate::checkpoints::CheckpointStore;
use crate::core::{Core, CoreError};
use crate::model::SweepState;
use liandan_common::ids::JobId;
use liandan_proto::v1 as pb;
use pb::user_service_server::UserService;
use pb::worker_service_server::WorkerService;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Both services share the core; the core is set once the state is loaded, and
/// until then every call answers UNAVAILABLE (health says NOT_SERVING).
#[derive(Clone)]
pub struct Api {
    core: Arc<tokio::sync::OnceCell<Arc<Core>>>,
    checkpoints: Arc<tokio::sync::OnceCell<Arc<CheckpointStore>>>,
}

impl Api {
    pub fn new() -> Self {
        Api {
            core: Arc::new(tokio::sync::OnceCell::new()),
            checkpoints: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    pub fn set_ready(&self, core: Arc<Core>, checkpoints: Arc<CheckpointStore>) {
        let _ = self.core.set(core);
        let _ = self.checkpoints.set(checkpoints);
    }

    fn core(&self) -> Result<Arc<Core>, Status> {
        self.core.get().cloned().ok_or_else(|| {
            Status::unavailable("the coordinator is still loading its state; retry in a moment")
        })
    }

    fn ckpt(&self) -> Result<Arc<CheckpointStore>, Status> {
        self.checkpoints.get().cloned().ok_or_else(|| {
            Status::unavailable("the coordinator is still loading its state; retry in a moment")
        })
    }
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

fn job_id(s: &str) -> Result<JobId, Status> {
    JobId::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl UserService for Api {
    async fn submit_sweep(
        &self,
        req: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let r = req.into_inner();
        let (sweep, created, warnings) = self.core()?.submit(&r.spec, &r.format, &r.name).await?;
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep: Some(sweep),
            created,
            warnings,
        }))
    }

    async fn get_sweep(
        &self,
        req: Request<pb::GetSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let core = self.core()?;
        let sweep = core.get_sweep(&req.into_inner().sweep_id)?;
        Ok(Response::new(core.committed(sweep).await?))
    }

    async fn list_sweeps(
        &self,
        _: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let core = self.core()?;
        let sweeps = core.list_sweeps();
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: core.committed(sweeps).await?,
        }))
    }

    async fn cancel_sweep(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<pb::Sweep>, Status> {
        Ok(Response::new(
            self.core()?
                .set_sweep_state(&req.into_inner().sweep_id, SweepState::Cancelled)
                .await?,
        ))
    }

    async fn pause_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::Sweep>, Status> {
        Ok(Response::new(
            self.core()?
                .set_sweep_state(&req.into_inner().sweep_id, SweepState::Paused)
                .await?,
        ))
    }

    async fn resume_sweep(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<pb::Sweep>, Status> {
        Ok(Response::new(
            self.core()?
                .set_sweep_state(&req.into_inner().sweep_id, SweepState::Active)
                .await?,
        ))
    }

    async fn cancel_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(
            self.core()?.cancel_job(&req.into_inner().job_id).await?,
        ))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        let core = self.core()?;
        let jobs = core.list_jobs(&r.sweep_id, &r.state)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: core.committed(jobs).await?,
        }))
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(
            self.core()?.get_job(&req.into_inner().job_id).await?,
        ))
    }

    type ReadLogsStream = BoxStream<pb::LogLine>;

    async fn read_logs(
        &self,
        req: Request<pb::ReadLogsRequest>,
    ) -> Result<Response<Self::ReadLogsStream>, Status> {
        let r = req.into_inner();
        let core = self.core()?;
        let jid = job_id(&r.job_id)?;
        let stream_filter: Option<u8> = match r.stream.as_str() {
            "" | "all" => None,
            "stdout" => Some(0),
            "stderr" => Some(1),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown stream {other:?}; use stdout, stderr or all"
                )))
            }
        };
        let (current, _) = core.job_progress(&jid).ok_or_else(|| {
            Status::not_found(format!(
                "job {jid} not found; list them with `liandan jobs SWEEP`"
            ))
        })?;
        let attempt = if r.attempt == 0 {
            current.max(1)
        } else {
            r.attempt
        };
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(crate::logs::follow(
            core,
            jid,
            attempt,
            r.from_line.max(1),
            r.tail,
            r.follow,
            stream_filter,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let r = req.into_inner();
        let core = self.core()?;
        let jid = job_id(&r.job_id)?;
        core.job_progress(&jid).ok_or_else(|| {
            Status::not_found(format!(
                "job {jid} not found; list them with `liandan jobs SWEEP`"
            ))
        })?;
        let records = crate::logs::metrics(&core, &jid, r.attempt).await?;
        Ok(Response::new(pb::GetMetricsResponse { records }))
    }

    type GetResultsStream = BoxStream<pb::GetResultsResponse>;

    async fn get_results(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<Self::GetResultsStream>, Status> {
        let core = self.core()?;
        let sid = core.resolve_sweep(&req.into_inner().sweep_id)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = std::collections::HashSet::new();
            let mut from = 0;
            loop {
                let r = match core.results_chunk(&sid, from, 20_000, &mut sent) {
                    Ok(v) => core.committed(v).await,
                    Err(e) => Err(e),
                };
                let (chunk, done) = match r {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                from += 20_000;
                if tx.send(Ok(chunk)).await.is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetTrialResultsStream = BoxStream<pb::GetTrialResultsResponse>;

    async fn get_trial_results(
        &self,
        req: Request<pb::GetTrialResultsRequest>,
    ) -> Result<Response<Self::GetTrialResultsStream>, Status> {
        let r = req.into_inner();
        let core = self.core()?;
        let sid = core.resolve_sweep(&r.sweep_id)?;
        let chunks = core.trial_results(&sid, r.best, r.limit as usize, 10_000)?;
        let chunks = core.committed(chunks).await?;
        let stream = tokio_stream::iter(chunks.into_iter().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let core = self.core()?;
        let workers = core.list_workers();
        Ok(Response::new(pb::ListWorkersResponse {
            workers: core.committed(workers).await?,
        }))
    }

    async fn drain_worker(
        &self,
        req: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.core()?.drain(&r.worker_id, r.undo).await?,
        ))
    }

    async fn forget_worker(
        &self,
        req: Request<pb::ForgetWorkerRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.core()?.forget_worker(&r.worker_id).await?,
        ))
    }

    async fn list_checkpoints(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let core = self.core()?;
        let rows = core.checkpoints(&req.into_inner().job_id)?;
        let rows = core.committed(rows).await?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: rows.iter().map(crate::core::checkpoint_info).collect(),
        }))
    }

    type DownloadCheckpointStream = BoxStream<pb::CheckpointChunk>;

    async fn download_checkpoint(
        &self,
        req: Request<pb::DownloadCheckpointRequest>,
    ) -> Result<Response<Self::DownloadCheckpointStream>, Status> {
        let s = self
            .ckpt()?
            .download(self.core()?, req.into_inner())
            .await?;
        Ok(Response::new(s))
    }
}

#[tonic::async_trait]
impl WorkerService for Api {
    type SessionStream = BoxStream<pb::CoordinatorMessage>;

    async fn session(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let core = self.core()?;
        let cert_id = crate::security::cert_worker_id(&req);
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::WorkerMessage {
                msg: Some(pb::worker_message::Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a worker session must be hello",
                ))
            }
        };
        if let Some(id) = &cert_id {
            // Mutual TLS: the certificate is the worker's identity.
            if hello.worker_id != id.as_str() {
                tracing::warn!(claimed = %hello.worker_id.chars().take(80).collect::<String>(), certificate = %id, "refused a worker whose hello does not match its certificate");
                return Err(Status::permission_denied(format!(
                    "this client certificate belongs to worker {id}, not {:?}",
                    hello.worker_id
                )));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (wid, session) = core.hello(hello, tx.clone(), cert_id).await?;
        // On cancel (the stream ends) the worker is marked disconnected and its
        // lease runs down; on error the same, and the error is logged.
        let closing = core.closing();
        tokio::spawn(async move {
            let mut closing = std::pin::pin!(core.closing());
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = &mut closing => break,
                };
                match msg {
                    Ok(Some(pb::WorkerMessage {
                        msg: Some(pb::worker_message::Msg::Heartbeat(h)),
                    })) => {
                        if let Err(e) = core.heartbeat(&wid, session, h).await {
                            tracing::warn!(worker = %wid, error = %e, "closing worker session");
                            break;
                        }
                    }
                    Ok(Some(pb::WorkerMessage {
                        msg: Some(pb::worker_message::Msg::Records(r)),
                    })) => match core.records(&wid, session, r.records).await {
                        Ok(ack) => {
                            if tx
                                .send(pb::CoordinatorMessage {
                                    msg: Some(pb::coordinator_message::Msg::Ack(ack)),
                                })
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(worker = %wid, error = %e, "closing worker session");
                            break;
                        }
                    },
                    Ok(Some(_)) => {
                        tracing::warn!(worker = %wid, "unexpected message on worker session; closing it");
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(worker = %wid, error = %e, "worker stream ended");
                        break;
                    }
                }
            }
            core.disconnected(&wid, session);
        });
        // The stream ends at shutdown, so a graceful stop is not held open by
        // workers (they reconnect to the next coordinator).
        let out = futures::StreamExt::take_until(UnboundedReceiverStream::new(rx).map(Ok), closing);
        Ok(Response::new(Box::pin(out)))
    }

    async fn upload_checkpoint(
        &self,
        req: Request<Streaming<pb::CheckpointUpload>>,
    ) -> Result<Response<pb::UploadCheckpointResponse>, Status> {
        let core = self.core()?;
        let caller = calling_worker(&core, &req)?;
        let r = self.ckpt()?.upload(core, caller, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn checkpoint_upload_status(
        &self,
        req: Request<pb::CheckpointUploadStatusRequest>,
    ) -> Result<Response<pb::CheckpointUploadStatusResponse>, Status> {
        let core = self.core()?;
        let caller = calling_worker(&core, &req)?;
        let r = req.into_inner();
        // Only the attempt's holder learns how much of its upload arrived.
        let job = job_id(&r.job_id)?;
        if !core.holds(&job, r.attempt, &caller) {
            return Err(Status::failed_precondition(format!(
                "attempt {} of {job} is not held by worker {caller}",
                r.attempt
            )));
        }
        Ok(Response::new(self.ckpt()?.status(r).await?))
    }

    type FetchCheckpointStream = BoxStream<pb::CheckpointChunk>;

    async fn fetch_checkpoint(
        &self,
        req: Request<pb::DownloadCheckpointRequest>,
    ) -> Result<Response<Self::FetchCheckpointStream>, Status> {
        let core = self.core()?;
        let caller = calling_worker(&core, &req)?;
        let r = req.into_inner();
        // A worker reads the checkpoints of a job it runs, no other's.
        let job = job_id(&r.job_id)?;
        if !core.runs_job(&job, &caller) {
            return Err(Status::permission_denied(format!(
                "worker {caller} does not run {job}; it cannot fetch its checkpoints"
            )));
        }
        let s = self.ckpt()?.download(core, r).await?;
        Ok(Response::new(s))
    }
}

/// The worker a checkpoint RPC comes from: the id its client certificate
/// binds, or (a join-token worker) the id and issued secret it sends as
/// `liandan-worker-id` and `liandan-worker-secret` metadata.
fn calling_worker<T>(core: &Core, req: &Request<T>) -> Result<String, Status> {
    if let Some(id) = crate::security::cert_worker_id(req) {
        return Ok(id.to_string());
    }
    let md = req.metadata();
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
    match (get("liandan-worker-id"), get("liandan-worker-secret")) {
        (Some(id), Some(secret)) if core.worker_secret_ok(id, secret) => Ok(id.to_string()),
        _ => Err(Status::permission_denied(
            "a worker without a client certificate sends the id and secret the coordinator issued it (liandan-worker-id, liandan-worker-secret)",
        )),
    }
}

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Status {
        match e {
            CoreError::NotFound { .. } => Status::not_found(e.to_string()),
            CoreError::InvalidArgument(m) => Status::invalid_argument(m),
            CoreError::AlreadyExists(m) => Status::already_exists(m),
            CoreError::FailedPrecondition(m) => Status::failed_precondition(m),
            CoreError::PermissionDenied(m) => Status::permission_denied(m),
            CoreError::Store(s) => Status::internal(s.to_string()),
        }
    }
}
