//! The sweep commands: validate, expand, submit, status, wait, cancel, pause,
//! resume, retry and delete.

use crate::client::*;
use crate::complete;
use crate::jobs::*;
use crate::output::*;
use crate::TextFormat;
use clap_complete::engine::ArgValueCompleter;
use liandan_common::exit;
use liandan_common::sweep::{self, command, Format as SpecFormat, Method as SpecMethod};
use liandan_proto::v1 as pb;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

pub fn counts(s: &pb::Sweep) -> pb::JobCounts {
    s.counts.unwrap_or_default()
}

/// The sweeps as a listing; `exact` (CSV) gives times as RFC 3339 rather
/// than ages.
pub fn sweep_listing(sweeps: &[pb::Sweep], exact: bool) -> Listing {
    let now = now_secs();
    let rows = sweeps
        .iter()
        .map(|s| {
            let c = counts(s);
            vec![
                s.id.clone(),
                s.name.clone(),
                if s.owner.is_empty() {
                    "-".into()
                } else {
                    printable(&s.owner)
                },
                s.state.clone(),
                if s.unbounded {
                    format!("{} (unbounded)", s.method)
                } else {
                    s.method.clone()
                },
                if s.unbounded {
                    format!("{}+", s.trials)
                } else {
                    s.trials.to_string()
                },
                s.jobs.to_string(),
                c.succeeded.to_string(),
                c.running.to_string(),
                c.queued.to_string(),
                c.failed.to_string(),
                c.cancelled.to_string(),
                c.pruned.to_string(),
                if exact {
                    exact_time(s.created_at)
                } else {
                    human_age(now, s.created_at)
                },
            ]
        })
        .collect();
    let json = json!(sweeps
        .iter()
        .map(|s| {
            let c = counts(s);
            json!({"id": s.id, "name": s.name, "owner": s.owner, "state": s.state, "method": s.method, "metric": s.metric_name, "goal": s.metric_goal, "trials": s.trials, "jobs": s.jobs, "unbounded": s.unbounded,
                   "succeeded": c.succeeded, "running": c.running, "queued": c.queued, "failed": c.failed, "cancelled": c.cancelled, "pruned": c.pruned, "succeeded_without_metric": c.succeeded_without_metric, "created_at": s.created_at, "created_at_iso": json_time(s.created_at)})
        })
        .collect::<Vec<_>>());
    Listing {
        columns: vec![
            "id",
            "name",
            "owner",
            "state",
            "method",
            "trials",
            "jobs",
            "done",
            "running",
            "queued",
            "failed",
            "cancelled",
            "pruned",
            if exact { "created" } else { "age" },
        ],
        rows,
        json,
        ..Default::default()
    }
}

/// One sweep in the JSON form `status -o json` uses.
pub fn sweep_json(s: &pb::Sweep) -> serde_json::Value {
    sweep_listing(std::slice::from_ref(s), true).json[0].clone()
}

pub async fn name_failures(c: &mut Client, sweep: &str, failed: u64) {
    let jobs = first_jobs(c, sweep, "failed", 3, |_| true).await;
    for j in &jobs {
        // The listing carries each job's last attempt: no call per job.
        let how = j
            .last_attempt
            .as_ref()
            .map(|a| {
                let msg: String = a.message.chars().take(160).collect();
                format!("attempt {} {}: {}", a.attempt, a.state, printable(&msg))
            })
            .unwrap_or_default();
        eprintln!("  failed: {} {how}", j.id);
    }
    if let Some(j) = jobs.first() {
        let more = if failed > jobs.len() as u64 {
            format!("; all {failed}: `liandan jobs {sweep} --state failed`")
        } else {
            String::new()
        };
        eprintln!("  see why: `liandan logs {} --stderr`{more}", j.id);
    }
}

