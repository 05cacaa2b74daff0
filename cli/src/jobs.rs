//! The job commands: jobs, describe, logs, metrics, checkpoints and download.

use crate::client::*;
use crate::output::*;
use crate::TextFormat;
use crate::{complete, output};
use clap_complete::engine::ArgValueCompleter;
use liandan_common::exit;
use liandan_common::sweep::{self, command};
use liandan_proto::v1 as pb;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How long a job's last attempt ran (so far, while it runs): `1m 5s` in
/// tables, seconds in CSV; nothing before it started.
pub fn took(j: &pb::Job, now: f64, exact: bool) -> String {
    let Some(a) = j
        .last_attempt
        .as_ref()
        .filter(|a| a.started_at > 0.0 && j.state != "queued")
    else {
        return String::new();
    };
    let end = if a.ended_at > 0.0 { a.ended_at } else { now };
    let secs = (end - a.started_at).max(0.0);
    if exact {
        format!("{secs:.3}")
    } else {
        two_units(human_duration(secs))
    }
}

/// Why a job is where it is, in a few words: how its last attempt ended
/// (outcome, exit code or signal, message), or that a succeeded job never
/// reported `metric` (the sweep's metric; empty for none).
pub fn job_reason(j: &pb::Job, metric: &str) -> String {
    if j.state == "succeeded" {
        return if j.final_metric.is_none() && !metric.is_empty() {
            format!("never reported {metric:?}")
        } else {
            String::new()
        };
    }
    if j.state == "running" {
        return String::new();
    }
    let Some(a) = j.last_attempt.as_ref().filter(|a| a.state != "succeeded") else {
        return String::new();
    };
    let mut r = a.state.clone();
    if a.signal != 0 {
        r.push_str(&format!(", signal {}", a.signal));
    } else if a.exit_code != 0 {
        r.push_str(&format!(", exit {}", a.exit_code));
    }
    let msg = a.message.trim();
    if !msg.is_empty() {
        r.push_str(": ");
        r.push_str(msg);
    }
    if j.state == "queued" {
        r = format!("retried after attempt {}: {r}", a.attempt);
    }
    r
}

/// The first failed jobs of a sweep, each with how its last attempt ended,
/// and the commands to see more.
/// `${envvar:K}` in a command line shown here, offline: the job's own
/// variables as the worker sets them, and the worker's private ones left as
/// written (they are not known here).
pub fn offline_envvar(k: &str) -> Option<String> {
    command::job_envvar(k).or_else(|| Some(format!("${{envvar:{k}}}")))
}

/// `logs -f` lost the coordinator: it says so once and retries.
pub fn follow_notice(e: &tonic::Status) {
    eprintln!(
        "the coordinator cannot be reached ({}); retrying (Ctrl-C stops following)",
        e.message().chars().take(200).collect::<String>()
    );
}

