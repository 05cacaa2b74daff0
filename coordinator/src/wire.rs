//! Conversions between the wire (`liandan.v1`, [`pb`]) and the domain
//! ([`crate::model`]), in one place. The enums the wire carries (outcome,
//! stream, stop reason) are read here, with the snake_case strings of
//! workers one version behind as the fallback when an enum is unset.
//!
//! Wire compatibility: a worker one version behind sends `legacy_outcome`
//! and `legacy_stream` (and may still send the reserved `Hello.last_seq`),
//! and reads `Cancel.legacy_reason`, which the coordinator fills beside the
//! enum. Coordinators are upgraded before their workers: a new worker sends
//! only the enums.

use crate::model::{Ack, Heartbeat, Held, Hello, Outcome, Record, RecordBody, StopRequest};
use liandan_common::{AttemptNo, JobId};
use liandan_proto::v1 as pb;

impl From<pb::Record> for Record {
    fn from(r: pb::Record) -> Record {
        let body = match r.body {
            Some(pb::record::Body::Started(_)) => RecordBody::Started,
            Some(pb::record::Body::Log(l)) => RecordBody::Log {
                stderr: is_stderr(&l),
                line: l.line,
                ts: l.ts,
                text: l.text,
            },
            Some(pb::record::Body::Metric(m)) => RecordBody::Metric {
                step: m.step,
                ts: m.ts,
                json: m.json,
            },
            Some(pb::record::Body::Exited(e)) => RecordBody::Exited {
                outcome: outcome(&e),
                exit_code: e.exit_code,
                signal: e.signal,
                message: e.message,
            },
            None => RecordBody::Empty,
        };
        Record {
            seq: r.seq,
            job: JobId::parse(&r.job_id).ok(),
            attempt: AttemptNo(r.attempt),
            body,
        }
    }
}

impl From<pb::HeldAttempt> for Held {
    fn from(h: pb::HeldAttempt) -> Held {
        Held {
            job: JobId::parse(&h.job_id).ok(),
            attempt: AttemptNo(h.attempt),
            running: h.running,
            gpu_uuids: h.gpu_uuids,
        }
    }
}

impl From<pb::Hello> for Hello {
    fn from(h: pb::Hello) -> Hello {
        Hello {
            worker_id: h.worker_id,
            hostname: h.hostname,
            resources: h.resources.unwrap_or_default(),
            held: h.held.into_iter().map(Held::from).collect(),
            version: h.version,
            worker_secret: h.worker_secret,
        }
    }
}

impl From<pb::Heartbeat> for Heartbeat {
    fn from(h: pb::Heartbeat) -> Heartbeat {
        Heartbeat {
            held: h
                .reports_held
                .then(|| h.held.into_iter().map(Held::from).collect()),
            stopping: h.stopping,
            disk: h.disk,
        }
    }
}

impl From<Ack> for pb::Ack {
    fn from(a: Ack) -> pb::Ack {
        pb::Ack {
            seq: a.seq,
            refused: a.refused,
        }
    }
}

/// How a worker says its attempt ended: the enum, or (a worker one version
/// behind) the outcome's name. What neither names (an enum number from a
/// newer worker reads as unset) is a failure: the job's retries decide what
/// happens next, as for any failure; never a success.
pub fn outcome(e: &pb::JobExited) -> Outcome {
    match e.outcome() {
        pb::Outcome::Unspecified => Outcome::parse(&e.legacy_outcome).unwrap_or(Outcome::Failed),
        pb::Outcome::Succeeded => Outcome::Succeeded,
        pb::Outcome::Failed => Outcome::Failed,
        pb::Outcome::Signalled => Outcome::Signalled,
        pb::Outcome::OomKilled => Outcome::OomKilled,
        pb::Outcome::Cancelled => Outcome::Cancelled,
        pb::Outcome::Preempted => Outcome::Preempted,
        pb::Outcome::Interrupted => Outcome::Interrupted,
        pb::Outcome::SpawnFailed => Outcome::SpawnFailed,
        pb::Outcome::SetupFailed => Outcome::SetupFailed,
        pb::Outcome::UsageError => Outcome::UsageError,
        pb::Outcome::DiskFull => Outcome::DiskFull,
    }
}

