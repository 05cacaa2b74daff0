//! Lease expiry, fencing and retry backoff, with tokio's paused clock (no sleeps).

use liandan_common::config::CoordinatorConfig;
use liandan_coordinator::core::{Core, TICK};
use liandan_proto::v1 as pb;
use pb::coordinator_message::Msg;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::{advance, Duration};

const SPEC: &str = "name: t\nprogram: /bin/true\ncommand: [/bin/true]\nmethod: grid\nparameters:\n  x: {value: 1}\nliandan:\n  retries: 2\n";

struct Worker {
    id: String,
    session: u64,
    rx: mpsc::UnboundedReceiver<pb::CoordinatorMessage>,
    seq: u64,
}

/// A heartbeat of a simulated worker that sends no held list (as before
/// reconciliation existed).
async fn beat(core: &Core, w: &liandan_common::WorkerId, session: u64) {
    core.heartbeat(
        w,
        session,
        pb::Heartbeat {
            held: Vec::new(),
            stopping: false,
            reports_held: false,
            disk: None,
        },
    )
    .await
    .expect("heartbeat");
}

fn core(dir: &std::path::Path) -> Arc<Core> {
    let cfg = CoordinatorConfig {
        data_dir: dir.to_path_buf(),
        lease_timeout_secs: 10.0,
        heartbeat_interval_secs: 2.0,
        retry_backoff_secs: 4.0,
        retry_backoff_max_secs: 60.0,
        ..Default::default()
    };
    Core::open(cfg).unwrap()
}

async fn hello(core: &Core, id: &str, held: Vec<pb::HeldAttempt>) -> Worker {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = pb::Hello {
        worker_id: id.into(),
        hostname: "h".into(),
        resources: Some(pb::Resources {
            cpu_slots: 1,
            ..Default::default()
        }),
        held,
        version: "t".into(),
        worker_secret: String::new(),
    };
    // Certificate-bound: the id stays the worker's across reconnects.
    let cert = liandan_common::WorkerId::parse(id).ok();
    let (wid, session) = core.hello(h, tx, cert).await.unwrap();
    Worker {
        id: wid.to_string(),
        session,
        rx,
        seq: 0,
    }
}

fn assignments(w: &mut Worker) -> Vec<pb::Assignment> {
    let mut out = Vec::new();
    while let Ok(m) = w.rx.try_recv() {
        if let Some(Msg::Assign(a)) = m.msg {
            out.push(a);
        }
    }
    out
}

/// The incrementally kept counts agree with the jobs' states.
fn counts_agree(core: &Core) {
    for sw in core.list_sweeps() {
        let jobs = core.list_jobs(&sw.id, "").unwrap();
        let n = |s: &str| jobs.iter().filter(|j| j.state == s).count() as u64;
        let c = sw.counts.unwrap();
        assert_eq!(
            (
                c.queued,
                c.running,
                c.succeeded,
                c.failed,
                c.cancelled,
                c.pruned
            ),
            (
                n("queued"),
                n("running"),
                n("succeeded"),
                n("failed"),
                n("cancelled"),
                n("pruned")
            )
        );
    }
}

fn wid(w: &Worker) -> liandan_common::WorkerId {
    liandan_common::WorkerId::parse(&w.id).unwrap()
}

async fn exit(
    core: &Core,
    w: &mut Worker,
    job: &str,
    attempt: u64,
    outcome: &str,
) -> liandan_coordinator::model::Ack {
    w.seq += 1;
    // Sent as a worker one version behind does: the outcome's name only.
    let body = pb::record::Body::Exited(pb::JobExited {
        legacy_outcome: outcome.into(),
        exit_code: 1,
        ..Default::default()
    });
    let rec = pb::Record {
        seq: w.seq,
        job_id: job.into(),
        attempt,
        body: Some(body),
    };
    core.records(&wid(w), w.session, vec![rec]).await.unwrap()
}

async fn log(
    core: &Core,
    w: &mut Worker,
    job: &str,
    attempt: u64,
) -> liandan_coordinator::model::Ack {
    w.seq += 1;
    let body = pb::record::Body::Log(pb::LogRecord {
        line: 1,
        stream: pb::Stream::Stdout as i32,
        ts: 0.0,
        text: "late".into(),
        ..Default::default()
    });
    let rec = pb::Record {
        seq: w.seq,
        job_id: job.into(),
        attempt,
        body: Some(body),
    };
    core.records(&wid(w), w.session, vec![rec]).await.unwrap()
}

