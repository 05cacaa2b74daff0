//! `liandan.require_metric` asks each attempt that exits 0 to have reported
//! the sweep's metric itself: a retried job does not succeed on the value of
//! an earlier attempt that failed, and a value reported before a restart of
//! the coordinator still counts. The job's final and best values span its
//! attempts either way (a resumed run goes on from its checkpoint).

mod support;

use support::*;

const SPEC: &str = "name: s\nprogram: t.py\nmethod: grid\nmetric: {name: loss, goal: minimize}\nparameters:\n  x: {value: 1}\nliandan:\n  retries: 1\n  require_metric: true\n";

async fn next_attempt(
    c: &liandan_coordinator::core::Core,
    w: &mut Worker,
) -> liandan_proto::v1::Assignment {
    for _ in 0..100 {
        c.tick().await.expect("tick");
        if let Some(a) = drain(w).assigned.pop() {
            return a;
        }
        // A failed attempt's retry waits out its backoff.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no attempt was handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_exits_0_must_report_the_metric_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    c.submit(SPEC, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 1, vec![], 0).await;
    // Attempt 1 reports, then fails; attempt 2 exits 0 having reported nothing.
    let a = next_attempt(&c, &mut w).await;
    metric(&c, &mut w, &a, 10, 0.25).await;
    exit(&c, &mut w, &a, "failed").await;
    let b = next_attempt(&c, &mut w).await;
    assert_eq!(b.attempt, 2);
    exit(&c, &mut w, &b, "succeeded").await;
    let j = c.get_job(&a.job_id).await.expect("job");
    assert_eq!(j.state, "failed", "{j:?}");
    let last = j.attempts.last().expect("attempts");
    assert_eq!(last.state, "no_metric", "{j:?}");
    // The job's values are still what its records say.
    assert_eq!(j.best_metric, Some(0.25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_reported_before_a_coordinator_restart_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    c.submit(SPEC, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 1, vec![], 0).await;
    let a = next_attempt(&c, &mut w).await;
    metric(&c, &mut w, &a, 10, 0.5).await;
    let seq = w.seq;
    drop(w);
    drop(c);
    // The coordinator restarts; the worker says hello holding the attempt
    // and reports its end.
    let c = core(dir.path());
    let mut w = hello(&c, 1, held(std::slice::from_ref(&a)), seq).await;
    exit(&c, &mut w, &a, "succeeded").await;
    let j = c.get_job(&a.job_id).await.expect("job");
    assert_eq!(j.state, "succeeded", "{j:?}");
    assert_eq!(j.final_metric, Some(0.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_reported_before_a_restart_is_told_as_divergence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    c.submit(SPEC, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 1, vec![], 0).await;
    let a = next_attempt(&c, &mut w).await;
    // A NaN travels as null (JSON has no NaN).
    metric(&c, &mut w, &a, 10, f64::NAN).await;
    let seq = w.seq;
    drop(w);
    drop(c);
    let c = core(dir.path());
    let mut w = hello(&c, 1, held(std::slice::from_ref(&a)), seq).await;
    exit(&c, &mut w, &a, "succeeded").await;
    let j = c.get_job(&a.job_id).await.expect("job");
    let last = j.attempts.last().expect("attempts");
    assert_eq!(last.state, "no_metric", "{j:?}");
    assert!(
        last.message.contains("only as NaN or infinity"),
        "{}",
        last.message
    );
}
