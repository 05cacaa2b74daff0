//! The state the session, the supervisor, the runners and the uploader share;
//! below all of them (it imports none of them).

use crate::jail;
use crate::spool::Spool;
use liandan_common::config::WorkerConfig;
use liandan_common::ids::WorkerId;
use liandan_proto::v1 as pb;
use pb::worker_service_client::WorkerServiceClient;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::Channel;

/// Why the worker stops a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The user cancelled it.
    Cancel,
    /// Drain or worker shutdown: it should checkpoint and resume elsewhere.
    Preempt,
    /// The coordinator says this attempt is no longer current.
    Stale,
}

/// Where a job's output lines go: (is_stderr, text).
pub(crate) type LineSender = mpsc::Sender<(bool, String)>;

/// An attempt this worker took, from its assignment until its task ends.
pub(crate) struct Running {
    pub(crate) stop: watch::Sender<Option<StopReason>>,
    /// Its process may still run (heartbeats say `running`).
    pub(crate) alive: bool,
    /// Where the worker's own notices to its stderr log go, while its
    /// output is being read.
    pub(crate) notices: Option<LineSender>,
}

/// State shared by the session, the runners and the uploader.
pub struct WorkerCtx {
    pub cfg: WorkerConfig,
    pub spool: Spool,
    /// This worker's id: its certificate's, or the one the coordinator
    /// issued with a secret (`None` until a join-token worker's first hello).
    pub(crate) worker_id: Mutex<Option<WorkerId>>,
    /// The issued id and secret, which the interceptor sends on checkpoint RPCs.
    pub(crate) identity: liandan_common::auth::WorkerIdentity,
    pub resources: pb::Resources,
    pub(crate) running: Mutex<HashMap<(String, u64), Running>>,
    /// Woken when a checkpoint is published or an upload finished.
    pub uploads: Notify,
    pub(crate) upload_done: Notify,
    pub(crate) jobs_dir: PathBuf,
    pub(crate) channel: Mutex<Option<Channel>>,
    /// Adds the join token (if any) to every RPC.
    pub(crate) token: liandan_common::auth::TokenInterceptor,
    /// Set on SIGTERM: finish, take nothing new.
    pub(crate) stopping: AtomicBool,
    pub(crate) announce_stop: Notify,
    pub(crate) stop_announced: Notify,
    /// Progress of the session / connect loop, for the systemd watchdog.
    pub(crate) liveness: Arc<liandan_common::systemd::Liveness>,
    /// Woken when the coordinator acknowledged an attempt's end.
    pub(crate) retention: Notify,
    /// Jobs whose directories retention is removing: a new attempt of one
    /// waits before creating its directories (see [`crate::retention::collect`]).
    pub(crate) retiring: Mutex<std::collections::HashSet<String>>,
    pub(crate) retired: Notify,
    /// The disk as of the last retention pass, for heartbeats.
    pub(crate) disk: Mutex<Option<pb::DiskUsage>>,
    /// The user jobs run as (`job_user`), when not the worker's.
    pub job_user: Option<jail::JobUser>,
    /// Where attempts get their cgroups, when the system allows it.
    pub cgroups: Option<jail::Cgroups>,
}

/// A worker-service client that carries the join token.
pub type Client = WorkerServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        liandan_common::auth::TokenInterceptor,
    >,
>;

impl WorkerCtx {
    /// A client on `channel` with the token and message limits.
    pub fn client(&self, channel: Channel) -> Client {
        WorkerServiceClient::with_interceptor(channel, self.token.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// This worker's id, or `(unregistered)` before a join-token worker's first hello.
    pub fn id(&self) -> String {
        self.worker_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_else(|| "(unregistered)".into())
    }

    /// The directory of one attempt of a job.
    pub(crate) fn attempt_dir(&self, job: &str, attempt: u64) -> PathBuf {
        self.jobs_dir.join(job).join(attempt.to_string())
    }

    /// Retention may remove `job`'s directories: no attempt of it runs, and
    /// none will create directories until [`WorkerCtx::release_job`].
    pub(crate) fn claim_job(&self, job: &str) -> bool {
        let running = self.running();
        if running.keys().any(|(j, _)| j == job) {
            return false;
        }
        self.retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.to_string());
        true
    }

    pub(crate) fn release_job(&self, job: &str) {
        self.retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job);
        self.retired.notify_waiters();
    }

    /// Waits while retention is removing `job`'s directories.
    pub(crate) async fn wait_not_retiring(&self, job: &str) {
        loop {
            let released = self.retired.notified();
            if !self
                .retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(job)
            {
                return;
            }
            released.await;
        }
    }

