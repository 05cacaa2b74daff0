//! Benchmarks of the real binaries on loopback (see BENCHMARKS.md).
//!
//! ```text
//! liandan-bench dispatch [JOBS] [WORKERS] [SLOTS]   jobs dispatched and completed per second
//! liandan-bench logs [LINES]                        log lines and metric records per second, follow latency
//! liandan-bench checkpoint [MIB]                    checkpoint upload/download vs a plain TCP copy
//! ```
//!
//! Build with `--release` (`make bench` does).

use liandan_e2e::{Cluster, Opts};
use liandan_proto::v1 as pb;
use pb::coordinator_message::Msg;
use pb::user_service_client::UserServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn channel(url: &str) -> Res<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .connect()
        .await?)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Opens a worker session and says hello with `slots` CPU slots; returns the
/// client (for checkpoint RPCs), the outbound sender and the coordinator's messages.
async fn open_session(
    url: &str,
    id: &str,
    slots: u32,
    buffer: usize,
) -> Res<(
    WorkerServiceClient<Channel>,
    mpsc::Sender<pb::WorkerMessage>,
    tonic::Streaming<pb::CoordinatorMessage>,
)> {
    let mut client = WorkerServiceClient::new(channel(url).await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (out, out_rx) = mpsc::channel::<pb::WorkerMessage>(buffer);
    let hello = pb::Hello {
        worker_id: id.to_string(),
        hostname: "bench".into(),
        resources: Some(pb::Resources {
            cpu_slots: slots,
            ..Default::default()
        }),
        held: vec![],
        version: "bench".into(),
        worker_secret: String::new(),
    };
    out.send(pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Hello(hello)),
    })
    .await?;
    let inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    Ok((client, out, inbound))
}

/// A simulated worker: a real gRPC session that finishes every assignment at once.
async fn sim_worker(url: String, id: String, slots: u32) -> Res<()> {
    let (_, out, mut inbound) = open_session(&url, &id, slots, 64).await?;
    let (asg_tx, mut asg_rx) = mpsc::unbounded_channel::<pb::Assignment>();
    tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            if let Some(Msg::Assign(a)) = m.msg {
                if asg_tx.send(a).is_err() {
                    return;
                }
            }
        }
    });
    let mut seq = 0u64;
    let mut batch = Vec::new();
    let mut hb = tokio::time::interval(Duration::from_millis(2000));
    loop {
        tokio::select! {
            n = asg_rx.recv_many(&mut batch, 4096) => {
                if n == 0 {
                    return Ok(());
                }
                let mut recs = Vec::with_capacity(batch.len() * 2);
                for a in batch.drain(..) {
                    seq += 1;
                    recs.push(pb::Record { seq, job_id: a.job_id.clone(), attempt: a.attempt, body: Some(pb::record::Body::Started(pb::JobStarted { pid: 1, resumed_from_step: -1 })) });
                    seq += 1;
                    recs.push(pb::Record { seq, job_id: a.job_id, attempt: a.attempt, body: Some(pb::record::Body::Exited(pb::JobExited { outcome: pb::Outcome::Succeeded as i32, ..Default::default() })) });
                }
                out.send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Records(pb::Records { records: recs })) }).await?;
            }
            _ = hb.tick() => {
                out.send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat { held: vec![], stopping: false, reports_held: false, disk: None })) }).await?;
            }
        }
    }
}

