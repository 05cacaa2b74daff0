//! A big submit builds its batch away from the core's lock: while it is
//! being built, workers are welcomed, their jobs dispatched and reads answered.

mod support;

use std::time::Duration;
use support::*;

/// Issue #18 item 10: a submit holds the core's lock only to check and
/// insert. While one is held before its batch is built, a worker connects and
/// gets another sweep's jobs, and reads answer; then the held one lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submit_builds_its_batch_off_the_cores_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (small, _, _) = c
        .submit(
            "name: small\nprogram: t.py\nmethod: grid\nparameters:\n  x: {value: 1}\n",
            "yaml",
            "",
        )
        .await
        .expect("submit");
    let hold = c.hold_builds();
    let values: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    let big = format!(
        "name: big\nprogram: t.py\nmethod: grid\nparameters:\n  x: {{values: [{}]}}\n",
        values.join(", ")
    );
    let held = {
        let c = c.clone();
        tokio::spawn(async move { c.submit(&big, "yaml", "").await })
    };
    // The held submit has parsed and expanded its spec and waits to build.
    let waiting = tokio::time::timeout(Duration::from_secs(60), async {
        while c.builds_held() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Everything else runs in tasks, so that a core stuck behind the held
    // build fails the test instead of hanging it.
    let welcomed = {
        let c = c.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::spawn(async move {
                let mut w = hello(&c, 1, vec![], 0).await;
                let got = drain(&mut w).assigned;
                let listed = c.committed(c.list_sweeps()).await.expect("committed");
                (got, listed.len())
            }),
        )
        .await
    };
    drop(hold);
    assert!(waiting.is_ok(), "the submit never reached its build");
    let (got, listed) = welcomed
        .expect("a worker is welcomed and reads answer while a submit is being built")
        .expect("task");
    assert_eq!(
        got.len(),
        1,
        "the other sweep's job is dispatched meanwhile"
    );
    assert_eq!(got[0].sweep_id, small.id);
    assert_eq!(listed, 1, "the held sweep is not there yet");
    let (b, created, _) = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the submit finishes once let go")
        .expect("task")
        .expect("submit");
    assert!(created);
    assert_eq!(b.counts.expect("counts").queued, 20_000);
}
