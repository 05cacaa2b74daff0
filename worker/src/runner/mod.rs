//! Running one attempt: a child process in its own process group, in its own
//! directory, with its argv built from the sweep (never through a shell), its
//! output captured line by line into the spool, its metrics file tailed, its
//! checkpoint directory watched, and a typed stop: SIGTERM to the group, then
//! SIGKILL after the grace period. The ending is classified for the coordinator.

use crate::ctx::{exit_record, WorkerCtx};
use crate::spool::{JournalEntry, UploadEntry};
use liandan_common::sweep::command::{
    args_json, build_argv, expand_envvars, job_envvar, private_var, CommandContext,
};
use liandan_common::sweep::{spec::TRAINER_PROGRAM, SweepSpec};
use liandan_common::time::now_secs;
use liandan_proto::v1 as pb;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

pub use crate::ctx::StopReason;

mod launch;
mod output;
mod scan;

use launch::{interpreter, setup, Setup};
pub use output::metrics_from_line;
use output::{read_lines, sink, MetricsTail, Sink};
pub use scan::checkpoint_step;
use scan::{scan_checkpoints, Refused};

fn record(job: &str, attempt: u64, body: pb::record::Body) -> pb::Record {
    pb::Record {
        seq: 0,
        job_id: job.to_string(),
        attempt,
        body: Some(body),
    }
}

/// Start time of a process in clock ticks since boot (/proc/PID/stat field 22),
/// used to tell our process from a later one that reused its pid.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Everything needed to start an attempt.
pub struct Launch {
    pub assignment: pb::Assignment,
    pub spec: SweepSpec,
    pub dir: PathBuf,
    pub resume: Option<(PathBuf, i64)>,
}

impl Launch {
    fn ckpt_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    fn params_path(&self) -> PathBuf {
        self.dir.join("params.json")
    }
}

/// An attempt ready to spawn: where, with what environment and argv, and the
/// checkpoint it resumes from (lent to the job user when there is one).
struct Prepared {
    workdir: Option<PathBuf>,
    env: Vec<(String, String)>,
    argv: Vec<String>,
    resume_path: Option<PathBuf>,
}

/// Signals to the job: its process group and, with a cgroup, every process
/// in it (those that left the group too).
struct Killer {
    pid: i32,
    cgroup: Option<crate::jail::JobCgroup>,
}

impl Killer {
    fn signal(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.pid), sig);
        if let Some(g) = &self.cgroup {
            g.signal(sig);
        }
    }
}

/// What the supervision loop polls: the metrics file and the checkpoint
/// directory of one attempt.
struct Watch<'a> {
    ctx: &'a WorkerCtx,
    job: &'a str,
    attempt: u64,
    ckpt_dir: PathBuf,
    last_metric: Arc<Mutex<Option<f64>>>,
    metric_name: Option<String>,
    tail: MetricsTail,
    /// Checkpoint files refused (links, FIFOs): not looked at again.
    refused: Refused,
}

impl Watch<'_> {
    /// Reads what is new in the metrics file (a bounded read); true when
    /// there may be more.
    async fn metrics(&mut self) -> bool {
        self.tail
            .poll(
                self.ctx,
                self.job,
                self.attempt,
                &self.last_metric,
                self.metric_name.as_deref(),
            )
            .await
    }

    async fn checkpoints(&mut self) {
        scan_checkpoints(
            self.ctx,
            self.job,
            self.attempt,
            &self.ckpt_dir,
            &self.last_metric,
            &mut self.refused,
        )
        .await;
    }
}

/// How the process ended and what the worker had asked of it.
struct Ended {
    status: std::io::Result<std::process::ExitStatus>,
    reason: Option<StopReason>,
    killed_by_us: bool,
}

