//! The scheduler's benchmarks: dispatch rate, scale and bookkeeping overhead.

use super::*;

/// Scale: a sweep of `jobs` jobs (submit time, memory, status and results
/// latency), then `workers` simulated workers heartbeating and taking jobs.
pub(crate) async fn scale(jobs: u64, workers: usize) -> Res<()> {
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
pub(crate) async fn scale_results(mut cluster: Cluster, sweep_id: &str) -> Res<()> {
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
pub(crate) async fn overhead(jobs: u64, slots: u32) -> Res<()> {
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

pub(crate) async fn dispatch(jobs: u64, workers: usize, slots: u32) -> Res<()> {
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