/// `liandan describe JOB`: everything about one job in one place.
pub async fn describe(url: &Target, job: &str, output: TextFormat) -> R<i32> {
    let mut c = connect(url).await?;
    let j = c
        .get_job(pb::JobRef {
            job_id: job.to_string(),
        })
        .await?
        .into_inner();
    let s = c
        .get_sweep(pb::GetSweepRequest {
            sweep_id: j.sweep_id.clone(),
        })
        .await?
        .into_inner();
    let params: serde_json::Value = serde_json::from_str(&j.params_json).unwrap_or_default();
    // The command line as the job was started (the worker's private
    // variables are not in it).
    let argv = serde_json::from_str::<sweep::SweepSpec>(&s.spec_json)
        .ok()
        .and_then(|spec| {
            let ctx = command::offline_context(&offline_envvar);
            command::build_argv(&spec, &params, j.seed, &ctx).ok()
        })
        .unwrap_or_default();
    let tail = if j.attempt > 0 {
        let mut lines = Vec::new();
        if let Ok(r) = c
            .read_logs(pb::ReadLogsRequest {
                job_id: j.id.clone(),
                attempt: j.attempt,
                tail: 10,
                ..Default::default()
            })
            .await
        {
            let mut st = r.into_inner();
            while let Ok(Some(l)) = st.message().await {
                lines.push(l);
            }
        }
        lines
    } else {
        Vec::new()
    };
    if output == TextFormat::Json {
        let attempts: Vec<_> = j.attempts.iter().map(|a| json!({"attempt": a.attempt, "worker_id": a.worker_id, "state": a.state, "started_at": a.started_at, "started_at_iso": json_time(a.started_at), "ended_at": a.ended_at, "ended_at_iso": json_time(a.ended_at), "exit_code": a.exit_code, "signal": a.signal, "message": a.message})).collect();
        let js = json!({"id": j.id, "sweep_id": j.sweep_id, "sweep": s.name, "owner": s.owner, "trial_id": j.trial_id, "seed": j.seed, "params": params, "state": j.state,
                        "attempt": j.attempt, "retries_used": j.retries_used, "worker_id": j.worker_id, "argv": argv, "final_metric": j.final_metric, "best_metric": j.best_metric,
                        "attempts": attempts, "log_tail": tail.iter().map(|l| json!({"line": l.line, "stream": l.stream, "text": l.text})).collect::<Vec<_>>()});
        println!("{}", serde_json::to_string_pretty(&js).unwrap_or_default());
        return Ok(exit::OK);
    }
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<9} {}\n", printable(&v)));
    field("job", j.id.clone());
    field("sweep", format!("{} ({})", s.id, s.name));
    if !s.owner.is_empty() {
        field("owner", s.owner.clone());
    }
    field("trial", format!("{}  seed {}", j.trial_id, j.seed));
    field("params", j.params_json.clone());
    field(
        "state",
        format!(
            "{} (attempt {}, {} retries used)",
            j.state, j.attempt, j.retries_used
        ),
    );
    if !j.worker_id.is_empty() {
        field("worker", j.worker_id.clone());
    }
    if !argv.is_empty() {
        field("command", argv.join(" "));
    }
    let metric = if s.metric_name.is_empty() {
        "the sweep names no metric".to_string()
    } else {
        match (j.final_metric, j.best_metric) {
            (None, _) => format!("{}: never reported", s.metric_name),
            (Some(f), b) => format!("{}: last {}, best {}", s.metric_name, num(f), opt_num(b)),
        }
    };
    field("metric", metric);
    print!("{out}");
    if !j.attempts.is_empty() {
        let rows: Vec<Vec<String>> = j
            .attempts
            .iter()
            .map(|a| {
                let ended = a.ended_at > 0.0;
                let exit = if a.signal != 0 {
                    format!("signal {}", a.signal)
                } else if ended {
                    a.exit_code.to_string()
                } else {
                    "-".into()
                };
                vec![
                    a.attempt.to_string(),
                    a.worker_id.clone(),
                    a.state.clone(),
                    iso_time(a.started_at),
                    if ended {
                        iso_time(a.ended_at)
                    } else {
                        "-".into()
                    },
                    if ended {
                        human_duration(a.ended_at - a.started_at)
                    } else {
                        "-".into()
                    },
                    exit,
                    a.message.clone(),
                ]
            })
            .collect();
        println!("\nattempts:");
        print!(
            "{}",
            output::table(
                &["#", "worker", "outcome", "started", "ended", "took", "exit", "message"],
                &rows,
                output::terminal_width()
            )
        );
    }
    if !tail.is_empty() {
        println!("\nlast {} log lines (attempt {}):", tail.len(), j.attempt);
        for l in &tail {
            let tag = if l.stream == "stderr" { "err" } else { "out" };
            println!("  {tag} {}", printable(&l.text));
        }
    }
    let mut next = format!("\nmore: `liandan logs {}`", j.id);
    // The hint only where retry would take the job (see SweepSpec::why_no_retry).
    let retry_takes = s.state != "cancelled"
        && serde_json::from_str::<sweep::SweepSpec>(&s.spec_json)
            .is_ok_and(|spec| spec.why_no_retry().is_none());
    if (j.state == "failed" || j.state == "cancelled") && retry_takes {
        next.push_str(&format!(
            "; run it again: `liandan retry {} --job {}`",
            s.id, j.id
        ));
    }
    println!("{next}");
    Ok(exit::OK)
}

/// The arguments of `liandan jobs`.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
    /// Only jobs in this state: queued, running, succeeded, failed, cancelled, pruned.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `liandan jobs`.
