//! Cancelling a big sweep ends its jobs in chunks (the core's lock is held
//! for one chunk at a time), and a cancel a crash cut short between chunks
//! is finished when the coordinator starts again.

mod support;

use support::*;

fn grid(name: &str, n: usize) -> String {
    let values: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "name: {name}\nprogram: t.py\nmethod: grid\nparameters:\n  x: {{values: [{}]}}\n",
        values.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_every_job_of_a_sweep_bigger_than_a_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (s, _, _) = c
        .submit(&grid("big", 45_000), "yaml", "")
        .await
        .expect("submit");
    let mut w = hello(&c, 2, Vec::new(), 0).await;
    let running = drain(&mut w).assigned;
    assert_eq!(running.len(), 2);
    let after = c
        .set_sweep_state(&s.id, liandan_coordinator::model::SweepState::Cancelled)
        .await
        .expect("cancel");
    let counts = after.counts.expect("counts");
    assert_eq!(counts.cancelled, 45_000 - 2, "{counts:?}");
    assert_eq!(counts.running, 2, "running ones are asked to stop");
    assert_eq!(drain(&mut w).stops.len(), 2);
    // And the database says the same after a restart.
    drop(w);
    drop(c);
    let c = core(dir.path());
    let counts = c.get_sweep(&s.id).expect("sweep").counts.expect("counts");
    assert_eq!(counts.queued, 0, "{counts:?}");
    assert_eq!(counts.cancelled, 45_000 - 2);
}

#[tokio::test]
async fn a_cancel_cut_short_by_a_crash_is_finished_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (s, _, _) = c
        .submit(&grid("cut", 50), "yaml", "")
        .await
        .expect("submit");
    drop(c);
    // The crash came after the sweep's state was committed, before any chunk.
    let db = rusqlite::Connection::open(dir.path().join("coordinator.db")).expect("db");
    db.execute("UPDATE sweeps SET state='cancelled' WHERE name='cut'", [])
        .expect("update");
    drop(db);
    let c = core(dir.path());
    let info = c.get_sweep(&s.id).expect("sweep");
    assert_eq!(info.state, "cancelled");
    let counts = info.counts.expect("counts");
    assert_eq!((counts.queued, counts.cancelled), (0, 50), "{counts:?}");
}
