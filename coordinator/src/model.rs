//! The job model: one state enum with one transition function. Every change of
//! a job's state goes through [`JobState::on`], and the new state is written in
//! the same transaction as the event that caused it.
//!
//! ```text
//!            assign                 exited(succeeded)
//!  Queued ─────────────► Running ───────────────────► Succeeded
//!    ▲                     │ │ exited(failed), retries left
//!    └─────────────────────┘ │   (or lost / preempted / interrupted: no retry spent,
//!                            │    until max_worker_deaths interruptions in a row)
//!                            │ exited(failed), no retries left
//!                            ├───────────────────────► Failed
//!                            │ cancel + exited
//!  Queued ── cancel ─────────┴───────────────────────► Cancelled
//!                            │ prune (early stopping) + exited
//!  Queued ── prune ──────────┴───────────────────────► Pruned
//! ```

use serde::{Deserialize, Serialize};

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped early by the sweep's early-stopping rule (not a failure).
    Pruned,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Pruned => "pruned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "pruned" => JobState::Pruned,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Pruned
        )
    }

    /// The one transition function. `None` means the event is not allowed in
    /// this state (a caller bug or a stale message; it changes nothing).
    pub fn on(self, event: JobEvent) -> Option<JobState> {
        use JobEvent::*;
        use JobState::*;
        match (self, event) {
            (Queued, Assign) => Some(Running),
            // `liandan retry`: a new attempt, the retries reset.
            (Failed | Cancelled, Retry) => Some(Queued),
            (Queued, Cancel) => Some(Cancelled),
            (Queued, Prune) => Some(Pruned),
            (
                Running,
                Ended {
                    outcome,
                    stop,
                    retries_left,
                },
            ) => Some(match outcome {
                _ if stop == StopRequest::Cancel && outcome != Outcome::Succeeded => Cancelled,
                _ if stop == StopRequest::Prune && outcome != Outcome::Succeeded => Pruned,
                Outcome::Succeeded => Succeeded,
                o if !o.counts_as_failure() => Queued,
                o if o.is_deterministic() => Failed,
                _ if retries_left => Queued,
                _ => Failed,
            }),
            _ => None,
        }
    }
}

/// Something that happens to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// A worker got a new attempt.
    Assign,
    /// The user cancelled a job that is not running.
    Cancel,
    /// Early stopping pruned a job that is not running.
    Prune,
    /// The user asked for a failed (or cancelled) job to run again.
    Retry,
    /// The current attempt ended.
    Ended {
        outcome: Outcome,
        stop: StopRequest,
        retries_left: bool,
    },
}

/// Whether the coordinator asked a running job to stop, and why. Stored in
/// the jobs table's `cancel_requested` column as 0, 1 or 2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StopRequest {
    #[default]
    None,
    /// The user cancelled it.
    Cancel,
    /// Early stopping pruned its trial.
    Prune,
}

impl StopRequest {
    pub fn to_db(self) -> i64 {
        match self {
            StopRequest::None => 0,
            StopRequest::Cancel => 1,
            StopRequest::Prune => 2,
        }
    }

    pub fn from_db(v: i64) -> Self {
        match v {
            0 => StopRequest::None,
            2 => StopRequest::Prune,
            _ => StopRequest::Cancel,
        }
    }
}

