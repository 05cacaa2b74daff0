//! Data paths: log lines and metric records, checkpoint transfers.

use super::*;

pub(crate) async fn logs(lines: u64) -> Res<()> {
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

pub(crate) async fn checkpoint(mib: usize) -> Res<()> {
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

pub(crate) fn liandan_common_rng(seed: u64) -> Xorshift {
    Xorshift(seed | 1)
}

/// Filler bytes for the checkpoint benchmark (content does not matter).
pub(crate) struct Xorshift(u64);
impl Xorshift {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(crate) fn async_stream(
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
pub(crate) fn tcp_copy(data: std::sync::Arc<Vec<u8>>, path: &std::path::Path) -> Res<f64> {
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
