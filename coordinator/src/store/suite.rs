//! What any storage engine must do, as one suite of tests over [`Store`]:
//! every kind of [`Op`] is applied and read back through [`Reads`], with the
//! rules the core relies on (acknowledged sequence numbers and certificate
//! binding only grow, a log line is stored once, metrics keep their order, a
//! deleted sweep takes everything of it along and leaves its attempt floor,
//! a cancel a crash cut short is finished, batches apply in order). SQLite
//! runs it below; a PostgreSQL engine adds one test that runs [`all`] on it.

use super::*;

fn id<T>(r: Result<T, impl std::fmt::Debug>) -> T {
    r.expect("a valid id")
}

fn sweep_ops(sweep: &str, name: &str, jobs: usize, first_seq: i64) -> Vec<Op> {
    let sid = id(SweepId::parse(sweep));
    let tid = id(TrialId::parse(&format!("tr-{}", &sweep[3..])));
    vec![
        Op::InsertSweep {
            id: sweep.into(),
            name: name.into(),
            spec_json: "{}".into(),
            spec_hash: format!("hash-{name}"),
            method: "grid".into(),
            algorithm: "grid".into(),
            created_at: 1.5,
            owner: "ada".into(),
        },
        Op::InsertTrial {
            id: tid.to_string(),
            sweep_id: sweep.into(),
            idx: 0,
            params_json: r#"{"lr":0.1}"#.into(),
        },
        Op::InsertJobs(NewJobs {
            sweep_id: sid,
            first_seq,
            first_ord: 0,
            first_attempt: 4,
            jobs: (0..jobs)
                .map(|k| {
                    (
                        id(JobId::parse(&format!("job-{}{k}", &sweep[3..]))),
                        tid.clone(),
                        k as i64,
                    )
                })
                .collect(),
        }),
    ]
}

fn update(seq: i64, state: &'static str, attempt: u64, metric: Option<f64>) -> Op {
    Op::UpdateJob(JobUpdate {
        seq,
        state,
        attempt,
        retries_used: 1,
        worker_id: Some(id(WorkerId::parse("wk-one"))),
        cancel_requested: 0,
        final_metric: metric,
        best_metric: metric,
        result_recorded: state == "succeeded",
        worker_deaths: 2,
    })
}

fn worker(acked_seq: u64, cert_bound: bool, secret_hash: Option<&str>) -> Op {
    Op::UpsertWorker {
        id: "wk-one".into(),
        hostname: "gpu1".into(),
        resources_json: "{}".into(),
        acked_seq,
        draining: false,
        last_seen: 7.0,
        cert_bound,
        secret_hash: secret_hash.map(String::from),
    }
}

fn log(job: &str, attempt: u64, line: u64, stream: u8, text: &str) -> LogRow {
    LogRow {
        job_id: job.into(),
        attempt,
        line,
        stream,
        ts: line as f64,
        text: text.into(),
    }
}

fn metric(job: &str, attempt: u64, step: Option<i64>, json: &str) -> MetricRow {
    MetricRow {
        job_id: job.into(),
        attempt,
        step,
        ts: 0.0,
        json: json.into(),
    }
}

fn checkpoint(job: &str, step: i64, file: &str) -> CheckpointRow {
    CheckpointRow {
        job_id: job.into(),
        attempt: 5,
        step,
        size: 3,
        blake3: "ab".repeat(32),
        metric: Some(0.5),
        created_at: 2.0,
        file: file.into(),
    }
}

async fn jobs(store: &Store) -> Vec<JobRow> {
    store
        .read(|c| {
            let mut v = Vec::new();
            c.each_job(|j| v.push(j))?;
            Ok(v)
        })
        .await
        .expect("jobs")
}

async fn commit(store: &Store, ops: Vec<Op>) {
    store.commit(ops).await.expect("commit");
}