/// How an attempt ended, classified so that only the job's own failures spend
/// its retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Non-zero exit code.
    Failed,
    /// Killed by a signal it did not expect from us.
    Signalled,
    /// Killed by the kernel's OOM killer.
    OomKilled,
    /// The program could not be started (bad command, missing file).
    SpawnFailed,
    /// The job's working directory or program is missing on the worker: it
    /// would be missing on the next attempt too, so no retry is spent on it.
    SetupFailed,
    /// Exit code 2 within a second of starting: a command-line usage error
    /// (argparse, getopt), the same on every attempt, so the job fails at once.
    UsageError,
    /// Killed by us on the user's request.
    Cancelled,
    /// Asked to stop by a drain or a worker shutdown; resumes elsewhere.
    Preempted,
    /// The worker restarted and the process was gone.
    Interrupted,
    /// The job failed writing to the worker's full disk (ENOSPC).
    DiskFull,
    /// The worker stopped heartbeating; the lease expired.
    Lost,
    /// Interrupted, but the job's worker died during `max_worker_deaths`
    /// of its attempts in a row: the job is taken to be what kills it.
    WorkerDied,
    /// Exited 0 without ever reporting the sweep's metric, in a sweep with
    /// `liandan.require_metric`: the same on every attempt (a metric_pattern
    /// that does not match what the program prints), so not retried.
    NoMetric,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Signalled => "signalled",
            Outcome::OomKilled => "oom_killed",
            Outcome::SpawnFailed => "spawn_failed",
            Outcome::SetupFailed => "setup_failed",
            Outcome::UsageError => "usage_error",
            Outcome::Cancelled => "cancelled",
            Outcome::Preempted => "preempted",
            Outcome::Interrupted => "interrupted",
            Outcome::DiskFull => "disk_full",
            Outcome::Lost => "lost",
            Outcome::WorkerDied => "worker_died",
            Outcome::NoMetric => "no_metric",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "succeeded" => Outcome::Succeeded,
            "failed" => Outcome::Failed,
            "signalled" => Outcome::Signalled,
            "oom_killed" => Outcome::OomKilled,
            "spawn_failed" => Outcome::SpawnFailed,
            "setup_failed" => Outcome::SetupFailed,
            "usage_error" => Outcome::UsageError,
            "cancelled" => Outcome::Cancelled,
            "preempted" => Outcome::Preempted,
            "interrupted" => Outcome::Interrupted,
            "disk_full" => Outcome::DiskFull,
            "lost" => Outcome::Lost,
            "worker_died" => Outcome::WorkerDied,
            "no_metric" => Outcome::NoMetric,
            _ => return None,
        })
    }

    /// Whether this ending spends one of the job's retries. A lost worker, a
    /// drain, a worker restart or a worker's full disk is not the job's fault.
    pub fn counts_as_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed
                | Outcome::Signalled
                | Outcome::OomKilled
                | Outcome::SpawnFailed
                | Outcome::SetupFailed
                | Outcome::UsageError
                | Outcome::WorkerDied
                | Outcome::NoMetric
        )
    }

    /// Whether another attempt would end the same way, so none is made.
    pub fn is_deterministic(self) -> bool {
        matches!(
            self,
            Outcome::SetupFailed | Outcome::UsageError | Outcome::NoMetric
        )
    }
}

/// A sweep's state as the user set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepState {
    Active,
    Paused,
    Cancelled,
}