/// Runs an attempt to its end and appends its exit record.
pub async fn run_attempt(
    ctx: Arc<WorkerCtx>,
    launch: Launch,
    mut stop: watch::Receiver<Option<StopReason>>,
) {
    let job = launch.assignment.job_id.clone();
    let attempt = launch.assignment.attempt;
    // Setup errors (a missing workdir or program) end the attempt before it
    // starts and are not retried: the next attempt would find the same.
    let prepared = match prepare(&ctx, &launch) {
        Ok(p) => p,
        Err(exited) => return finish(&ctx, &job, attempt, exited).await,
    };
    // Its own cgroup, where the system allows it: what leaves the process
    // group (setsid) is still found and killed with the job.
    let cgroup = match ctx.cgroups.as_ref().map(|c| c.create(&job, attempt)) {
        Some(Ok(g)) => Some(g),
        Some(Err(e)) => {
            tracing::warn!(job, attempt, error = %e, "cannot create the attempt's cgroup; tracking its process group only");
            None
        }
        None => None,
    };
    let mut cmd = command(&ctx, &launch, &prepared, cgroup.as_ref());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let argv0 = &prepared.argv[0];
            let msg = match &ctx.job_user {
                Some(u) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
                    "cannot start {argv0:?}: {e} (jobs run as job_user {}: it needs to read and run the program and enter its workdir)",
                    u.name
                ),
                _ => format!("cannot start {argv0:?}: {e}"),
            };
            finish(
                &ctx,
                &job,
                attempt,
                exit_record(pb::Outcome::SpawnFailed, -1, 0, msg),
            )
            .await;
            if let Some(g) = cgroup {
                g.remove().await;
            }
            return;
        }
    };
    let started = std::time::Instant::now();
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let _ = ctx
        .spool
        .journal_set_pid(job.clone(), attempt, pid, process_start_ticks(pid))
        .await;
    let resumed = launch.resume.as_ref().map(|(_, s)| *s).unwrap_or(-1);
    ctx.spool
        .append(vec![record(
            &job,
            attempt,
            pb::record::Body::Started(pb::JobStarted {
                pid: pid as u32,
                resumed_from_step: resumed,
            }),
        )])
        .await;
    tracing::info!(job, attempt, pid, argv = ?prepared.argv, "job started");

    let metric_name = launch.spec.metric.as_ref().map(|m| m.name.clone());
    let last_metric = Arc::new(Mutex::new(None));
    let pattern = launch
        .spec
        .liandan
        .metric_pattern
        .as_deref()
        .and_then(|p| regex::Regex::new(p).ok());
    let (line_tx, line_rx) = mpsc::channel(8192);
    // The job said its disk is full (ENOSPC's message on stderr).
    let enospc = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let to = Sink {
        ctx: ctx.clone(),
        job: job.clone(),
        attempt,
        pattern,
        last_metric: last_metric.clone(),
        metric_name: metric_name.clone(),
        enospc: enospc.clone(),
    };
    let sink_task = tokio::spawn(sink(to, line_rx));
    ctx.register_notices(&job, attempt, line_tx.clone());
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(read_lines(s, false, line_tx.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(read_lines(s, true, line_tx.clone())));
    drop(line_tx);

    let mut watch = Watch {
        ctx: &ctx,
        job: &job,
        attempt,
        ckpt_dir: launch.ckpt_dir(),
        last_metric,
        metric_name,
        tail: MetricsTail {
            skipping: false,
            path: launch.metrics_path(),
            offset: 0,
            partial: Vec::new(),
            line: 0,
        },
        refused: Refused::default(),
    };
    let killer = Killer { pid, cgroup };
    let grace = Duration::from_secs_f64(ctx.cfg.grace_period_secs);
    let ended = supervise(&mut child, &mut stop, &killer, &mut watch, grace).await;
    // Whatever the job left behind in its group or cgroup (grandchildren,
    // daemons it started) goes with it.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    if let Some(g) = killer.cgroup {
        g.remove().await;
    }
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    // Everything the job wrote, a bounded read at a time.
    while watch.metrics().await {}
    ctx.unregister_notices(&job, attempt);
    let _ = sink_task.await;
    watch.checkpoints().await;
    // Give published checkpoints a chance to reach the coordinator before the
    // exit record makes this attempt stale there.
    ctx.wait_uploads(&job, attempt, Duration::from_secs(60))
        .await;
    let quick = started.elapsed() < Duration::from_secs(1);
    let full = enospc.load(std::sync::atomic::Ordering::SeqCst);
    finish(&ctx, &job, attempt, classify(&job, ended, quick, full)).await;
}

