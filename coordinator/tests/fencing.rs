//! The fence on checkpoints: only the worker that holds a job's current
//! attempt may store a checkpoint for it; a refused upload stores nothing.

mod support;

use liandan_coordinator::store::CheckpointRow;
use support::*;

const ONE: &str = "name: f\nprogram: t.py\nmethod: grid\nparameters:\n  x: {value: 1}\n";

fn row(job: &str, attempt: u64, file: &str) -> CheckpointRow {
    CheckpointRow {
        job_id: job.into(),
        attempt,
        step: i64::MAX,
        size: 1,
        blake3: "00".into(),
        metric: None,
        created_at: 0.0,
        file: file.into(),
    }
}

#[tokio::test]
async fn a_checkpoint_is_stored_only_from_the_worker_that_holds_the_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    c.submit(ONE, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 1, Vec::new(), 0).await;
    let a = drain(&mut w).assigned.pop().expect("assigned");
    let before = c.refused_stale();
    // Right job, right attempt, another worker: refused, nothing stored.
    c.add_checkpoint(row(&a.job_id, a.attempt, "intruder.ckpt"), "wk-other")
        .await
        .expect_err("refused");
    assert!(c.checkpoints(&a.job_id).expect("list").is_empty());
    assert_eq!(c.refused_stale(), before + 1);
    // An older attempt from the holder: refused too.
    c.add_checkpoint(row(&a.job_id, a.attempt - 1, "old.ckpt"), w.id.as_str())
        .await
        .expect_err("refused");
    assert!(c.checkpoints(&a.job_id).expect("list").is_empty());
    // The holder's current attempt: stored.
    c.add_checkpoint(row(&a.job_id, a.attempt, "good.ckpt"), w.id.as_str())
        .await
        .expect("stored");
    let stored = c.checkpoints(&a.job_id).expect("list");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].file, "good.ckpt");
}