/// Sweeps, trials and jobs come back as written; state and result updates
/// land on the job's row, in batch order (a later update wins).
async fn sweeps_trials_and_jobs(store: &Store) {
    commit(store, sweep_ops("sw-aa", "first", 3, 10)).await;
    commit(
        store,
        vec![
            Op::SetSweepState {
                id: "sw-aa".into(),
                state: "paused".into(),
            },
            update(10, "running", 5, None),
            update(10, "succeeded", 5, Some(0.25)),
            Op::JobMetrics {
                seq: 11,
                final_metric: Some(2.0),
                best_metric: Some(1.0),
            },
        ],
    )
    .await;
    let sweeps = store.read(|c| c.sweeps()).await.expect("sweeps");
    assert_eq!(sweeps.len(), 1);
    let s = &sweeps[0];
    assert_eq!(
        (
            s.id.as_str(),
            s.name.as_str(),
            s.state.as_str(),
            s.owner.as_str()
        ),
        ("sw-aa", "first", "paused", "ada")
    );
    assert_eq!((s.spec_hash.as_str(), s.created_at), ("hash-first", 1.5));
    let trials = store
        .read(|c| {
            let mut v = Vec::new();
            c.each_trial(|t| v.push(t))?;
            Ok(v)
        })
        .await
        .expect("trials");
    assert_eq!(trials.len(), 1);
    assert_eq!(
        (trials[0].idx, trials[0].params_json.as_str()),
        (0, r#"{"lr":0.1}"#)
    );
    let js = jobs(store).await;
    assert_eq!(
        js.iter().map(|j| j.seq).collect::<Vec<_>>(),
        vec![10, 11, 12],
        "submission order"
    );
    assert_eq!(js.iter().map(|j| j.seed).collect::<Vec<_>>(), vec![0, 1, 2]);
    let done = &js[0];
    assert_eq!(
        (done.state.as_str(), done.attempt, done.retries_used),
        ("succeeded", 5, 1)
    );
    assert_eq!(
        (done.final_metric, done.worker_id.as_deref()),
        (Some(0.25), Some("wk-one"))
    );
    assert_eq!((done.worker_deaths, done.result_recorded), (2, true));
    assert_eq!(
        (js[1].final_metric, js[1].best_metric),
        (Some(2.0), Some(1.0))
    );
    let fresh = &js[2];
    assert_eq!(
        (
            fresh.state.as_str(),
            fresh.attempt,
            fresh.worker_id.as_deref()
        ),
        ("queued", 4, None)
    );
}

/// An attempt is stored when it starts and completed when it ends.
async fn attempts(store: &Store) {
    commit(
        store,
        vec![
            Op::InsertAttempt {
                job_id: "job-bb0".into(),
                attempt: 2,
                worker_id: "wk-one".into(),
                started_at: 3.0,
            },
            Op::InsertAttempt {
                job_id: "job-bb0".into(),
                attempt: 1,
                worker_id: "wk-two".into(),
                started_at: 1.0,
            },
            Op::EndAttempt {
                job_id: "job-bb0".into(),
                attempt: 1,
                state: "oom_killed".into(),
                ended_at: 2.0,
                exit_code: None,
                signal: Some(9),
                message: "killed".into(),
            },
        ],
    )
    .await;
    let all = store
        .read(|c| c.attempts("job-bb0"))
        .await
        .expect("attempts");
    assert_eq!(
        all.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2],
        "oldest first"
    );
    let ended = &all[0];
    assert_eq!(
        (ended.state.as_str(), ended.ended_at, ended.signal),
        ("oom_killed", Some(2.0), Some(9))
    );
    assert_eq!(
        (ended.exit_code, ended.message.as_deref()),
        (None, Some("killed"))
    );
    let running = store
        .read(|c| c.attempt("job-bb0", 2))
        .await
        .expect("attempt");
    let running = running.expect("stored");
    assert_eq!(
        (
            running.state.as_str(),
            running.ended_at,
            running.worker_id.as_str()
        ),
        ("running", None, "wk-one")
    );
    assert!(store
        .read(|c| c.attempt("job-bb0", 3))
        .await
        .expect("read")
        .is_none());
}