/// Whether a log line came from stderr: the enum, or a worker one version
/// behind's "stderr".
pub fn is_stderr(l: &pb::LogRecord) -> bool {
    match l.stream() {
        pb::Stream::Stderr => true,
        pb::Stream::Stdout => false,
        pb::Stream::Unspecified => l.legacy_stream == "stderr",
    }
}

/// Why the coordinator stops an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The user's cancel or an early-stopping prune not yet carried out.
    Requested(StopRequest),
    /// The attempt is not the job's current one on this worker.
    Stale,
}

/// The cancel message for an attempt, with the enum and its legacy name.
pub fn cancel(job: &str, attempt: AttemptNo, cause: StopCause) -> pb::Cancel {
    let (reason, legacy) = match cause {
        StopCause::Requested(StopRequest::Prune) => (pb::StopReason::Pruned, "pruned"),
        StopCause::Requested(StopRequest::Cancel | StopRequest::None) => {
            (pb::StopReason::Cancelled, "cancelled")
        }
        StopCause::Stale => (pb::StopReason::Stale, "stale"),
    };
    pb::Cancel {
        job_id: job.to_string(),
        attempt: attempt.0,
        legacy_reason: legacy.into(),
        reason: reason as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(outcome: i32, legacy: &str) -> pb::JobExited {
        pb::JobExited {
            outcome,
            legacy_outcome: legacy.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_outcome_is_read_from_the_enum_or_from_a_worker_one_version_behind() {
        assert_eq!(
            outcome(&exited(pb::Outcome::OomKilled as i32, "")),
            Outcome::OomKilled
        );
        // The enum wins over a stray legacy name.
        assert_eq!(
            outcome(&exited(pb::Outcome::Succeeded as i32, "failed")),
            Outcome::Succeeded
        );
        // A worker one version behind: the name.
        assert_eq!(outcome(&exited(0, "preempted")), Outcome::Preempted);
        assert_eq!(outcome(&exited(0, "usage_error")), Outcome::UsageError);
        // Neither: a failure (retries decide), never a success.
        assert_eq!(outcome(&exited(0, "")), Outcome::Failed);
        assert_eq!(outcome(&exited(0, "exploded")), Outcome::Failed);
        assert_eq!(outcome(&exited(999, "")), Outcome::Failed);
    }

    #[test]
    fn every_wire_outcome_maps_to_the_domain_outcome_of_the_same_name() {
        for n in 1..=11 {
            let o = pb::Outcome::try_from(n).expect("a known outcome");
            let name = o
                .as_str_name()
                .trim_start_matches("OUTCOME_")
                .to_lowercase();
            assert_eq!(outcome(&exited(n, "")).as_str(), name, "{o:?}");
        }
    }

    #[test]
    fn streams_and_stop_reasons_keep_their_legacy_names() {
        let line = |stream: i32, legacy: &str| pb::LogRecord {
            stream,
            legacy_stream: legacy.into(),
            ..Default::default()
        };
        assert!(is_stderr(&line(pb::Stream::Stderr as i32, "")));
        assert!(!is_stderr(&line(pb::Stream::Stdout as i32, "stderr")));
        assert!(is_stderr(&line(0, "stderr")));
        assert!(!is_stderr(&line(0, "stdout")));
        let c = cancel(
            "jb-1",
            AttemptNo(3),
            StopCause::Requested(StopRequest::Prune),
        );
        assert_eq!(
            (c.reason(), c.legacy_reason.as_str(), c.attempt),
            (pb::StopReason::Pruned, "pruned", 3)
        );
        let c = cancel("jb-1", AttemptNo(3), StopCause::Stale);
        assert_eq!(
            (c.reason(), c.legacy_reason.as_str()),
            (pb::StopReason::Stale, "stale")
        );
    }

    #[test]
    fn a_record_without_a_job_id_or_a_body_is_kept_for_refusal_or_ack() {
        let r = Record::from(pb::Record {
            seq: 7,
            job_id: "not a job".into(),
            attempt: 2,
            body: None,
        });
        assert_eq!(
            (r.seq, r.job, r.attempt, r.body),
            (7, None, AttemptNo(2), RecordBody::Empty)
        );
    }
}