/// Says loudly when succeeded jobs never reported the sweep's metric (a
/// `metric_pattern` that does not match what the script prints): their
/// results would have nothing to rank. Names one such job for its log.
pub async fn silent_metric(c: &mut Client, s: &pb::Sweep) {
    let k = counts(s);
    let silent = k.succeeded_without_metric;
    if silent == 0 {
        return;
    }
    // One of them, for the pointer to its log.
    let example = first_jobs(c, &s.id, "succeeded", 1, |j| j.final_metric.is_none())
        .await
        .first()
        .map(|j| format!(" (`liandan logs {}`)", j.id))
        .unwrap_or_default();
    eprintln!(
        "warning: {silent} of {} succeeded job(s) never reported the metric {:?}: `results` has nothing to rank them by. Check liandan.metric_pattern against what the job prints{example}, or write the metric to LIANDAN_METRICS_FILE; liandan.require_metric: true makes it a failure",
        k.succeeded, s.metric_name,
    );
}

pub async fn wait_for(c: &mut Client, sweep: &str) -> R<i32> {
    let tty = std::io::stderr().is_terminal();
    let interrupted = |bar: &Option<indicatif::ProgressBar>| {
        if let Some(b) = bar {
            b.abandon();
        }
        eprintln!("interrupted; the sweep goes on (follow it with `liandan wait {sweep}`)");
        Ok(exit::INTERRUPTED)
    };
    let Some(first) = sweep_riding_restarts(c, sweep).await? else {
        return interrupted(&None);
    };
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(first.jobs);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done  {msg}  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let start = std::time::Instant::now();
    let mut last_print = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let Some(s) = sweep_riding_restarts(c, sweep).await? else {
            return interrupted(&bar);
        };
        let k = counts(&s);
        let done = k.succeeded + k.failed + k.cancelled + k.pruned;
        let msg = format!(
            "running {}  queued {}  failed {}",
            k.running, k.queued, k.failed
        );
        let over = sweep::shown_state_has_ended(&s.state);
        match &bar {
            Some(b) => {
                b.set_length(s.jobs);
                b.set_position(done);
                b.set_message(msg.clone());
            }
            None => {
                if last_print.elapsed() >= Duration::from_secs(5) || over {
                    let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-3);
                    eprintln!("{}: {done}/{} done, {msg}, {rate:.2} jobs/s", s.id, s.jobs);
                    last_print = std::time::Instant::now();
                }
            }
        }
        if over {
            if let Some(b) = &bar {
                b.finish();
            }
            eprintln!(
                "sweep {} {}: {} succeeded, {} failed, {} cancelled, {} pruned",
                s.id, s.state, k.succeeded, k.failed, k.cancelled, k.pruned
            );
            if k.failed > 0 {
                name_failures(c, &s.id, k.failed).await;
            }
            if k.succeeded > 0 && !s.metric_name.is_empty() {
                silent_metric(c, &s).await;
            }
            return Ok(if k.failed > 0 {
                exit::FAILURE
            } else {
                exit::OK
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return interrupted(&bar),
        }
    }
}

/// The arguments of `liandan validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    pub file: PathBuf,
    /// The sweep name to check (as `submit --name`).
    #[arg(long)]
    pub name: Option<String>,
    /// `json`: the verdict, the warnings and the parsed spec, for scripts.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan validate`.
pub async fn validate(_url: &Target, args: ValidateArgs) -> R<i32> {
    let ValidateArgs { file, name, output } = args;
    let (text, fmt) = read_spec(&file)?;
    // The same check a submit makes (parse, name, expansion).
    let checked = sweep::check(&text, fmt, name.as_deref().unwrap_or(""));
    if output == TextFormat::Json {
        let (js, code) = match &checked {
            Ok(c) => (
                json!({"file": file.display().to_string(), "valid": true, "warnings": c.warnings, "spec": c.spec,
                           "sweep_id": c.sweep_id, "name": c.name, "trials": c.expansion.trials.len(), "jobs": c.expansion.jobs.len(), "lazy": c.spec.is_lazy()}),
                exit::OK,
            ),
            Err(e) => {
                let errors: Vec<_> = e
                    .errors
                    .iter()
                    .map(|e| json!({"path": e.path, "line": e.line, "message": e.message}))
                    .collect();
                (
                    json!({"file": file.display().to_string(), "valid": false, "warnings": [], "error": errors[0], "errors": errors}),
                    exit::DATAERR,
                )
            }
        };
        print(format!(
            "{}\n",
            serde_json::to_string_pretty(&js).unwrap_or_default()
        ));
        return Ok(code);
    }
    match checked {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            let size = if c.spec.is_lazy() {
                "trials proposed as it runs".to_string()
            } else {
                format!(
                    "{} trial(s), {} job(s)",
                    c.expansion.trials.len(),
                    c.expansion.jobs.len()
                )
            };
            eprintln!(
                "{}: valid ({} sweep, {} parameter(s), {} seed(s), {size})",
                file.display(),
                c.spec.method.as_str(),
                c.spec.parameters.len(),
                c.spec.liandan.seeds.len()
            );
            Ok(exit::OK)
        }
        Err(e) => Err(Fail(exit::DATAERR, format!("{}: {e}", file.display()))),
    }
}

