//! A job whose worker dies under it attempt after attempt (`kill -9 $PPID`)
//! is taken to be what kills it (#19 item 7): from `max_worker_deaths`
//! interruptions in a row on, each spends a retry, as a failure does; any
//! other ending clears the count.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_deaths_in_a_row_become_the_jobs_failure_and_other_endings_clear_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (sweep, _, _) = c
        .submit(
            "name: s\nprogram: t.py\nmethod: grid\nparameters:\n  x: {value: 1}\nliandan:\n  retries: 1\n",
            "yaml",
            "",
        )
        .await
        .expect("submit");
    let mut w = hello(&c, 1, vec![], 0).await;
    // interrupted, interrupted, failed (a retry spent, the count cleared),
    // interrupted, interrupted, interrupted: the third in a row fails it.
    let endings = [
        "interrupted",
        "interrupted",
        "failed",
        "interrupted",
        "interrupted",
        "interrupted",
    ];
    let mut job = String::new();
    for (i, outcome) in endings.iter().enumerate() {
        let mut a = Vec::new();
        for _ in 0..100 {
            c.tick().await.expect("tick");
            a = drain(&mut w).assigned;
            if !a.is_empty() {
                break;
            }
            // The failed attempt's retry waits out its backoff.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(a.len(), 1, "attempt {} was handed out", i + 1);
        job = a[0].job_id.clone();
        assert_eq!(a[0].attempt, i as u64 + 1);
        exit(&c, &mut w, &a[0], outcome).await;
    }
    let j = c.get_job(&job).await.expect("job");
    assert_eq!(j.state, "failed", "{j:?}");
    let states: Vec<&str> = j.attempts.iter().map(|a| a.state.as_str()).collect();
    assert_eq!(
        states,
        [
            "interrupted",
            "interrupted",
            "failed",
            "interrupted",
            "interrupted",
            "worker_died"
        ]
    );
    let last = &j.attempts[5].message;
    assert!(last.contains("died during 3 attempts"), "{last}");
    // The count is kept across a restart of the coordinator.
    drop(c);
    let c = core(dir.path());
    let j = c.get_job(&job).await.expect("job");
    assert_eq!(j.state, "failed");
    let _ = sweep;
}