    pub(crate) fn disk(&self) -> Option<pb::DiskUsage> {
        *self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The attempt's process has ended (its exit is recorded): heartbeats
    /// stop saying it runs. Its entry goes when its task ends.
    pub(crate) fn mark_ended(&self, job: &str, attempt: u64) {
        if let Some(r) = self.running().get_mut(&(job.to_string(), attempt)) {
            r.alive = false;
        }
    }

    pub(crate) fn register_notices(
        &self,
        job: &str,
        attempt: u64,
        tx: mpsc::Sender<(bool, String)>,
    ) {
        if let Some(r) = self.running().get_mut(&(job.to_string(), attempt)) {
            r.notices = Some(tx);
        }
    }

    pub(crate) fn unregister_notices(&self, job: &str, attempt: u64) {
        if let Some(r) = self.running().get_mut(&(job.to_string(), attempt)) {
            r.notices = None;
        }
    }

    /// Adds a line from the worker itself to a job's stderr log.
    pub(crate) async fn notice(&self, job: &str, attempt: u64, text: String) {
        let tx = self
            .running()
            .get(&(job.to_string(), attempt))
            .and_then(|r| r.notices.clone());
        if let Some(tx) = tx {
            let _ = tx.send((true, text)).await;
        }
    }

    pub(crate) fn stop(&self, job: &str, attempt: u64, reason: StopReason) {
        if let Some(r) = self.running().get(&(job.to_string(), attempt)) {
            let _ = r.stop.send(Some(reason));
        }
    }

    pub(crate) fn stop_all(&self, reason: StopReason) {
        for r in self.running().values() {
            let _ = r.stop.send(Some(reason));
        }
    }

    pub(crate) fn alive_count(&self) -> usize {
        self.running().values().filter(|r| r.alive).count()
    }

    /// Waits until this attempt's published checkpoints are uploaded (or refused), up to `max`.
    pub(crate) async fn wait_uploads(&self, job: &str, attempt: u64, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let notified = self.upload_done.notified();
            let pending = self
                .spool
                .uploads_pending()
                .await
                .unwrap_or_default()
                .iter()
                .any(|u| u.job_id == job && u.attempt == attempt);
            if !pending
                || self
                    .channel
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none()
            {
                return;
            }
            self.uploads.notify_one();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// What heartbeats say this worker holds, from memory only (no database
    /// read every heartbeat): attempts taken and not yet ended, and ended
    /// ones whose exit record the coordinator has not acknowledged.
    pub(crate) fn held_now(&self) -> Vec<pb::HeldAttempt> {
        let mut out: Vec<pb::HeldAttempt> = self
            .running()
            .iter()
            .map(|((job, attempt), r)| pb::HeldAttempt {
                job_id: job.clone(),
                attempt: *attempt,
                running: r.alive,
                gpu_uuids: Vec::new(),
            })
            .collect();
        for (job, attempt) in self.spool.unacked_exits() {
            if !out.iter().any(|h| h.job_id == job && h.attempt == attempt) {
                out.push(pb::HeldAttempt {
                    job_id: job,
                    attempt,
                    running: false,
                    gpu_uuids: Vec::new(),
                });
            }
        }
        out
    }

    /// The attempts this worker holds, for hello.
    pub(crate) async fn held(&self) -> Vec<pb::HeldAttempt> {
        let journal = self.spool.journal().await.unwrap_or_default();
        let running = self.running();
        journal
            .into_iter()
            .map(|e| {
                let alive = running
                    .get(&(e.job_id.clone(), e.attempt))
                    .is_some_and(|r| r.alive);
                pb::HeldAttempt {
                    job_id: e.job_id,
                    attempt: e.attempt,
                    running: alive,
                    gpu_uuids: e.gpus,
                }
            })
            .collect()
    }
}

/// An attempt's exit record (the Outcome enum; the legacy name stays empty:
/// coordinators are upgraded before their workers).
pub(crate) fn exit_record(
    outcome: pb::Outcome,
    exit_code: i32,
    signal: i32,
    message: String,
) -> pb::JobExited {
    pb::JobExited {
        outcome: outcome as i32,
        exit_code,
        signal,
        message,
        legacy_outcome: String::new(),
    }
}

/// The outcome's stable snake_case name: what the attempt directory's
/// outcome file holds (retention reads it back) and what logs say.
pub(crate) fn outcome_name(o: pb::Outcome) -> &'static str {
    match o {
        pb::Outcome::Unspecified => "unspecified",
        pb::Outcome::Succeeded => "succeeded",
        pb::Outcome::Failed => "failed",
        pb::Outcome::Signalled => "signalled",
        pb::Outcome::OomKilled => "oom_killed",
        pb::Outcome::Cancelled => "cancelled",
        pb::Outcome::Preempted => "preempted",
        pb::Outcome::Interrupted => "interrupted",
        pb::Outcome::SpawnFailed => "spawn_failed",
        pb::Outcome::SetupFailed => "setup_failed",
        pb::Outcome::UsageError => "usage_error",
        pb::Outcome::DiskFull => "disk_full",
    }
}

/// How the worker stops an attempt the coordinator cancels: a user's cancel
/// and an early-stopping prune alike (SIGTERM, so it checkpoints), a stale
/// attempt the same way. The one mapping, for the welcome's kills and for
/// cancels in the session.
pub(crate) fn stop_reason(c: &pb::Cancel) -> StopReason {
    match c.reason() {
        pb::StopReason::Stale => StopReason::Stale,
        pb::StopReason::Cancelled | pb::StopReason::Pruned | pb::StopReason::Unspecified => {
            StopReason::Cancel
        }
    }
}