/// A log line is stored once (a resent record changes nothing), pages in
/// line order, filters by stream, and knows its last line.
async fn logs(store: &Store) {
    commit(
        store,
        vec![Op::Logs(vec![
            log("job-cc0", 1, 2, 1, "oops"),
            log("job-cc0", 1, 1, 0, "hello"),
            log("job-cc0", 1, 3, 0, "bye"),
            log("job-cc0", 2, 1, 0, "other attempt"),
        ])],
    )
    .await;
    commit(
        store,
        vec![Op::Logs(vec![log("job-cc0", 1, 1, 0, "resent")])],
    )
    .await;
    let page = store
        .read(|c| c.log_lines("job-cc0", 1, 1, None, 2))
        .await
        .expect("lines");
    assert_eq!(
        page.iter()
            .map(|l| (l.line, l.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "hello"), (2, "oops")]
    );
    let rest = store
        .read(|c| c.log_lines("job-cc0", 1, 3, None, 10))
        .await
        .expect("lines");
    assert_eq!(rest.iter().map(|l| l.line).collect::<Vec<_>>(), vec![3]);
    let err = store
        .read(|c| c.log_lines("job-cc0", 1, 1, Some(1), 10))
        .await
        .expect("lines");
    assert_eq!(
        err.iter().map(|l| (l.line, l.stream)).collect::<Vec<_>>(),
        vec![(2, 1)]
    );
    let last = |stream| async move {
        store
            .read(move |c| c.last_log_line("job-cc0", 1, stream))
            .await
            .expect("last")
    };
    assert_eq!(
        (last(None).await, last(Some(0)).await, last(Some(1)).await),
        (3, 3, 2)
    );
    assert_eq!(
        store
            .read(|c| c.last_log_line("job-none", 1, None))
            .await
            .expect("last"),
        0
    );
}

