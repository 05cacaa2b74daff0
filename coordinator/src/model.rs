//! The job model: one state enum with one transition function. Every change of
//! a job's state goes through [`JobState::on`], and the new state is written in
//! the same transaction as the event that caused it.
//!
//! ```text
//!            assign                 exited(succeeded)
//!  Queued ─────────────► Running ───────────────────► Succeeded
//!    ▲                     │ │ exited(failed), retries left
//!    └─────────────────────┘ │   (or lost / preempted / interrupted: no retry spent)
//!                            │ exited(failed), no retries left
//!                            ├───────────────────────► Failed
//!                            │ cancel + exited
//!  Queued ── cancel ─────────┴───────────────────────► Cancelled
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
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// The one transition function. `None` means the event is not allowed in
    /// this state (a caller bug or a stale message; it changes nothing).
    pub fn on(self, event: JobEvent) -> Option<JobState> {
        use JobEvent::*;
        use JobState::*;
        match (self, event) {
            (Queued, Assign) => Some(Running),
            (Queued, Cancel) => Some(Cancelled),
            (
                Running,
                Ended {
                    outcome,
                    cancel_requested,
                    retries_left,
                },
            ) => Some(match outcome {
                _ if cancel_requested && outcome != Outcome::Succeeded => Cancelled,
                Outcome::Succeeded => Succeeded,
                o if !o.counts_as_failure() => Queued,
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
    /// The current attempt ended.
    Ended {
        outcome: Outcome,
        cancel_requested: bool,
        retries_left: bool,
    },
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
    /// Killed by us on the user's request.
    Cancelled,
    /// Asked to stop by a drain or a worker shutdown; resumes elsewhere.
    Preempted,
    /// The worker restarted and the process was gone.
    Interrupted,
    /// The worker stopped heartbeating; the lease expired.
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Signalled => "signalled",
            Outcome::OomKilled => "oom_killed",
            Outcome::SpawnFailed => "spawn_failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Preempted => "preempted",
            Outcome::Interrupted => "interrupted",
            Outcome::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "succeeded" => Outcome::Succeeded,
            "failed" => Outcome::Failed,
            "signalled" => Outcome::Signalled,
            "oom_killed" => Outcome::OomKilled,
            "spawn_failed" => Outcome::SpawnFailed,
            "cancelled" => Outcome::Cancelled,
            "preempted" => Outcome::Preempted,
            "interrupted" => Outcome::Interrupted,
            "lost" => Outcome::Lost,
            _ => return None,
        })
    }

    /// Whether this ending spends one of the job's retries. A lost worker, a
    /// drain or a worker restart is not the job's fault.
    pub fn counts_as_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::Signalled | Outcome::OomKilled | Outcome::SpawnFailed
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
        let end = |o, c, r| JobEvent::Ended {
            outcome: o,
            cancel_requested: c,
            retries_left: r,
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