/// Lets `d` pass as the running coordinator sees it: its timer ticks every
/// [`TICK`] (a jump without ticks is a coordinator that did not run).
async fn run_for(core: &Core, d: Duration) {
    let mut left = d;
    while !left.is_zero() {
        let step = left.min(TICK);
        advance(step).await;
        core.tick().await.unwrap();
        left -= step;
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_coordinator_does_not_blame_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    core.submit(SPEC, "yaml", "").await.unwrap();
    let mut a = hello(&core, "wk-aaaa", vec![]).await;
    let job = assignments(&mut a).pop().expect("assigned").job_id;
    run_for(&core, Duration::from_secs(2)).await;
    beat(&core, &wid(&a), a.session).await;
    // The coordinator stops for 30 s (three leases): no tick, no heartbeat
    // processed. When it runs again, the worker's queued heartbeat is still
    // on its way; its job must not be lost.
    advance(Duration::from_secs(30)).await;
    core.tick().await.unwrap();
    let j = core.get_job(&job).await.unwrap();
    assert_eq!(
        (j.state.as_str(), j.attempt),
        ("running", 1),
        "not lost to the stall"
    );
    beat(&core, &wid(&a), a.session).await;
    run_for(&core, Duration::from_secs(9)).await;
    assert_eq!(core.get_job(&job).await.unwrap().state, "running");
    // A worker that really went silent still loses its lease.
    run_for(&core, Duration::from_secs(2)).await;
    let j = core.get_job(&job).await.unwrap();
    assert_eq!(
        j.state, "queued",
        "silence after the stall still expires the lease"
    );
    counts_agree(&core);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_the_lease_and_silence_loses_it() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    core.submit(SPEC, "yaml", "").await.unwrap();
    let mut a = hello(&core, "wk-aaaa", vec![]).await;
    let job = assignments(&mut a).pop().expect("assigned").job_id;
    // Heartbeats every 5 s for 30 s: still running, still attempt 1.
    for _ in 0..6 {
        run_for(&core, Duration::from_secs(5)).await;
        beat(&core, &wid(&a), a.session).await;
        core.tick().await.unwrap();
    }
    let j = core.get_job(&job).await.unwrap();
    assert_eq!((j.state.as_str(), j.attempt), ("running", 1));
    // Silence: at 9.9 s still leased, at 10.1 s lost.
    run_for(&core, Duration::from_millis(9_900)).await;
    core.tick().await.unwrap();
    assert_eq!(core.get_job(&job).await.unwrap().state, "running");
    run_for(&core, Duration::from_millis(200)).await;
    core.tick().await.unwrap();
    let j = core.get_job(&job).await.unwrap();
    assert_eq!(j.state, "queued", "requeued after the lease timeout");
    assert_eq!(j.retries_used, 0, "a lost worker does not spend a retry");
    assert_eq!(j.attempts[0].state, "lost");
    // Another worker gets attempt 2.
    let mut b = hello(&core, "wk-bbbb", vec![]).await;
    let a2 = assignments(&mut b).pop().expect("reassigned");
    assert_eq!((a2.job_id.as_str(), a2.attempt), (job.as_str(), 2));
    // The old worker comes back holding attempt 1: told to kill it, and its late writes are refused.
    let held = vec![pb::HeldAttempt {
        job_id: job.clone(),
        attempt: 1,
        running: true,
        gpu_uuids: vec![],
    }];
    let mut a = hello(&core, "wk-aaaa", held).await;
    let welcome = loop {
        if let Some(Msg::Welcome(w)) = a.rx.try_recv().unwrap().msg {
            break w;
        }
    };
    assert_eq!(welcome.kill.len(), 1);
    assert_eq!(welcome.kill[0].legacy_reason, "stale");
    a.seq = welcome.acked_seq;
    assert_eq!(log(&core, &mut a, &job, 1).await.refused, 1);
    assert_eq!(exit(&core, &mut a, &job, 1, "succeeded").await.refused, 1);
    assert_eq!(core.refused_stale(), 2);
    let j = core.get_job(&job).await.unwrap();
    assert_eq!(
        (j.state.as_str(), j.attempt),
        ("running", 2),
        "a stale result is not recorded"
    );
    // The current attempt's result counts, once.
    exit(&core, &mut b, &job, 2, "succeeded").await;
    assert_eq!(core.get_job(&job).await.unwrap().state, "succeeded");
    let again = exit(&core, &mut b, &job, 2, "succeeded").await;
    assert_eq!(again.refused, 1, "a second result for the job is refused");
    counts_agree(&core);
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_retry_with_exponential_backoff_then_fail() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    core.submit(SPEC, "yaml", "").await.unwrap();
    let mut w = hello(&core, "wk-cccc", vec![]).await;
    let job = assignments(&mut w).pop().unwrap().job_id;
    // First failure: retry after 4 s.
    exit(&core, &mut w, &job, 1, "failed").await;
    assert!(assignments(&mut w).is_empty(), "no immediate retry");
    run_for(&core, Duration::from_millis(3_900)).await;
    beat(&core, &wid(&w), w.session).await;
    core.tick().await.unwrap();
    assert!(assignments(&mut w).is_empty(), "still backing off");
    run_for(&core, Duration::from_millis(200)).await;
    core.tick().await.unwrap();
    assert_eq!(
        assignments(&mut w)
            .pop()
            .expect("retried after 4 s")
            .attempt,
        2
    );
    // Second failure: 8 s.
    exit(&core, &mut w, &job, 2, "failed").await;
    run_for(&core, Duration::from_millis(7_900)).await;
    beat(&core, &wid(&w), w.session).await;
    core.tick().await.unwrap();
    assert!(assignments(&mut w).is_empty());
    run_for(&core, Duration::from_millis(200)).await;
    core.tick().await.unwrap();
    assert_eq!(
        assignments(&mut w)
            .pop()
            .expect("retried after 8 s")
            .attempt,
        3
    );
    // Third failure: the two retries are spent.
    exit(&core, &mut w, &job, 3, "failed").await;
    let j = core.get_job(&job).await.unwrap();
    assert_eq!((j.state.as_str(), j.retries_used), ("failed", 2));
    counts_agree(&core);
}

#[tokio::test(start_paused = true)]
async fn preemption_requeues_at_once_without_spending_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    core.submit(SPEC, "yaml", "").await.unwrap();
    let mut w = hello(&core, "wk-eeee", vec![]).await;
    let job = assignments(&mut w).pop().unwrap().job_id;
    exit(&core, &mut w, &job, 1, "preempted").await;
    let a = assignments(&mut w).pop().expect("requeued at once");
    assert_eq!(a.attempt, 2);
    assert_eq!(core.get_job(&job).await.unwrap().retries_used, 0);
}