/// Everything before the spawn that can fail: the workdir, program and
/// environment (a setup error), the checkpoint directory, the params file
/// and the argv, the resume checkpoint lent to the job user and the
/// attempt's directory handed to it (spawn errors).
fn prepare(ctx: &WorkerCtx, launch: &Launch) -> Result<Prepared, pb::JobExited> {
    let a = &launch.assignment;
    let spawn_failed = |msg: String| exit_record(pb::Outcome::SpawnFailed, -1, 0, msg);
    let Setup {
        workdir,
        program,
        env,
    } = setup(ctx, &launch.spec)
        .map_err(|msg| exit_record(pb::Outcome::SetupFailed, -1, 0, msg))?;
    let ckpt_dir = launch.ckpt_dir();
    let params_path = launch.params_path();
    let argv = (|| -> Result<Vec<String>, String> {
        std::fs::create_dir_all(&ckpt_dir)
            .map_err(|e| format!("cannot create {}: {e}", ckpt_dir.display()))?;
        let params: serde_json::Value = serde_json::from_str(&a.params_json)
            .map_err(|e| format!("bad params from coordinator: {e}"))?;
        // What `${args_json_file}` names: the arguments as W&B's agent writes them.
        std::fs::write(&params_path, args_json(&launch.spec, &params, a.seed))
            .map_err(|e| format!("cannot write {}: {e}", params_path.display()))?;
        let env_lookup = job_envvar;
        let params_file = params_path.display().to_string();
        let cctx = CommandContext {
            env: "/usr/bin/env",
            interpreter: interpreter(),
            program: program.as_deref(),
            args_json_file: &params_file,
            envvar: &env_lookup,
        };
        build_argv(&launch.spec, &params, a.seed, &cctx).map_err(|e| e.to_string())
    })()
    .map_err(spawn_failed)?;
    // The checkpoint to resume from, lent to the job user in its own directory.
    let resume_path = match (&launch.resume, &ctx.job_user) {
        (Some((p, _)), Some(u)) => Some(u.lend(p, &launch.dir).map_err(|e| {
            spawn_failed(format!(
                "cannot lend {} to job_user {}: {e}",
                p.display(),
                u.name
            ))
        })?),
        (Some((p, _)), None) => Some(p.clone()),
        (None, _) => None,
    };
    // Only now, with everything the worker puts there written, is the
    // attempt's directory handed to the job user.
    if let (Some(u), Some(job_dir)) = (&ctx.job_user, launch.dir.parent()) {
        u.give(job_dir, &launch.dir).map_err(|e| {
            spawn_failed(format!(
                "cannot hand {} to job_user {}: {e}",
                launch.dir.display(),
                u.name
            ))
        })?;
    }
    Ok(Prepared {
        workdir,
        env,
        argv,
        resume_path,
    })
}

