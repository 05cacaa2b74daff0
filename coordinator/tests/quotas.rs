//! Per-user quotas (#19 item 10): queued jobs refused at submit over
//! `max_queued_jobs_per_user`, running jobs held at
//! `max_running_jobs_per_user` while other users' jobs run.

mod support;

use liandan_common::config::CoordinatorConfig;
use liandan_coordinator::core::{Core, CoreError};
use support::*;

fn spec(name: &str, n: usize) -> String {
    let values: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "name: {name}\nprogram: t.py\nmethod: grid\nparameters:\n  x: {{values: [{}]}}\n",
        values.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_over_the_quota_are_refused_at_submit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Core::open(CoordinatorConfig {
        data_dir: dir.path().to_path_buf(),
        max_queued_jobs_per_user: 10,
        ..Default::default()
    })
    .expect("core");
    c.submit_as(&spec("a1", 8), "yaml", "", "alice")
        .await
        .expect("8 fit");
    let over = c.submit_as(&spec("a2", 3), "yaml", "", "alice").await;
    assert!(
        matches!(&over, Err(CoreError::ResourceExhausted(m)) if m.contains("alice has 8 queued job(s) and this sweep adds 3") && m.contains("max_queued_jobs_per_user (10)")),
        "{over:?}"
    );
    assert_eq!(c.list_sweeps().len(), 1, "the refused sweep was not added");
    // Another user's jobs are theirs to count.
    c.submit_as(&spec("b1", 10), "yaml", "", "bob")
        .await
        .expect("bob's fit");
    // Resubmitting the same sweep adds nothing and is not refused.
    let (_, created, _) = c
        .submit_as(&spec("a1", 8), "yaml", "", "alice")
        .await
        .expect("resubmit");
    assert!(!created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_the_running_quota_waits_while_others_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Core::open(CoordinatorConfig {
        data_dir: dir.path().to_path_buf(),
        max_running_jobs_per_user: 2,
        ..Default::default()
    })
    .expect("core");
    c.submit_as(&spec("a1", 3), "yaml", "", "alice")
        .await
        .expect("a1");
    c.submit_as(&spec("a2", 3), "yaml", "", "alice")
        .await
        .expect("a2");
    c.submit_as(&spec("b1", 3), "yaml", "", "bob")
        .await
        .expect("b1");
    let mut w = hello(&c, 6, vec![], 0).await;
    c.tick().await.expect("tick");
    let got = drain(&mut w).assigned;
    let owner_of = |job: &str| c.job_owner(job).expect("owner");
    let alice = got
        .iter()
        .filter(|a| owner_of(&a.job_id) == "alice")
        .count();
    let bob = got.iter().filter(|a| owner_of(&a.job_id) == "bob").count();
    assert_eq!(
        (alice, bob),
        (2, 2),
        "6 slots: alice at her quota of 2, bob at his"
    );
    // One of alice's ends: the next of hers starts, no more.
    let a = got
        .iter()
        .find(|a| owner_of(&a.job_id) == "alice")
        .expect("alice's");
    exit(&c, &mut w, a, "succeeded").await;
    c.tick().await.expect("tick");
    let more = drain(&mut w).assigned;
    assert_eq!(more.len(), 1, "{more:?}");
    assert_eq!(owner_of(&more[0].job_id), "alice");
}
