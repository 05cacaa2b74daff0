//! Thin gRPC edges: decode, call [`Core`], encode. No decisions here. The one
//! `From<CoreError> for Status` lives at the bottom.

use crate::checkpoints::CheckpointStore;
use crate::core::{Core, CoreError};
use crate::model::SweepState;
use crate::security::{Auth, Caller};
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
    /// The token checks: issued tokens are added and revoked here.
    auth: Arc<Auth>,
}

impl Api {
    pub fn new() -> Self {
        Api {
            core: Arc::new(tokio::sync::OnceCell::new()),
            checkpoints: Arc::new(tokio::sync::OnceCell::new()),
            auth: Arc::new(Auth::open()),
        }
    }

    /// The API checking (and issuing) tokens with `auth`.
    pub fn with_auth(mut self, auth: Arc<Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// The state is loaded: the tokens it holds are accepted from now on.
    pub fn set_ready(&self, core: Arc<Core>, checkpoints: Arc<CheckpointStore>) {
        self.auth.set_issued(
            core.issued_tokens()
                .into_iter()
                .map(|t| {
                    let who = Caller {
                        name: t.name,
                        admin: t.admin,
                    };
                    (t.hash, who)
                })
                .collect(),
        );
        let _ = self.core.set(core);
        let _ = self.checkpoints.set(checkpoints);
    }

    /// Token management needs user authentication on, and an admin.
    fn token_admin<T>(&self, req: &Request<T>, what: &str) -> Result<Caller, Status> {
        if !self.auth.users_on() {
            return Err(Status::failed_precondition(
                "user authentication is off (no user_token_file): tokens would not be checked; configure user_token_file first (see the README's \"Deploying on a cluster\")",
            ));
        }
        let caller = Caller::of(req);
        caller.must_be_admin(what)?;
        Ok(caller)
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

/// A user may change their own sweeps and jobs; an admin any. Sweeps from
/// before user names (owner "") are the admins'.
fn may_change(caller: &Caller, owner: &str, what: &str) -> Result<(), CoreError> {
    if caller.admin || (!owner.is_empty() && caller.name == owner) {
        return Ok(());
    }
    let whose = if owner.is_empty() {
        "no user (it predates user names): only an admin may change it".to_string()
    } else {
        format!("{owner}: only {owner} or an admin may change it")
    };
    Err(CoreError::PermissionDenied(format!(
        "{what} belongs to {whose} (you are {}, a user)",
        caller.name
    )))
}

fn token_info(name: &str, admin: bool, created_at: f64, source: &str) -> pb::TokenInfo {
    pb::TokenInfo {
        name: name.into(),
        role: if admin { "admin" } else { "user" }.into(),
        created_at,
        source: source.into(),
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
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let (sweep, created, warnings) = self
            .core()?
            .submit_as(&r.spec, &r.format, &r.name, &caller.name)
            .await?;
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
        req: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let core = self.core()?;
        let r = req.into_inner();
        let page = core.list_sweeps_page(r.page_size, &r.page_token)?;
        let (sweeps, next_page_token) = core.committed(page).await?;
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps,
            next_page_token,
        }))
    }