/// The job's command: never through a shell, in its own process group, with
/// none of the worker's own settings and secrets and the job's LIANDAN_*
/// variables, CUDA_VISIBLE_DEVICES and (with a job user) its identity.
fn command(
    ctx: &WorkerCtx,
    launch: &Launch,
    prepared: &Prepared,
    cgroup: Option<&crate::jail::JobCgroup>,
) -> tokio::process::Command {
    let a = &launch.assignment;
    let (job, attempt) = (&a.job_id, a.attempt);
    let (argv, job_env, workdir) = (&prepared.argv, &prepared.env, &prepared.workdir);
    let (metrics_path, ckpt_dir) = (launch.metrics_path(), launch.ckpt_dir());
    let resume_path = &prepared.resume_path;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    // A job sees none of the worker's own settings and secrets: every
    // inherited LIANDAN_* variable (LIANDAN_TOKEN, LIANDAN_TOKEN_FILE, the
    // worker's TLS key path ...) and systemd's credentials directory are
    // removed; the job's own LIANDAN_* variables are set below.
    for (k, _) in std::env::vars_os() {
        if private_var(&k.to_string_lossy()) {
            cmd.env_remove(&k);
        }
    }
    cmd.args(&argv[1..])
        .current_dir(workdir.as_deref().unwrap_or(&launch.dir))
        .envs(job_env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env("LIANDAN_JOB_ID", job)
        .env("LIANDAN_ATTEMPT", attempt.to_string())
        .env("LIANDAN_SEED", a.seed.to_string())
        .env("LIANDAN_PARAMS", &a.params_json)
        .env("LIANDAN_METRICS_FILE", &metrics_path)
        .env("LIANDAN_CHECKPOINT_DIR", &ckpt_dir)
        .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        .env("CUDA_VISIBLE_DEVICES", a.gpu_uuids.join(","));
    if let Some(path) = &resume_path {
        cmd.env("LIANDAN_RESUME_FROM", path);
    }
    if let Some(u) = &ctx.job_user {
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    let pre = crate::jail::PreExec::new(cgroup.map(|g| g.procs_fd()), ctx.job_user.as_ref());
    // SAFETY: PreExec::run makes only async-signal-safe system calls (write,
    // prctl, setgroups, setgid, setuid, capset) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || pre.run());
    }
    cmd
}

/// Waits for the process, carrying out a stop (SIGTERM, then SIGKILL after
/// the grace period) and polling its metrics and checkpoints meanwhile.
async fn supervise(
    child: &mut tokio::process::Child,
    stop: &mut watch::Receiver<Option<StopReason>>,
    killer: &Killer,
    watch: &mut Watch<'_>,
    grace: Duration,
) -> Ended {
    let (job, attempt) = (watch.job, watch.attempt);
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut reason: Option<StopReason> = *stop.borrow();
    let mut term_deadline: Option<tokio::time::Instant> = None;
    let mut killed_by_us = false;
    if reason.is_some() {
        killer.signal(Signal::SIGTERM);
        term_deadline = Some(tokio::time::Instant::now() + grace);
    }
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            changed = stop.changed(), if reason.is_none() => {
                if changed.is_ok() {
                    reason = *stop.borrow();
                    if reason.is_some() {
                        tracing::info!(job, attempt, ?reason, "stopping job: SIGTERM to its processes");
                        killer.signal(Signal::SIGTERM);
                        term_deadline = Some(tokio::time::Instant::now() + grace);
                    }
                }
            }
            _ = async { match term_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                tracing::warn!(job, attempt, "grace period over: SIGKILL to its processes");
                killer.signal(Signal::SIGKILL);
                killed_by_us = true;
                term_deadline = None;
            }
            _ = poll.tick() => {
                watch.metrics().await;
                watch.checkpoints().await;
            }
        }
    };
    Ended {
        status,
        reason,
        killed_by_us,
    }
}

/// How the attempt ended, for the coordinator: `quick` when it exited within
/// a second, `disk_full` when it said its disk is full.
fn classify(job: &str, ended: Ended, quick: bool, disk_full: bool) -> pb::JobExited {
    let Ended {
        status,
        reason,
        killed_by_us,
    } = ended;
    let (code, signal) = match &status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code().unwrap_or(-1), s.signal().unwrap_or(0))
        }
        Err(_) => (-1, 0),
    };
    let outcome = match (reason, code, signal) {
        (Some(StopReason::Preempt), _, _) => pb::Outcome::Preempted,
        // The worker's disk filled up under the job: the worker's trouble, not
        // the job's (it is requeued without spending a retry).
        (None, c, s) if (c != 0 || s != 0) && disk_full => pb::Outcome::DiskFull,
        // argparse's (and getopt's) usage error, before any work was done.
        (None, 2, 0) if quick => pb::Outcome::UsageError,
        (Some(StopReason::Cancel), _, _) | (Some(StopReason::Stale), _, _) => {
            pb::Outcome::Cancelled
        }
        (None, 0, 0) => pb::Outcome::Succeeded,
        // SIGKILL that we did not send is what the kernel's OOM killer sends.
        (None, _, 9) if !killed_by_us => pb::Outcome::OomKilled,
        (None, _, s) if s != 0 => pb::Outcome::Signalled,
        _ => pb::Outcome::Failed,
    };
    let message = match status {
        Ok(_) if outcome == pb::Outcome::UsageError => format!(
            "exit status 2 within a second of starting: a command-line usage error (see `liandan logs {job}`); every attempt would end the same, so none is retried"
        ),
        Ok(s) => format!("{s}"),
        Err(e) => format!("wait failed: {e}"),
    };
    exit_record(outcome, code, signal, message)
}

/// An attempt the worker could not even set up because its own disk is full
/// (ENOSPC creating the attempt's directory or files) ends `disk_full`, not
/// as the job's failure: the next attempt, elsewhere or later, can run.
fn worker_disk_full(outcome: pb::Outcome, message: &str) -> bool {
    outcome == pb::Outcome::SpawnFailed
        && (message.contains("(os error 28)") || message.contains("No space left on device"))
}