/// Metric records keep the order they were stored in, per job and attempt.
async fn metrics(store: &Store) {
    commit(
        store,
        vec![Op::Metrics(vec![
            metric("job-dd0", 1, Some(5), r#"{"loss":3}"#),
            metric("job-dd0", 1, None, r#"{"loss":2}"#),
            metric("job-dd0", 2, Some(1), r#"{"loss":1}"#),
            metric("job-dd1", 1, Some(1), r#"{"loss":9}"#),
        ])],
    )
    .await;
    let all = store
        .read(|c| c.metrics_after("job-dd0", 0, 0, 10))
        .await
        .expect("metrics");
    assert_eq!(
        all.iter().map(|m| (m.attempt, m.step)).collect::<Vec<_>>(),
        vec![(1, Some(5)), (1, None), (2, Some(1))]
    );
    let after = store
        .read(move |c| c.metrics_after("job-dd0", 0, all[0].id, 1))
        .await
        .expect("page");
    assert_eq!(
        after.iter().map(|m| m.json.as_str()).collect::<Vec<_>>(),
        vec![r#"{"loss":2}"#]
    );
    let second = store
        .read(|c| c.metrics_after("job-dd0", 2, 0, 10))
        .await
        .expect("attempt 2");
    assert_eq!(second.len(), 1);
    let each = store
        .read(|c| {
            let mut v = Vec::new();
            c.each_metric_of("job-dd0", |step, json| v.push((step, json)))?;
            Ok(v)
        })
        .await
        .expect("each");
    assert_eq!(each.len(), 3);
    let scanned = store
        .read(|c| {
            let mut seen = 0;
            c.scan_attempt_metrics("job-dd0", 1, |_| {
                seen += 1;
                true
            })?;
            Ok(seen)
        })
        .await
        .expect("scan");
    assert_eq!(scanned, 1, "a scan stops when told");
}

/// A worker's acknowledged sequence number and its certificate binding
/// only grow; a stored secret stays when none is given; forget removes it.
async fn workers_tokens_and_counters(store: &Store) {
    commit(store, vec![worker(40, true, Some("h1"))]).await;
    commit(
        store,
        vec![
            worker(12, false, None),
            Op::WorkerAcked {
                id: "wk-one".into(),
                acked_seq: 30,
            },
        ],
    )
    .await;
    let ws = store.read(|c| c.workers()).await.expect("workers");
    assert_eq!(ws.len(), 1);
    let w = &ws[0];
    assert_eq!(
        (w.acked_seq, w.cert_bound, w.secret_hash.as_deref()),
        (40, true, Some("h1"))
    );
    assert_eq!(
        (w.hostname.as_str(), w.last_seen, w.draining),
        ("gpu1", 7.0, false)
    );
    commit(
        store,
        vec![Op::WorkerAcked {
            id: "wk-one".into(),
            acked_seq: 41,
        }],
    )
    .await;
    assert_eq!(
        store.read(|c| c.workers()).await.expect("workers")[0].acked_seq,
        41
    );
    commit(
        store,
        vec![Op::DeleteWorker {
            id: "wk-one".into(),
        }],
    )
    .await;
    assert!(store
        .read(|c| c.workers())
        .await
        .expect("workers")
        .is_empty());

    commit(
        store,
        vec![
            Op::PutToken {
                name: "ada".into(),
                role: "admin".into(),
                hash: "x1".into(),
                created_at: 1.0,
            },
            Op::PutToken {
                name: "bob".into(),
                role: "user".into(),
                hash: "x2".into(),
                created_at: 2.0,
            },
            Op::DeleteToken { name: "ada".into() },
        ],
    )
    .await;
    let ts = store.read(|c| c.tokens()).await.expect("tokens");
    assert_eq!(
        ts.iter()
            .map(|t| (t.name.as_str(), t.role.as_str(), t.hash.as_str()))
            .collect::<Vec<_>>(),
        vec![("bob", "user", "x2")]
    );

    commit(
        store,
        vec![
            Op::AddCounter {
                name: "refused".into(),
                delta: 2,
            },
            Op::AddCounter {
                name: "refused".into(),
                delta: 3,
            },
        ],
    )
    .await;
    assert_eq!(
        store.read(|c| c.counter("refused")).await.expect("counter"),
        5
    );
    assert_eq!(
        store.read(|c| c.counter("never")).await.expect("counter"),
        0
    );
}

/// A checkpoint of the same job and step replaces the earlier one; deletes
/// remove one step.
async fn checkpoints(store: &Store) {
    commit(
        store,
        vec![
            Op::InsertCheckpoint(checkpoint("job-ee0", 200, "a")),
            Op::InsertCheckpoint(checkpoint("job-ee0", 100, "b")),
            Op::InsertCheckpoint(checkpoint("job-ee0", 200, "c")),
            Op::InsertCheckpoint(checkpoint("job-ee1", 100, "d")),
            Op::DeleteCheckpoint {
                job_id: "job-ee1".into(),
                step: 100,
            },
        ],
    )
    .await;
    let all = store
        .read(|c| {
            let mut v = Vec::new();
            c.each_checkpoint(|r| v.push((r.job_id, r.step, r.file)))?;
            Ok(v)
        })
        .await
        .expect("checkpoints");
    assert_eq!(
        all,
        vec![
            ("job-ee0".into(), 100, "b".into()),
            ("job-ee0".into(), 200, "c".into())
        ]
    );
}

/// Deleting a sweep takes its trials, jobs, attempts, logs, metrics and
/// checkpoints along, and remembers its highest attempt (the higher of two
/// deletes); other sweeps keep theirs.
async fn deletes(store: &Store) {
    commit(store, sweep_ops("sw-ff", "doomed", 1, 50)).await;
    let keep_before = jobs(store).await.len();
    let job = "job-ff0";
    commit(
        store,
        vec![
            Op::InsertAttempt {
                job_id: job.into(),
                attempt: 5,
                worker_id: "wk-one".into(),
                started_at: 1.0,
            },
            Op::Logs(vec![log(job, 5, 1, 0, "x")]),
            Op::Metrics(vec![metric(job, 5, None, "{}")]),
            Op::InsertCheckpoint(checkpoint(job, 1, "f")),
            Op::DeleteSweep {
                id: "sw-ff".into(),
                max_attempt: 9,
            },
            Op::DeleteSweep {
                id: "sw-ff".into(),
                max_attempt: 7,
            },
        ],
    )
    .await;
    let js = jobs(store).await;
    assert_eq!(js.len(), keep_before - 1);
    assert!(js.iter().all(|j| j.sweep_id != "sw-ff"));
    assert!(store
        .read(|c| c.sweeps())
        .await
        .expect("sweeps")
        .iter()
        .all(|s| s.id != "sw-ff"));
    assert!(store
        .read(move |c| c.attempts(job))
        .await
        .expect("attempts")
        .is_empty());
    assert_eq!(
        store
            .read(move |c| c.last_log_line(job, 5, None))
            .await
            .expect("logs"),
        0
    );
    assert!(store
        .read(move |c| c.metrics_after(job, 0, 0, 10))
        .await
        .expect("metrics")
        .is_empty());
    let floors = store.read(|c| c.deleted_sweeps()).await.expect("deleted");
    assert!(floors.contains(&("sw-ff".to_string(), 9)), "{floors:?}");
}

/// A cancel a crash cut short: queued jobs of cancelled sweeps end
/// cancelled, running ones are asked to stop; other sweeps are untouched.
async fn finishing_cancels(store: &Store) {
    commit(store, {
        let mut ops = sweep_ops("sw-99", "cancelled", 2, 100);
        ops.push(update(101, "running", 5, None));
        ops.push(Op::SetSweepState {
            id: "sw-99".into(),
            state: "cancelled".into(),
        });
        ops
    })
    .await;
    commit(store, vec![Op::FinishCancels]).await;
    let js = jobs(store).await;
    let of = |seq| js.iter().find(|j| j.seq == seq).cloned().expect("job");
    assert_eq!(of(100).state, "cancelled");
    assert_eq!(
        (of(101).state.as_str(), of(101).cancel_requested),
        ("running", 1)
    );
    assert!(js
        .iter()
        .filter(|j| j.sweep_id == "sw-aa")
        .all(|j| j.state != "cancelled"));
}

/// A barrier commits nothing and resolves once what was queued before it is durable.
async fn barriers(store: &Store) {
    let before = jobs(store).await.len();
    let queued = store.enqueue(vec![update(12, "failed", 6, None)]);
    store.barrier().await.expect("barrier");
    queued.await.expect("queued");
    let js = jobs(store).await;
    assert_eq!(js.len(), before);
    assert_eq!(
        js.iter().find(|j| j.seq == 12).map(|j| j.state.as_str()),
        Some("failed")
    );
}

/// Every case, in order, on one store (each uses its own ids).
pub(super) async fn all(store: &Store) {
    sweeps_trials_and_jobs(store).await;
    attempts(store).await;
    logs(store).await;
    metrics(store).await;
    workers_tokens_and_counters(store).await;
    checkpoints(store).await;
    deletes(store).await;
    finishing_cancels(store).await;
    barriers(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_engine_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("coordinator.db")).expect("open");
    all(&store).await;
    // And it all survives a reopen (what is committed is on disk).
    let n = jobs(&store).await.len();
    drop(store);
    let again = Store::open(&dir.path().join("coordinator.db")).expect("reopen");
    assert_eq!(jobs(&again).await.len(), n);
}