    async fn cancel_sweep(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<pb::Sweep>, Status> {
        self.set_sweep_state(req, SweepState::Cancelled).await
    }

    async fn pause_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::Sweep>, Status> {
        self.set_sweep_state(req, SweepState::Paused).await
    }

    async fn resume_sweep(
        &self,
        req: Request<pb::SweepRef>,
    ) -> Result<Response<pb::Sweep>, Status> {
        self.set_sweep_state(req, SweepState::Active).await
    }

    async fn cancel_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let core = self.core()?;
        let caller = Caller::of(&req);
        let id = core.resolve_job(&req.into_inner().job_id)?;
        let what = format!("job {id}");
        let permit = |owner: &str| may_change(&caller, owner, &what);
        Ok(Response::new(core.cancel_job_as(&id, &permit).await?))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        let core = self.core()?;
        let page = core.list_jobs_page(&r.sweep_id, &r.state, r.page_size, &r.page_token)?;
        let (mut jobs, next_page_token) = core.committed(page).await?;
        core.fill_last_attempts(&mut jobs).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new({
            let core = self.core()?;
            let id = core.resolve_job(&req.into_inner().job_id)?;
            core.get_job(&id).await?
        }))
    }

    type ReadLogsStream = BoxStream<pb::LogLine>;

    async fn read_logs(
        &self,
        req: Request<pb::ReadLogsRequest>,
    ) -> Result<Response<Self::ReadLogsStream>, Status> {
        let r = req.into_inner();
        let core = self.core()?;
        let jid = job_id(&core.resolve_job(&r.job_id)?)?;
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
        let (first, current) = core.attempt_range(&jid).ok_or_else(|| {
            Status::not_found(format!(
                "job {jid} not found; list them with `liandan jobs SWEEP`"
            ))
        })?;
        let queued = core.job_queued(&jid);
        let attempt = match r.attempt {
            // The latest; for a queued job followed, the one it waits to start.
            0 if queued && r.follow => current + 1,
            0 => current.max(first),
            n if (first..=current).contains(&n) || (queued && r.follow && n == current + 1) => n,
            n => return Err(no_attempt(&jid, n, first, current)),
        };
        let (tx, rx) = mpsc::channel(1024);
        let read = crate::logs::LogRead {
            job: jid,
            attempt,
            from: r.from_line.max(1),
            tail: r.tail,
            follow: r.follow,
            stream: stream_filter,
        };
        tokio::spawn(crate::logs::follow(core, read, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let r = req.into_inner();
        let core = self.core()?;
        let jid = job_id(&core.resolve_job(&r.job_id)?)?;
        let (first, current) = core.attempt_range(&jid).ok_or_else(|| {
            Status::not_found(format!(
                "job {jid} not found; list them with `liandan jobs SWEEP`"
            ))
        })?;
        // 0 is every attempt; another is one the job has had.
        if r.attempt != 0 && !(first..=current).contains(&r.attempt) {
            return Err(no_attempt(&jid, r.attempt, first, current));
        }
        let (records, next_page_token) =
            crate::logs::metrics(&core, &jid, r.attempt, r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::GetMetricsResponse {
            records,
            next_page_token,
        }))
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
        Caller::of(&req).must_be_admin("draining a worker")?;
        let r = req.into_inner();
        Ok(Response::new({
            let core = self.core()?;
            let id = core.resolve_worker(&r.worker_id)?;
            core.drain(&id, r.undo).await?
        }))
    }

    async fn forget_worker(
        &self,
        req: Request<pb::ForgetWorkerRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        Caller::of(&req).must_be_admin("forgetting a worker")?;
        let r = req.into_inner();
        Ok(Response::new({
            let core = self.core()?;
            let id = core.resolve_worker(&r.worker_id)?;
            core.forget_worker(&id).await?
        }))
    }

    async fn list_checkpoints(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let core = self.core()?;
        let rows = core.checkpoints(&core.resolve_job(&req.into_inner().job_id)?)?;
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
        let core = self.core()?;
        let mut r = req.into_inner();
        r.job_id = core.resolve_job(&r.job_id)?;
        let s = self.ckpt()?.download(core, r).await?;
        Ok(Response::new(s))
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let core = self.core()?;
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let job = match r.job_id.as_str() {
            "" => None,
            j => Some(core.resolve_job(j)?),
        };
        let what = format!("sweep {}", r.sweep_id);
        let permit = |owner: &str| may_change(&caller, owner, &what);
        let (requeued, sweep) = core.retry(&r.sweep_id, job.as_deref(), &permit).await?;
        Ok(Response::new(pb::RetryResponse {
            sweep: Some(sweep),
            requeued,
        }))
    }

    async fn delete_sweep(
        &self,
        req: Request<pb::DeleteSweepRequest>,
    ) -> Result<Response<pb::DeleteSweepResponse>, Status> {
        let core = self.core()?;
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let what = format!("sweep {}", r.sweep_id);
        let permit = |owner: &str| may_change(&caller, owner, &what);
        let (sweep, jobs_deleted) = core.delete_sweep(&r.sweep_id, r.force, &permit).await?;
        Ok(Response::new(pb::DeleteSweepResponse {
            sweep: Some(sweep),
            jobs_deleted,
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.token_admin(&req, "making a token")?;
        let core = self.core()?;
        let r = req.into_inner();
        liandan_common::names::validate("user name", &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let admin = match r.role.as_str() {
            "" => false,
            role => crate::security::parse_role(role).ok_or_else(|| {
                Status::invalid_argument(format!("role {role:?}: expected \"user\" or \"admin\""))
            })?,
        };
        if self.auth.file_users().iter().any(|c| c.name == r.name) {
            return Err(Status::failed_precondition(format!(
                "{} is a user of user_token_file; choose another name (or change that file)",
                r.name
            )));
        }
        let token = liandan_common::auth::generate_token();
        let t = core
            .issue_token(crate::core::IssuedToken {
                name: r.name.clone(),
                admin,
                hash: crate::security::token_hash(&token),
                created_at: liandan_common::time::now_secs(),
            })
            .await?;
        // Durable first, then accepted; unless a revocation came in between.
        self.auth.add_issued(
            t.hash.clone(),
            Caller {
                name: t.name.clone(),
                admin: t.admin,
            },
        );
        if !core.issued_tokens().iter().any(|x| x.hash == t.hash) {
            self.auth.remove_issued(&t.name);
        }
        tracing::info!(user = %t.name, role = if t.admin { "admin" } else { "user" }, "token issued");
        Ok(Response::new(pb::CreateTokenResponse {
            info: Some(token_info(&t.name, t.admin, t.created_at, "issued")),
            token,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.token_admin(&req, "listing tokens")?;
        let core = self.core()?;
        let mut tokens: Vec<pb::TokenInfo> = self
            .auth
            .file_users()
            .iter()
            .map(|c| token_info(&c.name, c.admin, 0.0, "file"))
            .collect();
        tokens.extend(
            core.issued_tokens()
                .iter()
                .map(|t| token_info(&t.name, t.admin, t.created_at, "issued")),
        );
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        self.token_admin(&req, "revoking a token")?;
        let core = self.core()?;
        let name = req.into_inner().name;
        if self.auth.file_users().iter().any(|c| c.name == name) {
            return Err(Status::failed_precondition(format!(
                "{name}'s token is in user_token_file: remove its line there and restart the coordinator"
            )));
        }
        // Refused from now on, before the removal is durable: a revocation
        // that a crash undoes is repeated; one accepted late is not.
        self.auth.remove_issued(&name);
        let t = core.revoke_token(&name).await?;
        tracing::info!(user = %t.name, "token revoked");
        Ok(Response::new(token_info(
            &t.name,
            t.admin,
            t.created_at,
            "issued",
        )))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let c = Caller::of(&req);
        let source = if !self.auth.users_on() {
            "none"
        } else if self.auth.file_users().contains(&c) {
            "file"
        } else {
            "issued"
        };
        Ok(Response::new(token_info(&c.name, c.admin, 0.0, source)))
    }
}

impl Api {
    async fn set_sweep_state(
        &self,
        req: Request<pb::SweepRef>,
        new: SweepState,
    ) -> Result<Response<pb::Sweep>, Status> {
        let core = self.core()?;
        let caller = Caller::of(&req);
        let id = req.into_inner().sweep_id;
        let what = format!("sweep {id}");
        let permit = |owner: &str| may_change(&caller, owner, &what);
        Ok(Response::new(
            core.set_sweep_state_as(&id, new, &permit).await?,
        ))
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
                                    msg: Some(pb::coordinator_message::Msg::Ack(ack.into())),
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
        if !core.holds(&job, liandan_common::AttemptNo(r.attempt), &caller) {
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
            CoreError::ResourceExhausted(m) => Status::resource_exhausted(m),
            CoreError::Store(s) => Status::internal(s.to_string()),
        }
    }
}

/// A job has no attempt `n`: which it has had (`first..=current`, numbered
/// above its sweep's floor; none while `current < first`).
fn no_attempt(jid: &JobId, n: u64, first: u64, current: u64) -> Status {
    let had = if current < first {
        "it has not run yet".to_string()
    } else if first == current {
        format!("its one attempt is {first}")
    } else {
        format!("its attempts are {first} to {current}")
    };
    Status::not_found(format!(
        "job {jid} has no attempt {n}: {had} (see `liandan describe {jid}`)"
    ))
}