pub async fn jobs(url: &Target, args: JobsArgs) -> R<i32> {
    let JobsArgs {
        sweep,
        state,
        output,
    } = args;
    let mut c = connect(url).await?;
    let s = c
        .get_sweep(pb::GetSweepRequest {
            sweep_id: sweep.clone(),
        })
        .await?
        .into_inner();
    let jobs = all_jobs(&c, &s.id, &state.unwrap_or_default()).await?;
    let now = now_secs();
    let worker = |j: &pb::Job| {
        if j.worker_id.is_empty() {
            j.last_attempt
                .as_ref()
                .map(|a| a.worker_id.clone())
                .unwrap_or_default()
        } else {
            j.worker_id.clone()
        }
    };
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.trial_id.clone(),
                j.seed.to_string(),
                j.state.clone(),
                j.attempt.to_string(),
                worker(j),
                num_cell(j.final_metric, output == Format::Csv),
                took(j, now, output == Format::Csv),
                job_reason(j, &s.metric_name),
                j.params_json.clone(),
            ]
        })
        .collect();
    let json = json!(jobs
            .iter()
            .map(|j| json!({"id": j.id, "trial_id": j.trial_id, "seed": j.seed, "state": j.state, "attempt": j.attempt, "retries_used": j.retries_used,
                           "worker_id": worker(j), "final_metric": j.final_metric, "best_metric": j.best_metric, "reason": job_reason(j, &s.metric_name),
                           "last_attempt": j.last_attempt.as_ref().map(|a| json!({"attempt": a.attempt, "worker_id": a.worker_id, "outcome": a.state, "started_at": a.started_at, "started_at_iso": json_time(a.started_at), "ended_at": a.ended_at, "ended_at_iso": json_time(a.ended_at), "exit_code": a.exit_code, "signal": a.signal, "message": a.message})),
                           "params": serde_json::from_str::<serde_json::Value>(&j.params_json).unwrap_or_default()}))
            .collect::<Vec<_>>());
    print(render(
        &Listing {
            columns: vec![
                "job", "trial", "seed", "state", "attempt", "worker", "metric", "took", "reason",
                "params",
            ],
            rows,
            json,
            params: jobs
                .iter()
                .map(|j| serde_json::from_str(&j.params_json).unwrap_or_default())
                .collect(),
        },
        output,
    ));
    Ok(exit::OK)
}

/// The arguments of `liandan logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[arg(add = ArgValueCompleter::new(complete::job))]
    pub job: String,
    /// Keep following new lines until the attempt ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Attempt number (default: the current one).
    #[arg(long)]
    pub attempt: Option<u64>,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u64>,
    /// Only stderr.
    #[arg(long, conflicts_with = "stdout")]
    pub stderr: bool,
    /// Only stdout.
    #[arg(long)]
    pub stdout: bool,
}