impl SweepState {
    pub fn as_str(self) -> &'static str {
        match self {
            SweepState::Active => "active",
            SweepState::Paused => "paused",
            SweepState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => SweepState::Active,
            "paused" => SweepState::Paused,
            "cancelled" => SweepState::Cancelled,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_table() {
        let end = |o, c: bool, r| JobEvent::Ended {
            outcome: o,
            stop: if c {
                StopRequest::Cancel
            } else {
                StopRequest::None
            },
            retries_left: r,
        };
        let pruned = |o| JobEvent::Ended {
            outcome: o,
            stop: StopRequest::Prune,
            retries_left: true,
        };
        let cases = [
            (JobState::Queued, JobEvent::Assign, Some(JobState::Running)),
            (
                JobState::Queued,
                JobEvent::Cancel,
                Some(JobState::Cancelled),
            ),
            (
                JobState::Running,
                end(Outcome::Succeeded, false, false),
                Some(JobState::Succeeded),
            ),
            (
                JobState::Running,
                end(Outcome::Succeeded, true, false),
                Some(JobState::Succeeded),
            ),
            (
                JobState::Running,
                end(Outcome::Failed, false, true),
                Some(JobState::Queued),
            ),
            (
                JobState::Running,
                end(Outcome::Failed, false, false),
                Some(JobState::Failed),
            ),
            // Deterministic failures fail at once, with retries left.
            (
                JobState::Running,
                end(Outcome::UsageError, false, true),
                Some(JobState::Failed),
            ),
            (
                JobState::Running,
                end(Outcome::SetupFailed, false, true),
                Some(JobState::Failed),
            ),
            (
                JobState::Running,
                end(Outcome::NoMetric, false, true),
                Some(JobState::Failed),
            ),
            (
                JobState::Running,
                end(Outcome::UsageError, true, true),
                Some(JobState::Cancelled),
            ),
            (
                JobState::Running,
                end(Outcome::OomKilled, false, false),
                Some(JobState::Failed),
            ),
            (
                JobState::Running,
                end(Outcome::Lost, false, false),
                Some(JobState::Queued),
            ),
            (
                JobState::Running,
                end(Outcome::Preempted, false, false),
                Some(JobState::Queued),
            ),
            (
                JobState::Running,
                end(Outcome::Interrupted, false, false),
                Some(JobState::Queued),
            ),
            (
                JobState::Running,
                end(Outcome::Lost, true, false),
                Some(JobState::Cancelled),
            ),
            (
                JobState::Running,
                end(Outcome::Cancelled, true, true),
                Some(JobState::Cancelled),
            ),
            (JobState::Queued, JobEvent::Prune, Some(JobState::Pruned)),
            (
                JobState::Running,
                pruned(Outcome::Cancelled),
                Some(JobState::Pruned),
            ),
            (
                JobState::Running,
                pruned(Outcome::Lost),
                Some(JobState::Pruned),
            ),
            (
                JobState::Running,
                pruned(Outcome::Failed),
                Some(JobState::Pruned),
            ),
            // It finished before the stop reached it: the result counts.
            (
                JobState::Running,
                pruned(Outcome::Succeeded),
                Some(JobState::Succeeded),
            ),
            (JobState::Pruned, JobEvent::Assign, None),
            (JobState::Running, JobEvent::Prune, None),
            (JobState::Succeeded, JobEvent::Assign, None),
            (
                JobState::Succeeded,
                end(Outcome::Succeeded, false, false),
                None,
            ),
            (JobState::Failed, JobEvent::Cancel, None),
            (JobState::Running, JobEvent::Assign, None),
            (JobState::Cancelled, JobEvent::Assign, None),
        ];
        for (s, e, want) in cases {
            assert_eq!(s.on(e), want, "{s:?} + {e:?}");
        }
    }
}

/// One durable record from a worker's spool, in the domain's terms (the gRPC
/// layer converts it from the wire: [`crate::wire`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Per-worker sequence number, strictly increasing, never reused.
    pub seq: u64,
    /// The job; None when the worker sent something that is no job id (the
    /// record is refused and counted, like a stale attempt's).
    pub job: Option<liandan_common::JobId>,
    /// The fencing token: the attempt that produced the record.
    pub attempt: liandan_common::AttemptNo,
    pub body: RecordBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RecordBody {
    /// The attempt's process started (nothing to store: the assignment
    /// already made the attempt running).
    Started,
    Log {
        line: u64,
        stderr: bool,
        ts: f64,
        text: String,
    },
    Metric {
        step: Option<i64>,
        ts: f64,
        json: String,
    },
    Exited {
        outcome: Outcome,
        exit_code: i32,
        signal: i32,
        message: String,
    },
    /// A record with no body (a newer worker's kind this coordinator does not
    /// know): acknowledged and otherwise ignored.
    Empty,
}

/// What the coordinator says of a batch of records once it is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    /// Every record with seq <= this is durable.
    pub seq: u64,
    /// How many of them were refused (a stale attempt, or no job id).
    pub refused: u64,
}

/// An attempt a worker says it holds (in its hello and every heartbeat).
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// None when what the worker sent is no job id (nothing to reconcile).
    pub job: Option<liandan_common::JobId>,
    pub attempt: liandan_common::AttemptNo,
    /// The process is still alive on the worker.
    pub running: bool,
    /// GPUs the attempt holds, so a restarted coordinator can account for them.
    pub gpu_uuids: Vec<String>,
}

/// A worker's hello: who it says it is, what it offers and what it holds.
#[derive(Clone, Debug, Default)]
pub struct Hello {
    /// Empty on a join-token worker's first hello (it is issued one).
    pub worker_id: String,
    pub hostname: String,
    pub resources: liandan_proto::v1::Resources,
    pub held: Vec<Held>,
    /// The worker's liandan version.
    pub version: String,
    /// The secret issued with a join-token worker's id.
    pub worker_secret: String,
}

/// A worker's heartbeat.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    /// Every attempt the worker holds; None from a worker that sends no list
    /// (nothing to reconcile then).
    pub held: Option<Vec<Held>>,
    /// The worker is shutting down: assign it nothing more.
    pub stopping: bool,
    /// The worker's disk, as of its last retention pass.
    pub disk: Option<liandan_proto::v1::DiskUsage>,
}