async fn finish(ctx: &WorkerCtx, job: &str, attempt: u64, mut exited: pb::JobExited) {
    if worker_disk_full(exited.outcome(), &exited.message) {
        exited.set_outcome(pb::Outcome::DiskFull);
    }
    let outcome = crate::ctx::outcome_name(exited.outcome());
    tracing::info!(job, attempt, outcome, code = exited.exit_code, signal = exited.signal, message = %exited.message, "job ended");
    let mut recs = Vec::new();
    if matches!(
        exited.outcome(),
        pb::Outcome::SpawnFailed | pb::Outcome::SetupFailed
    ) {
        // The job never ran: its log says why, where the user looks.
        let text = format!(
            "liandan-worker: the job could not start: {}",
            exited.message
        );
        recs.push(record(
            job,
            attempt,
            pb::record::Body::Log(pb::LogRecord {
                line: 1,
                stream: pb::Stream::Stderr as i32,
                legacy_stream: String::new(),
                ts: now_secs(),
                text,
            }),
        ));
    }
    let dir = ctx.attempt_dir(job, attempt);
    if ctx.job_user.is_some() {
        // Nothing of an ended attempt stays open to later jobs; and what the
        // worker writes next in it is written where no job can reach.
        crate::jail::JobUser::take_back(&dir);
    }
    // Before the exit record: retention reads it once the exit is acknowledged.
    crate::retention::write_outcome(&dir, outcome);
    recs.push(record(job, attempt, pb::record::Body::Exited(exited)));
    let seq = ctx.spool.append(recs).await;
    let _ = ctx
        .spool
        .journal_set_exit(job.to_string(), attempt, seq)
        .await;
    ctx.mark_ended(job, attempt);
}

/// Journals an attempt before its process exists, so a crash right after
/// spawning still finds it.
pub async fn journal(
    ctx: &WorkerCtx,
    a: &pb::Assignment,
    dir: &Path,
) -> Result<(), crate::spool::SpoolError> {
    ctx.spool
        .journal_insert(JournalEntry {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            pid: None,
            start_ticks: None,
            gpus: a.gpu_uuids.clone(),
            cpus: a.cpu_slots,
            dir: dir.display().to_string(),
            exit_seq: None,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_up_failing_on_a_full_disk_is_the_workers_trouble() {
        let e = std::io::Error::from_raw_os_error(28);
        let msg = format!("cannot create /state/jobs/j/1/checkpoints: {e}");
        assert!(worker_disk_full(pb::Outcome::SpawnFailed, &msg), "{msg}");
        assert!(!worker_disk_full(
            pb::Outcome::SpawnFailed,
            "cannot start \"python9\": No such file or directory (os error 2)"
        ));
        assert!(
            !worker_disk_full(pb::Outcome::SetupFailed, &msg),
            "a missing workdir stays the job's"
        );
    }

    #[test]
    fn metric_pattern_picks_named_numbers_from_stdout() {
        let re = regex::Regex::new(r"step=(?P<step>\d+) loss=(?P<loss>[0-9.eE+-]+)").unwrap();
        let cases: &[(&str, Option<serde_json::Value>)] = &[
            (
                "step=10 loss=0.25",
                Some(serde_json::json!({"step": 10, "loss": 0.25})),
            ),
            (
                "epoch done: step=3 loss=1e-3 ok",
                Some(serde_json::json!({"step": 3, "loss": 0.001})),
            ),
            ("nothing to see", None),
            ("step=4 loss=abc", None),
        ];
        for (line, want) in cases {
            assert_eq!(&metrics_from_line(&re, line), want, "{line}");
        }
    }

    #[test]
    fn checkpoint_names() {
        let cases = [
            ("step-100.ckpt", Some(100)),
            ("step-0.ckpt", Some(0)),
            (".step-5.ckpt.tmp", None),
            ("step-x.ckpt", None),
            // A sign is refused (it overflowed the worker once: -i64::MIN).
            ("step--1.ckpt", None),
            ("step--9223372036854775808.ckpt", None),
            ("step-+5.ckpt", None),
            ("step-99999999999999999999.ckpt", None),
            ("model.pt", None),
        ];
        for (name, want) in cases {
            assert_eq!(checkpoint_step(name), want, "{name}");
        }
    }
}