#[tokio::test(start_paused = true)]
async fn restart_gives_workers_a_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let job;
    {
        let core = core(dir.path());
        core.submit(SPEC, "yaml", "").await.unwrap();
        let mut w = hello(&core, "wk-dddd", vec![]).await;
        job = assignments(&mut w).pop().unwrap().job_id;
    }
    // "Restart": a new core on the same data dir, with the default 20 s grace.
    let core = core(dir.path());
    assert_eq!(core.get_job(&job).await.unwrap().state, "running");
    run_for(&core, Duration::from_secs(15)).await;
    core.tick().await.unwrap();
    assert_eq!(
        core.get_job(&job).await.unwrap().state,
        "running",
        "within the grace period"
    );
    // The worker reconnects holding its attempt: it continues.
    let held = vec![pb::HeldAttempt {
        job_id: job.clone(),
        attempt: 1,
        running: true,
        gpu_uuids: vec![],
    }];
    let w = hello(&core, "wk-dddd", held).await;
    run_for(&core, Duration::from_secs(8)).await;
    beat(&core, &wid(&w), w.session).await;
    core.tick().await.unwrap();
    let j = core.get_job(&job).await.unwrap();
    assert_eq!((j.state.as_str(), j.attempt), ("running", 1));
}

#[tokio::test(start_paused = true)]
async fn a_restart_without_the_worker_loses_the_attempt_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let job;
    {
        let core = core(dir.path());
        core.submit(SPEC, "yaml", "").await.unwrap();
        let mut w = hello(&core, "wk-ffff", vec![]).await;
        job = assignments(&mut w).pop().unwrap().job_id;
    }
    let core = core(dir.path());
    run_for(&core, Duration::from_secs(21)).await;
    core.tick().await.unwrap();
    let j = core.get_job(&job).await.unwrap();
    assert_eq!(j.state, "queued");
    assert_eq!(j.attempts[0].state, "lost");
    counts_agree(&core);
}

