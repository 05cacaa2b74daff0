//! What every benchmark shares: connections, simulated workers that answer
//! assignments at once, waiting for a sweep, reading a process's CPU time.

use super::*;

pub(crate) async fn channel(url: &str) -> Res<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .connect()
        .await?)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Opens a worker session and says hello with `slots` CPU slots; returns the
/// client (for checkpoint RPCs), the outbound sender and the coordinator's messages.
pub(crate) async fn open_session(
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
pub(crate) async fn sim_worker(url: String, id: String, slots: u32) -> Res<()> {
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

pub(crate) async fn wait_done(
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

pub(crate) fn proc_stat(pid: i32) -> (u64, f64) {
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

/// Submits `head` (name, program, command, metric) as a grid over `trials`
/// values of `k`, each with `seeds` seeds.
pub(crate) async fn submit_grid(
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
pub(crate) async fn submit_spec(
    user: &mut UserServiceClient<Channel>,
    spec: String,
) -> Res<pb::Sweep> {
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

pub(crate) async fn run_job(
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

/// A request carrying the identity the coordinator issued the simulated worker.
pub(crate) fn with_identity<T>(
    me: &(String, String),
    mut r: tonic::Request<T>,
) -> Res<tonic::Request<T>> {
    r.metadata_mut().insert("liandan-worker-id", me.0.parse()?);
    r.metadata_mut()
        .insert("liandan-worker-secret", me.1.parse()?);
    Ok(r)
}