async fn wait_done(
    user: &mut UserServiceClient<Channel>,
    sweep: &str,
    jobs: u64,
    max: Duration,
) -> Res<Instant> {
    let deadline = Instant::now() + max;
    loop {
        let s = user
            .get_sweep(pb::GetSweepRequest {
                sweep_id: sweep.into(),
            })
            .await?
            .into_inner();
        let c = s.counts.unwrap_or_default();
        if c.succeeded + c.failed + c.cancelled >= jobs {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("sweep not done in {max:?}: {c:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn proc_stat(pid: i32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (rss_kb, ticks / 100.0)
}

/// Scale: a sweep of `jobs` jobs (submit time, memory, status and results
/// latency), then `workers` simulated workers heartbeating and taking jobs.
async fn scale(jobs: u64, workers: usize) -> Res<()> {
    let cluster = Cluster::start(
        0,
        Opts {
            lease_timeout_secs: 60.0,
            ..Opts::default()
        },
    );
    let url = cluster.url();
    let pid = cluster.coordinator.pid();
    let mut user = UserServiceClient::new(channel(&url).await?)
        .max_decoding_message_size(1 << 30)
        .max_encoding_message_size(64 << 20);
    let seeds = 10u64;
    let (rss0, _) = proc_stat(pid);
    let t = Instant::now();
    let sweep = submit_grid(
        &mut user,
        "name: scale\nprogram: /bin/true\ncommand: [/bin/true]\nmetric: {name: loss, goal: minimize}\n",
        jobs / seeds,
        seeds,
    )
    .await?;
    let submit = t.elapsed().as_secs_f64();
    let (rss1, _) = proc_stat(pid);
    println!("scale: submit of {} jobs ({} trials x {seeds} seeds): {submit:.2} s; coordinator RSS {} MB -> {} MB", sweep.jobs, sweep.trials, rss0 / 1024, rss1 / 1024);
    let mut st = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        user.get_sweep(pb::GetSweepRequest {
            sweep_id: sweep.id.clone(),
        })
        .await?;
        st.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("scale: status latency median {:.1} ms", median(&mut st));
    // Simulated workers, one slot each, heartbeating every 2 s.
    let (_, cpu0) = proc_stat(pid);
    let t0 = Instant::now();
    let mut sims = Vec::new();
    for i in 0..workers {
        let (u, id) = (url.clone(), format!("wk-scale{i:05}"));
        sims.push(tokio::spawn(async move {
            if let Err(e) = sim_worker(u, id, 1).await {
                eprintln!("simulated worker: {e}");
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(if workers > 0 { 20 } else { 0 })).await;
    let (rss2, cpu1) = proc_stat(pid);
    let s = user
        .get_sweep(pb::GetSweepRequest {
            sweep_id: sweep.id.clone(),
        })
        .await?
        .into_inner();
    let done = s.counts.unwrap_or_default().succeeded;
    let secs = t0.elapsed().as_secs_f64();
    let connected = user
        .list_workers(pb::ListWorkersRequest {})
        .await?
        .into_inner()
        .workers
        .iter()
        .filter(|w| w.connected)
        .count();
    println!(
        "scale: {connected} simulated workers connected; {done} jobs completed in {secs:.1} s = {:.0} jobs/s; coordinator CPU {:.0}% of one core; RSS {} MB",
        done as f64 / secs,
        100.0 * (cpu1 - cpu0) / secs,
        rss2 / 1024
    );
    for s in sims {
        s.abort();
    }
    scale_results(cluster, &sweep.id).await
}

/// `results` on a finished million-job sweep: every job is marked succeeded
/// with a value in the database while the coordinator is down (running a
/// million jobs would take minutes and measure nothing more), then the
/// coordinator starts, rebuilds its per-trial results, and ranks them.
async fn scale_results(mut cluster: Cluster, sweep_id: &str) -> Res<()> {
    let t = Instant::now();
    cluster.restart_coordinator_with(|dir| {
        let db = rusqlite::Connection::open(dir.join("coordinator.db")).expect("database");
        db.execute_batch(
            "UPDATE jobs SET state='succeeded', attempt=1, result_recorded=1,
                 final_metric = ((seq * 7919) % 1000) / 1000.0,
                 best_metric = ((seq * 104729) % 1000) / 1000.0",
        )
        .expect("mark jobs succeeded");
    });
    println!(
        "scale: every job marked succeeded with a value, coordinator restarted and loaded in {:.1} s; RSS {} MB",
        t.elapsed().as_secs_f64(),
        proc_stat(cluster.coordinator.pid()).0 / 1024
    );
    let mut user =
        UserServiceClient::new(channel(&cluster.url()).await?).max_decoding_message_size(1 << 30);
    for (limit, runs) in [(50u32, 10), (0, 3)] {
        let mut ms = Vec::new();
        let mut shown = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let mut s = user
                .get_trial_results(pb::GetTrialResultsRequest {
                    sweep_id: sweep_id.to_string(),
                    best: false,
                    limit,
                })
                .await?
                .into_inner();
            shown = 0;
            while let Some(c) = s.message().await? {
                shown += c.trials.len();
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "scale: results (GetTrialResults, limit {limit}: {shown} trials ranked over every job's value) latency median {:.1} ms",
            median(&mut ms)
        );
    }
    let mut ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = cluster.cli(&["results", sweep_id]);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            return Err(format!(
                "liandan results failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    println!(
        "scale: `liandan results` (the CLI process, connect to printed table) median {:.1} ms",
        median(&mut ms)
    );
    Ok(())
}

/// Ray Tune's bookkeeping-overhead benchmark: `jobs` jobs that each sleep 1 s
/// over `slots` slots (two real `liandan-worker`s, half the slots each);
/// overhead = wall time / (jobs x 1 s / slots) - 1. The clock runs from just
/// before the submit to the last job's success being durable.
async fn overhead(jobs: u64, slots: u32) -> Res<()> {
    let cluster = Cluster::start(
        2,
        Opts {
            slots: slots / 2,
            lease_timeout_secs: 10.0,
            ..Opts::default()
        },
    );
    let mut user = UserServiceClient::new(channel(&cluster.url()).await?);
    let connected = loop {
        let ws = user
            .list_workers(pb::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers;
        if ws.iter().filter(|w| w.connected).count() == 2 {
            break ws;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let total_slots: u32 = connected
        .iter()
        .map(|w| w.resources.as_ref().map(|r| r.cpu_slots).unwrap_or(0))
        .sum();
    let t0 = Instant::now();
    let sweep = submit_grid(
        &mut user,
        "name: overhead\nprogram: /bin/sleep\ncommand: [/bin/sleep, \"1\"]\n",
        jobs,
        1,
    )
    .await?;
    // Ray Tune's formula (a partial last wave counts as if it filled the slots:
    // choose JOBS a multiple of SLOTS).
    let ideal = jobs as f64 / total_slots as f64;
    let done = wait_done(
        &mut user,
        &sweep.id,
        jobs,
        Duration::from_secs_f64(ideal * 3.0 + 60.0),
    )
    .await?;
    let wall = (done - t0).as_secs_f64();
    let succeeded = cluster.query_i64("SELECT COUNT(*) FROM jobs WHERE state='succeeded'");
    let attempts = cluster.query_i64("SELECT COUNT(*) FROM attempts");
    let db = rusqlite::Connection::open(
        cluster
            .dir
            .path()
            .join("coordinator")
            .join("coordinator.db"),
    )?;
    let job_secs: f64 =
        db.query_row("SELECT AVG(ended_at - started_at) FROM attempts", [], |r| {
            r.get(0)
        })?;
    println!(
        "overhead: {jobs} jobs of 1 s over {total_slots} slots (2 real workers): wall {wall:.2} s, ideal {ideal:.1} s, overhead {:.2}%; {succeeded} succeeded in {attempts} attempts; mean attempt {:.3} s from assignment to recorded exit",
        100.0 * (wall / ideal - 1.0),
        job_secs
    );
    Ok(())
}

/// Submits `head` (name, program, command, metric) as a grid over `trials`
/// values of `k`, each with `seeds` seeds.
async fn submit_grid(
    user: &mut UserServiceClient<Channel>,
    head: &str,
    trials: u64,
    seeds: u64,
) -> Res<pb::Sweep> {
    let values: Vec<String> = (0..trials).map(|i| i.to_string()).collect();
    let spec = format!(
        "{head}method: grid\nparameters:\n  k: {{values: [{}]}}\nliandan:\n  seeds: {seeds}\n",
        values.join(", ")
    );
    submit_spec(user, spec).await
}

/// Submits a YAML spec; returns its sweep.
async fn submit_spec(user: &mut UserServiceClient<Channel>, spec: String) -> Res<pb::Sweep> {
    let r = user
        .submit_sweep(pb::SubmitSweepRequest {
            spec,
            format: "yaml".into(),
            name: String::new(),
        })
        .await?
        .into_inner();
    Ok(r.sweep.unwrap_or_default())
}

async fn dispatch(jobs: u64, workers: usize, slots: u32) -> Res<()> {
    let cluster = Cluster::start(
        0,
        Opts {
            lease_timeout_secs: 30.0,
            ..Opts::default()
        },
    );
    let url = cluster.url();
    for i in 0..workers {
        let (u, id) = (url.clone(), format!("wk-bench{i:04}"));
        tokio::spawn(async move {
            if let Err(e) = sim_worker(u, id, slots).await {
                eprintln!("simulated worker: {e}");
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seeds = 10u64;
    let mut user = UserServiceClient::new(channel(&url).await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let t0 = Instant::now();
    let sweep = submit_grid(
        &mut user,
        "name: bench\nprogram: /bin/true\ncommand: [/bin/true]\n",
        jobs / seeds,
        seeds,
    )
    .await?;
    let t1 = Instant::now();
    let done = wait_done(&mut user, &sweep.id, sweep.jobs, Duration::from_secs(600)).await?;
    let lifecycle = (done - t1).as_secs_f64();
    println!(
        "dispatch: {} jobs, {workers} simulated workers x {slots} slots over gRPC; submit (validate+expand+store) {:.3}s; dispatch+complete {:.3}s = {:.0} jobs/s (end to end incl. submit: {:.0} jobs/s)",
        sweep.jobs,
        (t1 - t0).as_secs_f64(),
        lifecycle,
        sweep.jobs as f64 / lifecycle,
        sweep.jobs as f64 / (done - t0).as_secs_f64()
    );
    let attempts = cluster.query_i64("SELECT COUNT(*) FROM attempts");
    let done_jobs = cluster
        .query_i64("SELECT COUNT(*) FROM jobs WHERE state='succeeded' AND result_recorded=1");
    println!("dispatch: check: {done_jobs} jobs succeeded with a recorded result, {attempts} attempts (every state change committed with synchronous=FULL)");
    Ok(())
}

async fn run_job(
    cluster: &Cluster,
    user: &mut UserServiceClient<Channel>,
    name: &str,
    command: &str,
) -> Res<(String, f64)> {
    let spec = format!("name: {name}\nprogram: /bin/sh\ncommand: [\"/bin/sh\", \"-c\", {}]\nmethod: grid\nparameters:\n  x: {{value: 1}}\n", serde_json::Value::String(command.into()));
    let sweep = submit_spec(user, spec).await?;
    // From the moment the job runs to the moment its exit (after all its records) is durable.
    let start = loop {
        let j = user
            .list_jobs(pb::ListJobsRequest {
                sweep_id: sweep.id.clone(),
                state: String::new(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs;
        if j.first().is_some_and(|j| j.state != "queued") {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let done = wait_done(user, &sweep.id, 1, Duration::from_secs(600)).await?;
    let job = user
        .list_jobs(pb::ListJobsRequest {
            sweep_id: sweep.id,
            state: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .jobs[0]
        .id
        .clone();
    let _ = cluster;
    Ok((job, (done - start).as_secs_f64()))
}

async fn logs(lines: u64) -> Res<()> {
    let cluster = Cluster::start(
        1,
        Opts {
            slots: 1,
            ..Opts::default()
        },
    );
    let url = cluster.url();
    let mut user = UserServiceClient::new(channel(&url).await?);
    let mut rates = Vec::new();
    for i in 0..3 {
        let (job, secs) = run_job(
            &cluster,
            &mut user,
            &format!("lines{i}"),
            &format!("seq 1 {lines}"),
        )
        .await?;
        let stored = cluster.query_i64(&format!("SELECT COUNT(*) FROM logs WHERE job_id='{job}'"));
        assert_eq!(stored as u64, lines, "lines stored");
        rates.push(lines as f64 / secs);
    }
    println!("logs: {lines} lines printed by `seq` to durable coordinator storage: median {:.0} lines/s over 3 runs ({:?})", median(&mut rates), rates.iter().map(|r| r.round()).collect::<Vec<_>>());
    let mut mrates = Vec::new();
    for i in 0..3 {
        let cmd = format!("awk 'BEGIN {{ for (i = 1; i <= {lines}; i++) printf \"{{\\\"step\\\": %d, \\\"loss\\\": %.6f}}\\n\", i, 1 / i }}' >> \"$LIANDAN_METRICS_FILE\"");
        let (job, secs) = run_job(&cluster, &mut user, &format!("metrics{i}"), &cmd).await?;
        let stored = cluster.query_i64(&format!(
            "SELECT COUNT(*) FROM metrics WHERE job_id='{job}'"
        ));
        assert_eq!(stored as u64, lines, "metric records stored");
        mrates.push(lines as f64 / secs);
    }
    println!("metrics: {lines} JSON-lines records to durable coordinator storage: median {:.0} records/s over 3 runs ({:?})", median(&mut mrates), mrates.iter().map(|r| r.round()).collect::<Vec<_>>());

    // Follow latency: the job prints its own clock every 5 ms; a follower measures arrival - print.
    let n = 2000;
    let py = format!("import time,sys\nfor i in range({n}):\n    print('%.6f' % time.time(), flush=True)\n    time.sleep(0.005)\n");
    let spec = format!("name: follow\nprogram: python3\ncommand: [\"python3\", \"-c\", {}]\nmethod: grid\nparameters:\n  x: {{value: 1}}\n", serde_json::Value::String(py));
    let sweep = submit_spec(&mut user, spec).await?.id;
    let job = loop {
        let j = user
            .list_jobs(pb::ListJobsRequest {
                sweep_id: sweep.clone(),
                state: String::new(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs;
        if let Some(j) = j.first().filter(|j| j.state == "running") {
            break j.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut s = user
        .read_logs(pb::ReadLogsRequest {
            job_id: job,
            attempt: 0,
            from_line: 1,
            tail: 0,
            follow: true,
            stream: String::new(),
        })
        .await?
        .into_inner();
    let mut lat = Vec::new();
    while let Some(l) = s.message().await? {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        if let Ok(t) = l.text.trim().parse::<f64>() {
            lat.push((now - t) * 1e3);
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!("follow: {} lines printed every 5 ms: print-to-follower latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", lat.len(), pct(0.5), pct(0.99), pct(1.0));
    Ok(())
}

async fn checkpoint(mib: usize) -> Res<()> {
    let cluster = Cluster::start(
        0,
        Opts {
            lease_timeout_secs: 60.0,
            ..Opts::default()
        },
    );
    let url = cluster.url();
    let mut user = UserServiceClient::new(channel(&url).await?);
    // A simulated worker holds the attempt (uploads are fenced to the current attempt).
    let (mut wclient, out, mut inbound) = open_session(&url, "wk-ckpt", 1, 8).await?;
    submit_spec(&mut user, "name: ck\nprogram: /bin/true\ncommand: [/bin/true]\nmethod: grid\nparameters:\n  x: {value: 1}\n".into()).await?;
    // The coordinator issues the simulated worker its identity in the welcome.
    let mut me = (String::new(), String::new());
    let a = loop {
        match inbound.message().await?.and_then(|m| m.msg) {
            Some(Msg::Welcome(w)) => me = (w.worker_id, w.worker_secret),
            Some(Msg::Assign(a)) => break a,
            _ => {}
        }
    };

    let hb = out.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if hb
                .send(pb::WorkerMessage {
                    msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat {
                        held: vec![],
                        stopping: false,
                        // The simulated workers keep no attempts: nothing to reconcile.
                        reports_held: false,
                        disk: None,
                    })),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let size = mib << 20;
    let mut data = vec![0u8; size];
    let mut rng = liandan_common_rng(42);
    for chunk in data.chunks_mut(8) {
        let x = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    let data = std::sync::Arc::new(data);
    let (mut up, mut down, mut tcp) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3i64 {
        // Upload: hash known up front (the worker hashes when the job publishes).
        let hash = blake3::hash(&data).to_hex().to_string();
        let header = pb::CheckpointUploadHeader {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            step: round + 1,
            size: size as u64,
            blake3: hash,
            metric: None,
            worker_id: me.0.clone(),
        };
        let d = data.clone();
        let stream = async_stream(d, header);
        let t = Instant::now();
        let r = wclient
            .upload_checkpoint(with_identity(&me, tonic::Request::new(stream))?)
            .await?
            .into_inner();
        assert!(r.accepted, "{}", r.message);
        up.push(size as f64 / t.elapsed().as_secs_f64() / 1e6);
        // Download to a file, fsynced.
        let path = cluster.dir.path().join("down.ckpt");
        let t = Instant::now();
        let mut s = wclient
            .fetch_checkpoint(with_identity(
                &me,
                tonic::Request::new(pb::DownloadCheckpointRequest {
                    job_id: a.job_id.clone(),
                    step: round + 1,
                    offset: 0,
                }),
            )?)
            .await?
            .into_inner();
        let mut f = std::fs::File::create(&path)?;
        let mut n = 0;
        while let Some(c) = s.message().await? {
            std::io::Write::write_all(&mut f, &c.data)?;
            n += c.data.len();
        }
        f.sync_all()?;
        down.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        // Plain TCP copy of the same bytes into a file, fsynced.
        tcp.push(tcp_copy(data.clone(), &cluster.dir.path().join("tcp.bin"))? / 1e6);
    }
    let (u, d, t) = (median(&mut up), median(&mut down), median(&mut tcp));
    println!("checkpoint: {mib} MiB, median of 3: upload {u:.0} MB/s, download {d:.0} MB/s, plain TCP copy {t:.0} MB/s; ratio upload/TCP {:.2}, download/TCP {:.2}", u / t, d / t);
    Ok(())
}

/// A request carrying the identity the coordinator issued the simulated worker.
fn with_identity<T>(me: &(String, String), mut r: tonic::Request<T>) -> Res<tonic::Request<T>> {
    r.metadata_mut().insert("liandan-worker-id", me.0.parse()?);
    r.metadata_mut()
        .insert("liandan-worker-secret", me.1.parse()?);
    Ok(r)
}

fn liandan_common_rng(seed: u64) -> Xorshift {
    Xorshift(seed | 1)
}

/// Filler bytes for the checkpoint benchmark (content does not matter).
struct Xorshift(u64);
impl Xorshift {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn async_stream(
    data: std::sync::Arc<Vec<u8>>,
    header: pb::CheckpointUploadHeader,
) -> tokio_stream::wrappers::ReceiverStream<pb::CheckpointUpload> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut off = 0usize;
        let mut first = Some(header);
        while off < data.len() {
            let end = (off + (1 << 20)).min(data.len());
            let msg = pb::CheckpointUpload {
                header: first.take(),
                offset: off as u64,
                data: data[off..end].to_vec(),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            off = end;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Bytes per second of a plain loopback TCP copy into an fsynced file.
fn tcp_copy(data: std::sync::Arc<Vec<u8>>, path: &std::path::Path) -> Res<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let path = path.to_path_buf();
    let t = Instant::now();
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut f = std::fs::File::create(&path)?;
        let n = std::io::copy(&mut s, &mut f)?;
        f.sync_all()?;
        Ok(n)
    });
    {
        let mut c = std::net::TcpStream::connect(addr)?;
        std::io::Write::write_all(&mut c, &data)?;
    }
    let n = server.join().map_err(|_| "tcp copy thread")??;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Time to propose the next trial of a `bayes` and a `tpe` sweep that has
/// `finished` finished trials (and 8 running), over a mixed space: two
/// continuous parameters (one log-scaled), an integer and a categorical.
fn propose(finished: usize) -> Res<()> {
    use liandan_coordinator::search::sweep::SweepSearch;
    use liandan_coordinator::search::{TrialData, TrialStatus};
    let spec_text = "method: bayes\nprogram: t.py\nmetric: {name: loss, goal: minimize}\nparameters:\n  lr: {distribution: log_uniform_values, min: 0.00001, max: 0.1}\n  dropout: {min: 0.0, max: 0.5}\n  layers: {min: 1, max: 8}\n  opt: {values: [sgd, adam, adamw]}\nliandan: {seeds: 3}\n";
    for method in ["bayes", "tpe"] {
        let text = spec_text.replace("method: bayes", &format!("method: {method}"));
        let spec = liandan_common::sweep::parse(&text, liandan_common::sweep::Format::Yaml)
            .map_err(|e| e.to_string())?
            .spec;
        let search = SweepSearch::for_spec(&spec).ok_or("not adaptive")?;
        let mut rng = liandan_common::rng::Rng::keyed("bench.propose", &[finished as u64]);
        let data: Vec<TrialData> = (0..finished + 8)
            .map(|i| {
                let x: Vec<f64> = (0..search.space.len()).map(|_| rng.uniform01()).collect();
                let base: f64 = x.iter().map(|v| (v - 0.3) * (v - 0.3)).sum();
                let seeds: Vec<f64> = (0..3).map(|_| base + 0.01 * rng.normal01()).collect();
                TrialData {
                    x,
                    status: if i < finished {
                        TrialStatus::Finished
                    } else {
                        TrialStatus::Running
                    },
                    seed_best: seeds.clone(),
                    seed_latest: seeds,
                }
            })
            .collect();
        let mut times = Vec::new();
        for _ in 0..9 {
            let t = Instant::now();
            let p = search.propose(&data);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if p.get("lr").is_none() {
                return Err("proposal without lr".into());
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "propose {method}: {finished} finished trials, median {:.1} ms (min {:.1}, max {:.1}) over {} proposals",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            times.len()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let r = match args.first().map(String::as_str) {
        Some("dispatch") => dispatch(num(1, 100_000), num(2, 32) as usize, num(3, 64) as u32).await,
        Some("logs") => logs(num(1, 1_000_000)).await,
        Some("checkpoint") => checkpoint(num(1, 256) as usize).await,
        Some("propose") => propose(num(1, 1000) as usize),
        Some("scale") => scale(num(1, 1_000_000), num(2, 1000) as usize).await,
        Some("overhead") => overhead(num(1, 1024), num(2, 16) as u32).await,
        Some("chaos") => {
            let r = liandan_e2e::chaos::run(num(2, 1), num(1, 300));
            println!("{}", r.table());
            if r.ok() {
                Ok(())
            } else {
                Err("chaos found a problem".into())
            }
        }
        _ => {
            eprintln!("usage: liandan-bench dispatch [JOBS] [WORKERS] [SLOTS] | logs [LINES] | checkpoint [MIB] | scale [JOBS] [WORKERS] | overhead [JOBS] [SLOTS] | propose [TRIALS] | chaos [SECS] [SEED]");
            std::process::exit(64);
        }
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
