//! Worker records that outlive their machines: `liandan workers --forget`
//! and expiry of workers gone for `worker_expiry_days` (issue #19 item 11:
//! join-token registrations that never go away).

mod support;

use liandan_common::config::CoordinatorConfig;
use liandan_coordinator::core::{Core, CoreError};
use std::time::Duration;
use support::*;

fn core_with(dir: &std::path::Path, expiry_days: f64) -> std::sync::Arc<Core> {
    Core::open(CoordinatorConfig {
        data_dir: dir.to_path_buf(),
        worker_expiry_days: expiry_days,
        lease_timeout_secs: 1.0,
        heartbeat_interval_secs: 0.2,
        ..Default::default()
    })
    .expect("core opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_worker_can_be_forgotten_and_a_connected_or_busy_one_cannot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core_with(dir.path(), 0.0);
    c.submit(
        "name: s\nprogram: t.py\nmethod: grid\nparameters:\n  x: {value: 1}\n",
        "yaml",
        "",
    )
    .await
    .expect("submit");
    let mut w = hello(&c, 1, vec![], 0).await;
    assert_eq!(drain(&mut w).assigned.len(), 1);
    let id = w.id.to_string();
    let refused = c.forget_worker(&id).await;
    assert!(
        matches!(&refused, Err(CoreError::FailedPrecondition(m)) if m.contains("connected")),
        "{refused:?}"
    );
    c.disconnected(&w.id, w.session);
    let refused = c.forget_worker(&id).await;
    assert!(
        matches!(&refused, Err(CoreError::FailedPrecondition(m)) if m.contains("holds 1 job")),
        "{refused:?}"
    );
    // Its lease runs out: the job is requeued, and then the worker can go.
    let freed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            c.tick().await.expect("tick");
            if c.list_workers()[0].running_jobs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the lease never expired");
    let gone = c.forget_worker(&id).await.expect("forget");
    assert_eq!(gone.id, id);
    assert!(c.list_workers().is_empty());
    assert!(matches!(
        c.forget_worker(&id).await,
        Err(CoreError::NotFound { .. })
    ));
    // Forgotten for good: not back after a restart.
    drop(w);
    drop(c);
    let c = core_with(dir.path(), 0.0);
    assert!(c.list_workers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_gone_for_the_expiry_are_forgotten_and_connected_ones_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 2 s in days.
    let days = 2.0 / 86_400.0;
    let c = core_with(dir.path(), days);
    let w = hello(&c, 1, vec![], 0).await;
    c.disconnected(&w.id, w.session);
    // A second worker that stays connected.
    let (tx, _kept) = tokio::sync::mpsc::unbounded_channel();
    let h = liandan_proto::v1::Hello {
        worker_id: "wk-two".into(),
        hostname: "h2".into(),
        resources: Some(liandan_proto::v1::Resources {
            cpu_slots: 1,
            ..Default::default()
        }),
        version: "t".into(),
        ..Default::default()
    };
    c.hello(h, tx, liandan_common::WorkerId::parse("wk-two").ok())
        .await
        .expect("hello");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.tick().await.expect("tick");
    assert_eq!(c.list_workers().len(), 2, "forgotten before its time");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.tick().await.expect("tick");
    let left: Vec<String> = c.list_workers().into_iter().map(|w| w.id).collect();
    assert_eq!(
        left,
        vec!["wk-two".to_string()],
        "only the connected one stays"
    );
    drop(c);
    let c = core_with(dir.path(), days);
    let left: Vec<String> = c.list_workers().into_iter().map(|w| w.id).collect();
    assert_eq!(left, vec!["wk-two".to_string()], "and the database agrees");
}