fn worker_with(id: &str, cpu_slots: u32, gpus: &[&str], labels: &[&str]) -> pb::Hello {
    pb::Hello {
        worker_id: id.into(),
        hostname: "h".into(),
        resources: Some(pb::Resources {
            cpu_slots,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, u)| pb::Gpu {
                    index: i as u32,
                    uuid: u.to_string(),
                    name: "H100".into(),
                    memory_bytes: 80 << 30,
                })
                .collect(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        }),
        held: vec![],
        version: "t".into(),
        worker_secret: String::new(),
    }
}

fn sweep_spec(name: &str, n: usize, extra: &str) -> String {
    let vals: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!("name: {name}\nprogram: /bin/true\ncommand: [/bin/true]\nmethod: grid\nparameters:\n  x: {{values: [{}]}}\nliandan:\n{extra}", vals.join(", "))
}

#[tokio::test(start_paused = true)]
async fn scheduling_packs_whole_gpus_honours_labels_caps_and_shares_fairly() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    core.submit(
        &sweep_spec("gpu", 5, "  resources: {gpus: 1}\n"),
        "yaml",
        "",
    )
    .await
    .unwrap();
    core.submit(&sweep_spec("capped", 5, "  concurrency: 1\n"), "yaml", "")
        .await
        .unwrap();
    core.submit(
        &sweep_spec("elsewhere", 5, "  resources: {labels: [b]}\n"),
        "yaml",
        "",
    )
    .await
    .unwrap();
    core.submit(&sweep_spec("free", 5, ""), "yaml", "")
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    core.hello(
        worker_with("wk-gggg", 3, &["GPU-a", "GPU-b"], &["a"]),
        tx,
        liandan_common::WorkerId::parse("wk-gggg").ok(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let Some(Msg::Assign(a)) = m.msg {
            got.push(a);
        }
    }
    let by_sweep = |name: &str| {
        got.iter()
            .filter(|a| core.get_sweep(name).unwrap().id == a.sweep_id)
            .collect::<Vec<_>>()
    };
    // Whole GPUs, each to one job, on this worker.
    let gpu_jobs = by_sweep("gpu");
    assert_eq!(gpu_jobs.len(), 2, "two GPUs, one job each");
    let mut uuids: Vec<&str> = gpu_jobs
        .iter()
        .flat_map(|a| a.gpu_uuids.iter().map(String::as_str))
        .collect();
    uuids.sort();
    assert_eq!(uuids, ["GPU-a", "GPU-b"]);
    // CPU slots shared fairly between the two CPU sweeps, within the cap.
    assert_eq!(by_sweep("capped").len(), 1, "concurrency: 1");
    assert_eq!(by_sweep("free").len(), 2);
    // A job needing a label the worker lacks never lands there.
    assert!(by_sweep("elsewhere").is_empty());
    assert_eq!(got.len(), 5);
    counts_agree(&core);
}

