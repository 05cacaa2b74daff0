//! Values from the wire at their extremes (sequence numbers, attempts and
//! steps at 0, -1, and the ends of their types) change nothing they should
//! not and panic nothing: a worker's records and a checkpoint row from its
//! own session, against a job it runs.

mod support;

use liandan_coordinator::store::CheckpointRow;
use liandan_proto::v1 as pb;
use proptest::prelude::*;
use support::*;

const ONE: &str = "name: x\nprogram: t.py\nmethod: grid\nparameters:\n  a: {value: 1}\n";

fn extremes_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>()
    ]
}

fn extremes_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(-1),
        Just(0),
        Just(i64::MAX),
        any::<i64>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn extreme_sequence_attempt_and_step_values_are_refused_or_harmless(
        seq in extremes_u64(),
        attempt in extremes_u64(),
        step in extremes_i64(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = core(dir.path());
            c.submit(ONE, "yaml", "").await.expect("submit");
            let mut w = hello(&c, 1, Vec::new(), 0).await;
            let a = drain(&mut w).assigned.pop().expect("assigned");
            let rec = |seq: u64, attempt: u64, body| pb::Record { seq, job_id: a.job_id.clone(), attempt, body: Some(body) };
            let metric = pb::record::Body::Metric(pb::MetricReport { step: Some(step), ts: 0.0, json: "{\"loss\": 1.0}".into() });
            let r = c.records(&w.id, w.session, vec![rec(seq, attempt, metric)]).await;
            if seq > (1u64 << 40) {
                prop_assert!(r.is_err(), "a sequence number far past the stored one is refused");
            }
            // The job's own next record still counts: nothing was poisoned.
            let exit = pb::record::Body::Exited(pb::JobExited { outcome: pb::Outcome::Succeeded as i32, ..Default::default() });
            let next = if r.is_ok() { seq.saturating_add(1).max(1) } else { 1 };
            if next < u64::MAX {
                c.records(&w.id, w.session, vec![rec(next, a.attempt, exit)]).await.expect("records");
                let job = c.get_job(&a.job_id).await.expect("job");
                prop_assert_eq!(job.state, "succeeded");
            }
            // A checkpoint row with any step or attempt: stored only if it is the holder's attempt.
            let row = CheckpointRow { job_id: a.job_id.clone(), attempt, step, size: 1, blake3: "00".into(), metric: None, created_at: 0.0, file: "f".into() };
            let _ = c.add_checkpoint(row, w.id.as_str()).await;
            Ok(())
        })?;
    }
}
