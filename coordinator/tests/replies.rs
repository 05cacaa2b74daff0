//! Replies reflect only committed state: while a batch is still on its way to
//! the disk, no caller may be told of what it contains (a crash would revert
//! it). The writer is held with `Store::hold_commits`, the calls go through
//! the gRPC service itself, and each must wait until the hold is lifted.

mod support;

use liandan_coordinator::checkpoints::CheckpointStore;
use liandan_coordinator::grpc::Api;
use liandan_proto::v1 as pb;
use pb::user_service_server::UserService;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tonic::Request;

const SPEC: &str = "name: r\nprogram: t.py\nmethod: grid\nparameters:\n  x: {values: [1, 2]}\n";

fn api(core: &Arc<liandan_coordinator::core::Core>, dir: &std::path::Path) -> Api {
    let api = Api::new();
    let ck = Arc::new(CheckpointStore::new(dir).expect("checkpoint store"));
    api.set_ready(core.clone(), ck);
    api
}

/// Runs `call` and asserts it does not answer while `hold` is alive, and does once it drops.
async fn answers_only_after_commit<T: Send + 'static>(
    what: &str,
    hold: liandan_coordinator::gate::Hold,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let task = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !task.is_finished(),
        "{what} answered while its state was not yet committed"
    );
    drop(hold);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer after the commit"))
        .expect("task")
}

fn submit_req() -> Request<pb::SubmitSweepRequest> {
    Request::new(pb::SubmitSweepRequest {
        spec: SPEC.into(),
        format: "yaml".into(),
        name: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_tells_of_a_sweep_before_its_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let api = api(&c, dir.path());
    let hold = c.store().hold_commits();
    // The first submit is in memory, its commit held.
    let first = {
        let api = api.clone();
        tokio::spawn(async move { api.submit_sweep(submit_req()).await })
    };
    let sid = loop {
        if let Some(s) = c.list_sweeps().first() {
            break s.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!first.is_finished(), "submit answered before its commit");

    // A resubmit must not answer "exists" yet, nor may any read show the sweep.
    let again = {
        let api = api.clone();
        async move { api.submit_sweep(submit_req()).await }
    };
    let second = tokio::spawn(again);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a resubmit answered \"exists\" before the first submit's commit"
    );
    let reads = {
        let (api, sid) = (api.clone(), sid.clone());
        async move {
            let sweep = api
                .get_sweep(Request::new(pb::GetSweepRequest {
                    sweep_id: sid.clone(),
                }))
                .await
                .expect("get_sweep")
                .into_inner();
            let listed = api
                .list_sweeps(Request::new(pb::ListSweepsRequest::default()))
                .await
                .expect("list_sweeps")
                .into_inner();
            let jobs = api
                .list_jobs(Request::new(pb::ListJobsRequest {
                    sweep_id: sid.clone(),
                    ..Default::default()
                }))
                .await
                .expect("list_jobs")
                .into_inner();
            let mut trials = api
                .get_trial_results(Request::new(pb::GetTrialResultsRequest {
                    sweep_id: sid.clone(),
                    ..Default::default()
                }))
                .await
                .expect("trial results")
                .into_inner();
            use tokio_stream::StreamExt;
            let first_chunk = trials.next().await.expect("a chunk").expect("ok");
            (sweep, listed, jobs, first_chunk)
        }
    };
    let (sweep, listed, jobs, chunk) = answers_only_after_commit("get_sweep", hold, reads).await;
    assert_eq!(sweep.id, sid);
    assert_eq!(listed.sweeps.len(), 1);
    assert_eq!(jobs.jobs.len(), 2);
    assert_eq!(chunk.trials_total, 2);
    let created = first.await.expect("task").expect("submit").into_inner();
    assert!(created.created);
    let exists = second.await.expect("task").expect("resubmit").into_inner();
    assert!(!exists.created, "the resubmit finds the sweep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_and_a_state_change_are_told_only_once_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let api = api(&c, dir.path());
    c.submit(SPEC, "yaml", "").await.expect("submit");
    let sid = c.list_sweeps()[0].id.clone();
    // A worker takes a job: the assignment is in memory, its commit held.
    let hold = c.store().hold_commits();
    let hello_task = {
        let c = c.clone();
        tokio::spawn(async move { hello(&c, 1, Vec::new(), 0).await })
    };
    let job = loop {
        let running = c.list_jobs(&sid, "running").expect("jobs");
        if let Some(j) = running.first() {
            break j.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let got = {
        let (api, job) = (api.clone(), job.clone());
        async move {
            api.get_job(Request::new(pb::JobRef { job_id: job }))
                .await
                .expect("get_job")
                .into_inner()
        }
    };
    let j = answers_only_after_commit("get_job", hold, got).await;
    assert_eq!(j.state, "running");
    let mut w = hello_task.await.expect("hello");
    let a = drain(&mut w).assigned;
    assert_eq!(a.len(), 1, "the worker got its job once committed");
    assert_eq!(a[0].job_id, job);
    // Pause: the reply shows the new state only when it is durable.
    let hold = c.store().hold_commits();
    let pause = {
        let (api, sid) = (api.clone(), sid.clone());
        async move {
            api.pause_sweep(Request::new(pb::SweepRef { sweep_id: sid }))
                .await
                .expect("pause")
                .into_inner()
        }
    };
    let s = answers_only_after_commit("pause", hold, pause).await;
    assert_eq!(s.state, "paused");
}