/// The arguments of `liandan expand`.
#[derive(clap::Args, Debug)]
pub struct ExpandArgs {
    pub file: PathBuf,
    /// The sweep name the ids derive from (as `submit --name`).
    #[arg(long)]
    pub name: Option<String>,
    /// For sweeps that propose trials as they run (bayes, tpe, random
    /// without run_cap): show the first N trials random search would draw.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub first: usize,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `liandan expand`.
pub async fn expand(_url: &Target, args: ExpandArgs) -> R<i32> {
    let ExpandArgs {
        file,
        name,
        first,
        output,
    } = args;
    let (text, fmt) = read_spec(&file)?;
    let checked = sweep::check(&text, fmt, name.as_deref().unwrap_or(""))
        .map_err(|e| Fail(exit::DATAERR, format!("{}: {e}", file.display())))?;
    let (spec, name, sid, mut e) = (
        checked.spec,
        checked.name,
        checked.sweep_id,
        checked.expansion,
    );
    e.warnings = checked.warnings;
    let lazy = spec.is_lazy();
    if lazy && spec.method == SpecMethod::Random {
        // What the coordinator will draw, trial by trial.
        for k in 0..first {
            let params = sweep::expand::random_params(&spec, k as u64);
            let (t, jobs) = sweep::adaptive_trial(&sid, k, params, &spec.liandan.seeds);
            e.trials.push(t);
            e.jobs.extend(jobs);
        }
        e.warnings.push(format!(
                "showing the first {first} trials (--first N); the sweep draws more until it is cancelled"
            ));
    }
    let warnings = e.warnings.clone();
    if output != Format::Json {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    let ctx = command::offline_context(&offline_envvar);
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for j in &e.jobs {
        let params = &e.trials[j.trial_index].params;
        let argv = command::build_argv(&spec, params, j.seed, &ctx)
            .map_err(|e| Fail(exit::DATAERR, e.to_string()))?;
        let args: serde_json::Map<String, serde_json::Value> =
            command::program_params(&spec, params, j.seed)
                .into_iter()
                .collect();
        rows.push(vec![
            j.id.to_string(),
            j.trial.to_string(),
            j.seed.to_string(),
            params.to_string(),
            argv.join(" "),
        ]);
        js.push(json!({"job_id": j.id, "trial_id": j.trial, "seed": j.seed, "params": params, "args": args, "argv": argv}));
    }
    let l = Listing {
        columns: vec!["job", "trial", "seed", "params", "command"],
        rows,
        json: json!({"sweep_id": sid, "name": name, "method": spec.method.as_str(), "lazy": lazy, "warnings": warnings, "jobs": js}),
        params: e
            .jobs
            .iter()
            .map(|j| e.trials[j.trial_index].params.clone())
            .collect(),
    };
    print(render(&l, output));
    Ok(exit::OK)
}

/// The arguments of `liandan retry`.
#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
    /// Every failed job of the sweep (the default).
    #[arg(long, conflicts_with = "job")]
    pub failed: bool,
    /// Only this job (an id or a unique prefix of one).
    #[arg(long, value_name = "JOB", add = ArgValueCompleter::new(complete::job))]
    pub job: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan retry`.
pub async fn retry(url: &Target, args: RetryArgs) -> R<i32> {
    let RetryArgs {
        sweep,
        failed: _,
        job,
        output,
    } = args;
    let r = connect(url)
        .await?
        .retry(pb::RetryRequest {
            sweep_id: sweep,
            job_id: job.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let s = r.sweep.unwrap_or_default();
    let js = json!({"id": s.id, "requeued": r.requeued, "state": s.state});
    let text = if r.requeued == 0 {
        format!("sweep {} has no failed job to run again", s.id)
    } else {
        format!(
                "queued {} job(s) of sweep {} again, their retries reset (follow with `liandan wait {}`)",
                r.requeued, s.id, s.id
            )
    };
    say(output, text, js);
    Ok(exit::OK)
}

/// The arguments of `liandan delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
    /// Cancel the sweep first and wait for its running jobs to stop.
    #[arg(long)]
    pub force: bool,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan delete`.
pub async fn delete(url: &Target, args: DeleteArgs) -> R<i32> {
    let DeleteArgs {
        sweep,
        force,
        output,
    } = args;
    let mut c = connect(url).await?;
    if force {
        // Cancel, then wait for the running jobs to end: they hold
        // their workers' GPUs until their processes are gone.
        let s = c
            .get_sweep(pb::GetSweepRequest {
                sweep_id: sweep.clone(),
            })
            .await?
            .into_inner();
        if !sweep::shown_state_has_ended(&s.state) {
            c.cancel_sweep(pb::SweepRef {
                sweep_id: s.id.clone(),
            })
            .await?;
        }
        let mut said = false;
        loop {
            let Some(now) = sweep_riding_restarts(&mut c, &s.id).await? else {
                eprintln!(
                        "interrupted: sweep {} is cancelled but not deleted; run `liandan delete {} --force` again once its jobs have stopped",
                        s.id, s.id
                    );
                return Ok(exit::INTERRUPTED);
            };
            let running = counts(&now).running;
            if running == 0 {
                break;
            }
            if !said {
                eprintln!("cancelled {}; waiting for its {running} running job(s) to stop (each gets its grace period)", s.id);
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let r = c
        .delete_sweep(pb::DeleteSweepRequest {
            sweep_id: sweep,
            force,
        })
        .await?
        .into_inner();
    let s = r.sweep.unwrap_or_default();
    let js = json!({"id": s.id, "name": s.name, "deleted": true, "jobs_deleted": r.jobs_deleted});
    say(
        output,
        format!(
            "deleted sweep {} ({}) and its {} job(s), with their logs, metrics and checkpoints",
            s.id, s.name, r.jobs_deleted
        ),
        js,
    );
    Ok(exit::OK)
}

/// The arguments of `liandan submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub name: Option<String>,
    /// Wait for the sweep to finish, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// `json`: {"sweep_id", "name", "created", "trials", "jobs", "warnings"}.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan submit`.
pub async fn submit(url: &Target, args: SubmitArgs) -> R<i32> {
    let SubmitArgs {
        file,
        name,
        wait,
        output,
    } = args;
    let (text, fmt) = read_spec(&file)?;
    // The check `validate` makes (parse, name, expansion) locally first:
    // the same messages, every problem at once, without a round trip.
    sweep::check(&text, fmt, name.as_deref().unwrap_or(""))
        .map_err(|e| Fail(exit::DATAERR, format!("{}: {e}", file.display())))?;
    let mut c = connect(url).await?;
    let format = if fmt == SpecFormat::Toml {
        "toml"
    } else {
        "yaml"
    };
    let r = c
        .submit_sweep(pb::SubmitSweepRequest {
            spec: text,
            format: format.into(),
            name: name.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let s = r.sweep.unwrap_or_default();
    if output == TextFormat::Json {
        let js = json!({"sweep_id": s.id, "name": s.name, "created": r.created, "trials": s.trials, "jobs": s.jobs, "unbounded": s.unbounded, "warnings": r.warnings});
        print(format!(
            "{}\n",
            serde_json::to_string_pretty(&js).unwrap_or_default()
        ));
    } else {
        for w in &r.warnings {
            eprintln!("warning: {w}");
        }
    }
    if output == TextFormat::Json {
        // The JSON above says it all.
    } else if r.created && s.unbounded {
        println!(
                "submitted sweep {} ({}): trials are proposed as slots free, until you cancel it (`liandan cancel {}`)",
                s.id, s.name, s.id
            );
    } else if r.created {
        println!(
            "submitted sweep {} ({}): {} trials, {} jobs",
            s.id, s.name, s.trials, s.jobs
        );
    } else {
        println!(
            "sweep {} ({}) already exists with this spec; nothing was added",
            s.id, s.name
        );
    }
    if wait {
        return wait_for(&mut c, &s.id).await;
    }
    Ok(exit::OK)
}

/// The arguments of `liandan status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `liandan status`.
pub async fn status(url: &Target, args: StatusArgs) -> R<i32> {
    let StatusArgs { sweep, output } = args;
    let mut c = connect(url).await?;
    let sweeps = match sweep {
        Some(id) => vec![c
            .get_sweep(pb::GetSweepRequest { sweep_id: id })
            .await?
            .into_inner()],
        None => all_sweeps(&c).await?,
    };
    if sweeps.is_empty() && matches!(output, Format::Table | Format::Wide) {
        println!("no sweeps yet; submit one with `liandan submit FILE`");
        return Ok(exit::OK);
    }
    print(render(
        &sweep_listing(&sweeps, output == Format::Csv),
        output,
    ));
    if matches!(output, Format::Table | Format::Wide) {
        for s in &sweeps {
            let n = counts(s).succeeded_without_metric;
            if n > 0 {
                eprintln!("warning: sweep {}: {n} succeeded job(s) never reported the metric {:?}, so `results` cannot rank them; `liandan jobs {} --state succeeded` shows which (set liandan.require_metric: true to make that a failure)", s.id, s.metric_name, s.id);
            }
        }
    }
    Ok(exit::OK)
}

/// The arguments of `liandan cancel`.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep_or_job))]
    pub target: String,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan cancel`.
pub async fn cancel(url: &Target, args: CancelArgs) -> R<i32> {
    let CancelArgs { target, output } = args;
    let mut c = connect(url).await?;
    if target.starts_with("job-") {
        let j = c
            .cancel_job(pb::JobRef { job_id: target })
            .await?
            .into_inner();
        say(
            output,
            format!(
                "job {}: {}",
                j.id,
                if j.state == "running" {
                    "cancelling (SIGTERM, then SIGKILL after the grace period)"
                } else {
                    &j.state
                }
            ),
            json!({"job_id": j.id, "state": j.state}),
        );
    } else {
        let s = c
            .cancel_sweep(pb::SweepRef { sweep_id: target })
            .await?
            .into_inner();
        say(
            output,
            format!(
                "sweep {} cancelled; {} running job(s) are being stopped",
                s.id,
                counts(&s).running
            ),
            sweep_json(&s),
        );
    }
    Ok(exit::OK)
}

/// The arguments of `liandan pause`.
#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan pause`.
pub async fn pause(url: &Target, args: PauseArgs) -> R<i32> {
    let PauseArgs { sweep, output } = args;
    let s = connect(url)
        .await?
        .pause_sweep(pb::SweepRef { sweep_id: sweep })
        .await?
        .into_inner();
    say(
        output,
        format!(
            "sweep {} paused; running jobs continue, no new ones start",
            s.id
        ),
        sweep_json(&s),
    );
    Ok(exit::OK)
}

/// The arguments of `liandan resume`.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan resume`.
pub async fn resume(url: &Target, args: ResumeArgs) -> R<i32> {
    let ResumeArgs { sweep, output } = args;
    let s = connect(url)
        .await?
        .resume_sweep(pb::SweepRef { sweep_id: sweep })
        .await?
        .into_inner();
    say(output, format!("sweep {} resumed", s.id), sweep_json(&s));
    Ok(exit::OK)
}

/// The arguments of `liandan wait`.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
}

/// `liandan wait`.
pub async fn wait(url: &Target, args: WaitArgs) -> R<i32> {
    let WaitArgs { sweep } = args;
    let mut c = connect(url).await?;
    wait_for(&mut c, &sweep).await
}