/// Heartbeats carry what the worker holds, and the coordinator repairs any
/// difference: an assignment the worker never got (a reply future dropped
/// after its commit, say) is requeued without spending a retry instead of
/// running forever on a heartbeating worker; an attempt the worker still runs
/// that is no longer current is told to stop; a current one asked to stop is
/// asked again.
#[tokio::test(start_paused = true)]
async fn heartbeats_reconcile_what_the_worker_holds() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    core.submit(SPEC, "yaml", "").await.unwrap();
    let mut w = hello(&core, "wk-a", Vec::new()).await;
    let a = assignments(&mut w).pop().expect("assigned");
    let held = |attempt, running| pb::HeldAttempt {
        job_id: a.job_id.clone(),
        attempt,
        running,
        gpu_uuids: Vec::new(),
    };
    let hb = |held: Vec<pb::HeldAttempt>| pb::Heartbeat {
        held,
        stopping: false,
        reports_held: true,
        disk: None,
    };
    // Heartbeats every 2 s for `secs`, each saying the worker holds `h`.
    async fn beats(core: &Core, w: &Worker, secs: u64, h: &dyn Fn() -> pb::Heartbeat) {
        for _ in 0..secs / 2 {
            run_for(core, Duration::from_secs(2)).await;
            core.heartbeat(&wid(w), w.session, h()).await.unwrap();
        }
    }
    // Within the grace (30 s) an assignment may still be on its way: a
    // heartbeat without it changes nothing.
    beats(&core, &w, 28, &|| hb(Vec::new())).await;
    let j = &core.list_jobs("t", "").unwrap()[0];
    assert_eq!((j.state.as_str(), j.attempt), ("running", 1));
    assert!(assignments(&mut w).is_empty());
    // Past it, the worker still holds nothing: lost, requeued, no retry spent.
    beats(&core, &w, 4, &|| hb(Vec::new())).await;
    let again = assignments(&mut w);
    let j = &core.list_jobs("t", "").unwrap()[0];
    assert_eq!(j.retries_used, 0, "{j:?}");
    assert_eq!(again.len(), 1, "handed out again: {j:?}");
    assert_eq!(again[0].attempt, 2);
    counts_agree(&core);
    // The worker holds attempt 2 and, somehow, a still-running attempt 1: stop that one.
    core.heartbeat(&wid(&w), w.session, hb(vec![held(2, true), held(1, true)]))
        .await
        .unwrap();
    let stops = |w: &mut Worker| {
        let mut out = Vec::new();
        while let Ok(m) = w.rx.try_recv() {
            if let Some(Msg::Cancel(c)) = m.msg {
                out.push((c.attempt, c.reason()));
            }
        }
        out
    };
    assert_eq!(stops(&mut w), vec![(1, pb::StopReason::Stale)]);
    // Long past the grace, an attempt that ended with its exit record not yet
    // acknowledged still counts as held: nothing is requeued.
    beats(&core, &w, 34, &|| hb(vec![held(2, false)])).await;
    let j = &core.list_jobs("t", "").unwrap()[0];
    assert_eq!(
        (j.state.as_str(), j.attempt),
        ("running", 2),
        "the current one runs on"
    );
    // A cancel that the worker missed is sent again with the next heartbeat.
    core.cancel_job(&a.job_id).await.unwrap();
    let _ = stops(&mut w);
    core.heartbeat(&wid(&w), w.session, hb(vec![held(2, true)]))
        .await
        .unwrap();
    assert_eq!(stops(&mut w), vec![(2, pb::StopReason::Cancelled)]);
}

/// A worker that reconnects replaces its stream; the old one (a half-open
/// connection, say) is ended at its next message instead of staying open.
#[tokio::test]
async fn a_replaced_stream_is_ended_at_its_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    let old = hello(&core, "wk-twice", vec![]).await;
    let new = hello(&core, "wk-twice", vec![]).await;
    assert_ne!(old.session, new.session);
    let hb = pb::Heartbeat {
        reports_held: true,
        ..Default::default()
    };
    let wid = liandan_common::WorkerId::parse("wk-twice").unwrap();
    let r = core.heartbeat(&wid, old.session, hb.clone()).await;
    assert!(r.is_err(), "the replaced stream is told to end");
    core.heartbeat(&wid, new.session, hb)
        .await
        .expect("the new stream lives");
}

/// A job that ends `disk_full` (the worker's disk, not the job) is requeued
/// without spending a retry, and that worker gets nothing new for a while:
/// it would fail every job it took at once.
#[tokio::test(start_paused = true)]
async fn a_worker_whose_disk_filled_gets_no_new_job_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path());
    core.submit(SPEC, "yaml", "").await.unwrap();
    let mut w = hello(&core, "wk-full", vec![]).await;
    let a = assignments(&mut w).pop().expect("a job");
    exit(&core, &mut w, &a.job_id, a.attempt, "disk_full").await;
    beat(&core, &wid(&w), w.session).await;
    run_for(&core, Duration::from_secs(5)).await;
    assert!(
        assignments(&mut w).is_empty(),
        "nothing new while its disk is full"
    );
    let job = core.get_job(&a.job_id).await.unwrap();
    assert_eq!((job.state.as_str(), job.retries_used), ("queued", 0));
    // The worker heartbeats meanwhile (its lease is 10 s).
    for _ in 0..6 {
        beat(&core, &wid(&w), w.session).await;
        run_for(&core, Duration::from_secs(5)).await;
    }
    let job = core.get_job(&a.job_id).await.unwrap();
    assert!(
        !assignments(&mut w).is_empty(),
        "work again once the pause is over: {job:?}"
    );
}