/// `liandan logs`.
pub async fn logs(url: &Target, args: LogsArgs) -> R<i32> {
    let LogsArgs {
        job,
        follow,
        attempt,
        tail,
        stderr,
        stdout,
    } = args;
    let mut c = connect(url).await?;
    let stream = if stderr {
        "stderr"
    } else if stdout {
        "stdout"
    } else {
        "all"
    };
    if follow {
        if let Ok(j) = c
            .get_job(pb::JobRef {
                job_id: job.clone(),
            })
            .await
        {
            if j.get_ref().state == "queued" {
                eprintln!("job {} is queued; waiting for it to start", j.get_ref().id);
            }
        }
    }
    let mut req = pb::ReadLogsRequest {
        job_id: job,
        attempt: attempt.unwrap_or(0),
        from_line: 1,
        tail: tail.unwrap_or(0),
        follow,
        stream: stream.into(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut away = false;
    loop {
        let r = match c.read_logs(req.clone()).await {
            Ok(r) => r,
            Err(e) if follow && coordinator_away(&e) => {
                if !std::mem::replace(&mut away, true) {
                    let _ = out.flush();
                    follow_notice(&e);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if std::mem::take(&mut away) {
            eprintln!("the coordinator is back; following on");
        }
        let mut s = r.into_inner();
        let ended = loop {
            match s.message().await {
                Ok(Some(line)) => {
                    let _ = writeln!(out, "{}", line.text);
                    if follow {
                        let _ = out.flush();
                    }
                    // Where to pick up if the coordinator goes away.
                    req.attempt = line.attempt;
                    req.from_line = line.line + 1;
                    req.tail = 0;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        match ended {
            Ok(()) => break,
            Err(e) if follow && coordinator_away(&e) => {
                let _ = out.flush();
                follow_notice(&e);
                away = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let _ = out.flush();
    Ok(exit::OK)
}

/// The arguments of `liandan metrics`.
#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    #[arg(add = ArgValueCompleter::new(complete::job))]
    pub job: String,
    #[arg(long)]
    pub attempt: Option<u64>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `liandan metrics`.
pub async fn metrics(url: &Target, args: MetricsArgs) -> R<i32> {
    let MetricsArgs {
        job,
        attempt,
        output,
    } = args;
    let c = connect(url).await?;
    let recs = all_metrics(&c, &job, attempt.unwrap_or(0)).await?;
    let rows = recs
        .iter()
        .map(|r| {
            vec![
                r.attempt.to_string(),
                r.step.map(|s| s.to_string()).unwrap_or_default(),
                // A time to the second in tables; to the microsecond in CSV.
                time_cell(r.ts, output == Format::Csv),
                r.json.clone(),
            ]
        })
        .collect();
    let json = json!(recs
            .iter()
            .map(|r| json!({"attempt": r.attempt, "step": r.step, "ts": r.ts, "ts_iso": json_time(r.ts), "values": serde_json::from_str::<serde_json::Value>(&r.json).unwrap_or_default()}))
            .collect::<Vec<_>>());
    print(render(
        &Listing {
            columns: vec!["attempt", "step", "ts", "values"],
            rows,
            json,
            ..Default::default()
        },
        output,
    ));
    Ok(exit::OK)
}

/// The arguments of `liandan checkpoints`.
#[derive(clap::Args, Debug)]
pub struct CheckpointsArgs {
    #[arg(add = ArgValueCompleter::new(complete::job))]
    pub job: String,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `liandan checkpoints`.
pub async fn checkpoints(url: &Target, args: CheckpointsArgs) -> R<i32> {
    let CheckpointsArgs { job, output } = args;
    let cs = connect(url)
        .await?
        .list_checkpoints(pb::JobRef { job_id: job })
        .await?
        .into_inner()
        .checkpoints;
    let rows = cs
        .iter()
        .map(|c| {
            vec![
                c.step.to_string(),
                c.attempt.to_string(),
                if output == Format::Csv {
                    c.size.to_string()
                } else {
                    human_bytes(c.size)
                },
                num_cell(c.metric, output == Format::Csv),
                time_cell(c.created_at, output == Format::Csv),
                c.blake3.clone(),
            ]
        })
        .collect();
    let json = json!(cs
            .iter()
            .map(|c| json!({"step": c.step, "attempt": c.attempt, "size": c.size, "metric": c.metric, "created_at": c.created_at, "created_at_iso": json_time(c.created_at), "blake3": c.blake3}))
            .collect::<Vec<_>>());
    print(render(
        &Listing {
            columns: vec!["step", "attempt", "size", "metric", "created", "blake3"],
            rows,
            json,
            ..Default::default()
        },
        output,
    ));
    Ok(exit::OK)
}

/// The arguments of `liandan download`.
#[derive(clap::Args, Debug)]
pub struct DownloadArgs {
    #[arg(add = ArgValueCompleter::new(complete::job))]
    pub job: String,
    #[arg(long)]
    pub step: Option<i64>,
    /// The file to write (default: JOB-step-N.ckpt).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// `json`: {"file", "bytes", "step", "blake3"} once written.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan download`.
pub async fn download(url: &Target, args: DownloadArgs) -> R<i32> {
    let DownloadArgs {
        job,
        step,
        file,
        output,
    } = args;
    let mut c = connect(url).await?;
    let mut s = c
        .download_checkpoint(pb::DownloadCheckpointRequest {
            job_id: job.clone(),
            step: step.unwrap_or(-1),
            offset: 0,
        })
        .await?
        .into_inner();
    let mut meta = None;
    let mut hasher = blake3::Hasher::new();
    let mut data = Vec::new();
    while let Some(chunk) = s.message().await? {
        if chunk.meta.is_some() {
            meta = chunk.meta;
        }
        hasher.update(&chunk.data);
        data.extend_from_slice(&chunk.data);
    }
    let meta = meta.ok_or_else(|| {
        Fail(
            exit::SOFTWARE,
            "the coordinator sent no checkpoint metadata".into(),
        )
    })?;
    if hasher.finalize().to_hex().as_str() != meta.blake3 {
        return Err(Fail(
            exit::IOERR,
            "the downloaded checkpoint does not match its hash; try again".into(),
        ));
    }
    // Named by the job's whole id (the user may have typed a prefix);
    // the id comes off the wire, so only a well-formed one names a file.
    let id = liandan_common::ids::JobId::parse(&meta.job_id)
        .map(|j| j.to_string())
        .unwrap_or_else(|_| job.clone());
    let path = file.unwrap_or_else(|| PathBuf::from(format!("{id}-step-{}.ckpt", meta.step)));
    std::fs::write(&path, &data)
        .map_err(|e| Fail(exit::IOERR, format!("cannot write {}: {e}", path.display())))?;
    say(
        output,
        format!(
            "wrote {} ({} bytes, step {}, blake3 verified)",
            path.display(),
            data.len(),
            meta.step
        ),
        json!({"file": path.display().to_string(), "bytes": data.len(), "step": meta.step, "blake3": meta.blake3}),
    );
    Ok(exit::OK)
}
