//! Running one attempt: a child process in its own process group, in its own
//! directory, with its argv built from the sweep (never through a shell), its
//! output captured line by line into the spool, its metrics file tailed, its
//! checkpoint directory watched, and a typed stop: SIGTERM to the group, then
//! SIGKILL after the grace period. The ending is classified for the coordinator.

use crate::ctx::WorkerCtx;
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

/// Longest line stored as one record; longer lines are split.
const MAX_LINE: usize = 64 * 1024;

/// Pieces one over-long line is split into before the rest of it is dropped
/// (with a marker line saying how much): 1 MiB of one line is kept.
const MAX_PIECES: usize = 16;

/// Longest metrics-file line read; a longer one is skipped with a notice.
const MAX_METRIC_LINE: usize = 1 << 20;

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

/// Resolves `liandan-train` to the binary next to this worker, then PATH.
/// The worker's base directory: `base_dir`, or the directory it was started in.
fn base_dir(ctx: &WorkerCtx) -> PathBuf {
    if !ctx.cfg.base_dir.as_os_str().is_empty() {
        return ctx.cfg.base_dir.clone();
    }
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
}

/// The job's working directory from `liandan.workdir` (absolute, or relative
/// to the base directory), which must exist: a missing one is a setup error.
fn resolve_workdir(ctx: &WorkerCtx, spec: &SweepSpec) -> Result<Option<PathBuf>, String> {
    let Some(w) = spec.liandan.workdir.as_deref() else {
        return Ok(None);
    };
    let w = expand_envvars(w, &job_envvar).map_err(|e| format!("liandan.workdir: {e}"))?;
    let path = base_dir(ctx).join(&w);
    if !path.is_dir() {
        return Err(format!(
            "the working directory {} (liandan.workdir {w:?}, relative to the worker's base_dir {}) does not exist on worker {}; create it there or fix liandan.workdir",
            path.display(),
            base_dir(ctx).display(),
            ctx.id()
        ));
    }
    Ok(Some(path))
}

/// The program as the job runs it. A relative path is taken relative to the
/// workdir (else the worker's base directory, as W&B's agent takes it
/// relative to its own). A path that names no file there (one with a `/`, or
/// a script such as `train.py`) is a setup error naming the path and the
/// worker; a bare command name is left for PATH.
fn resolve_program(
    ctx: &WorkerCtx,
    program: Option<&str>,
    workdir: Option<&Path>,
) -> Result<Option<String>, String> {
    let Some(p) = program else {
        return Ok(None);
    };
    if p != TRAINER_PROGRAM {
        let dir = workdir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| base_dir(ctx));
        let path = dir.join(p);
        if path.exists() {
            return Ok(Some(path.display().to_string()));
        }
        let looks_like_a_file = p.contains('/')
            || [".py", ".sh", ".jl", ".R", ".lua", ".rb", ".pl", ".js"]
                .iter()
                .any(|e| p.ends_with(e));
        if looks_like_a_file {
            return Err(format!(
                "the program {} does not exist on worker {} (program {p:?}, relative to {}); copy it there, or set liandan.workdir to the directory that holds it",
                path.display(),
                ctx.id(),
                if workdir.is_some() { "liandan.workdir" } else { "the worker's base_dir" }
            ));
        }
        return Ok(Some(p.to_string()));
    }
    if !ctx.cfg.train_binary.is_empty() {
        return Ok(Some(ctx.cfg.train_binary.clone()));
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(TRAINER_PROGRAM)))
    {
        if sibling.exists() {
            return Ok(Some(sibling.display().to_string()));
        }
    }
    Ok(Some(p.to_string()))
}

/// W&B's `${interpreter}` is `python`; Debian has only `python3` unless
/// python-is-python3 is installed, so fall back to it.
fn interpreter() -> &'static str {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    };
    if on_path("python") {
        "python"
    } else {
        "python3"
    }
}

/// Where an attempt's output goes and what is picked out of it ([`sink`]).
struct Sink {
    ctx: Arc<WorkerCtx>,
    job: String,
    attempt: u64,
    /// The sweep's `metric_pattern`, applied to stdout.
    pattern: Option<regex::Regex>,
    /// The last value of the sweep's metric, for the checkpoint it goes with.
    last_metric: Arc<Mutex<Option<f64>>>,
    metric_name: Option<String>,
    /// Set when the job says its disk is full.
    enospc: Arc<std::sync::atomic::AtomicBool>,
}

/// Sends output lines to the spool in batches, numbering them per attempt,
/// and picks metrics out of stdout with the sweep's `metric_pattern`.
async fn sink(to: Sink, mut rx: mpsc::Receiver<(bool, String)>) {
    let Sink {
        ctx,
        job,
        attempt,
        pattern,
        last_metric,
        metric_name,
        enospc,
    } = to;
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 2048).await > 0 {
        let mut recs = Vec::with_capacity(buf.len());
        for (is_err, text) in buf.drain(..) {
            line_no += 1;
            let ts = now_secs();
            if is_err && text.contains("No space left on device") {
                enospc.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if !is_err {
                if let Some(m) = pattern.as_ref().and_then(|re| metrics_from_line(re, &text)) {
                    note_metric(&m, &last_metric, metric_name.as_deref());
                    let step = m.get("step").and_then(|s| s.as_i64());
                    recs.push(record(
                        &job,
                        attempt,
                        pb::record::Body::Metric(pb::MetricReport {
                            step,
                            ts,
                            json: m.to_string(),
                        }),
                    ));
                }
            }
            recs.push(record(
                &job,
                attempt,
                pb::record::Body::Log(pb::LogRecord {
                    line: line_no,
                    stream: if is_err { "stderr" } else { "stdout" }.into(),
                    ts,
                    text,
                }),
            ));
        }
        ctx.spool.append(recs).await;
    }
}

/// Named groups of the pattern that parse as numbers become a metric object.
pub fn metrics_from_line(re: &regex::Regex, line: &str) -> Option<serde_json::Value> {
    let caps = re.captures(line)?;
    let mut obj = serde_json::Map::new();
    for name in re.capture_names().flatten() {
        if let Some(v) = caps.name(name).and_then(|m| m.as_str().parse::<f64>().ok()) {
            let n = if name == "step" {
                serde_json::Value::from(v as i64)
            } else {
                serde_json::Number::from_f64(v)
                    .map(serde_json::Value::Number)
                    .unwrap_or_default()
            };
            obj.insert(name.to_string(), n);
        }
    }
    (!obj.is_empty()).then_some(serde_json::Value::Object(obj))
}

fn note_metric(v: &serde_json::Value, last: &Mutex<Option<f64>>, name: Option<&str>) {
    if let Some(x) = name.and_then(|n| v.get(n)).and_then(|x| x.as_f64()) {
        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(x);
    }
}

/// Reads a job's output as lines, holding at most [`MAX_LINE`] bytes of it:
/// a longer line is sent in pieces of `MAX_LINE`, and past [`MAX_PIECES`]
/// pieces the rest of it is dropped and a marker line says how many bytes
/// (a job printing a gigabyte without a newline costs the worker 64 KiB).
async fn read_lines<R: AsyncRead + Unpin>(r: R, is_err: bool, tx: mpsc::Sender<(bool, String)>) {
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_LINE);
    // Pieces of the current line sent so far, and bytes of it dropped.
    let mut pieces = 0usize;
    let mut dropped = 0u64;
    let send = |text: String| {
        let tx = tx.clone();
        async move { tx.send((is_err, text)).await.is_ok() }
    };
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(c) => c,
        };
        let (take, newline) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let mut part = &chunk[..take];
        if newline {
            part = &part[..part.len() - 1];
        }
        if pieces >= MAX_PIECES {
            dropped += part.len() as u64;
        } else {
            let room = MAX_LINE - buf.len();
            buf.extend_from_slice(&part[..part.len().min(room)]);
            let rest = part.len().saturating_sub(room);
            if buf.len() == MAX_LINE && (rest > 0 || !newline) {
                // A full piece of a line that goes on.
                let text = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                pieces += 1;
                if !send(text).await {
                    return;
                }
                if pieces >= MAX_PIECES {
                    dropped += rest as u64;
                } else {
                    buf.extend_from_slice(&part[part.len() - rest..]);
                }
            }
        }
        reader.consume(take);
        if newline {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            if !buf.is_empty() || pieces == 0 {
                let text = String::from_utf8_lossy(&buf).into_owned();
                if !send(text).await {
                    return;
                }
            }
            if dropped > 0 {
                let note = format!(
                    "[liandan: line cut after {} bytes; {dropped} more bytes dropped]",
                    MAX_LINE * MAX_PIECES
                );
                if !send(note).await {
                    return;
                }
            }
            buf.clear();
            pieces = 0;
            dropped = 0;
        }
    }
    // The output ended without a final newline.
    if !buf.is_empty() {
        let _ = send(String::from_utf8_lossy(&buf).into_owned()).await;
    }
    if dropped > 0 {
        let _ = send(format!(
            "[liandan: line cut after {} bytes; {dropped} more bytes dropped]",
            MAX_LINE * MAX_PIECES
        ))
        .await;
    }
}

/// A line from the worker itself for the job's stderr (numbered by the log sink).
fn stderr_notice(job: &str, attempt: u64, text: String) -> pb::Record {
    record(
        job,
        attempt,
        pb::record::Body::Log(pb::LogRecord {
            line: 0,
            stream: "stderr".into(),
            ts: now_secs(),
            text,
        }),
    )
}

/// The notice that metrics-file line `line` was too long.
fn too_long(job: &str, attempt: u64, line: u64) -> pb::Record {
    tracing::warn!(job, line, "metrics line over the limit");
    stderr_notice(
        job,
        attempt,
        format!("liandan-worker: metrics file line {line} is longer than {MAX_METRIC_LINE} bytes; skipped"),
    )
}

/// Reads complete new lines of the metrics file from `offset`.
struct MetricsTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    line: u64,
    /// Inside a line longer than [`MAX_METRIC_LINE`]: skipped to its newline.
    skipping: bool,
}

impl MetricsTail {
    async fn poll(
        &mut self,
        ctx: &WorkerCtx,
        job: &str,
        attempt: u64,
        last: &Mutex<Option<f64>>,
        name: Option<&str>,
    ) -> bool {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        // Never through a link the job planted in place of its metrics file.
        let path = self.path.clone();
        let Ok(Ok(f)) =
            tokio::task::spawn_blocking(move || crate::jail::open_job_path(&path)).await
        else {
            return false;
        };
        let mut f = tokio::fs::File::from_std(f);
        if f.seek(std::io::SeekFrom::Start(self.offset)).await.is_err() {
            return false;
        }
        // A bounded read per poll: the file can grow faster than it is read.
        let mut data = Vec::new();
        let mut bounded = f.take(4 * MAX_METRIC_LINE as u64);
        if bounded.read_to_end(&mut data).await.is_err() || data.is_empty() {
            return false;
        }
        self.offset += data.len() as u64;
        let mut recs = Vec::new();
        let mut data = &data[..];
        if self.skipping {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.skipping = false;
                    data = &data[i + 1..];
                }
                None => return true,
            }
        }
        self.partial.extend_from_slice(data);
        if !self.partial.contains(&b'\n') && self.partial.len() > MAX_METRIC_LINE {
            // A line this long is no metrics record: say so and skip to its end.
            self.line += 1;
            self.partial.clear();
            self.skipping = true;
            recs.push(too_long(job, attempt, self.line));
        }
        // Complete lines only; a partial last line waits for its newline.
        let complete = self
            .partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0);
        let buf: Vec<u8> = self.partial.drain(..complete).collect();
        // `buf` ends with a newline (or is empty): drop it before splitting.
        let body = buf.strip_suffix(b"\n").unwrap_or(&[]);
        for line in body.split(|b| *b == b'\n').filter(|_| !buf.is_empty()) {
            self.line += 1;
            if line.len() > MAX_METRIC_LINE {
                recs.push(too_long(job, attempt, self.line));
                continue;
            }
            let text = String::from_utf8_lossy(line).trim().to_string();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v @ serde_json::Value::Object(_)) => {
                    note_metric(&v, last, name);
                    let step = v.get("step").and_then(|s| s.as_i64());
                    recs.push(record(
                        job,
                        attempt,
                        pb::record::Body::Metric(pb::MetricReport {
                            step,
                            ts: now_secs(),
                            json: v.to_string(),
                        }),
                    ));
                }
                _ => {
                    // Reported where the user looks, not fatal.
                    tracing::warn!(job, line = self.line, "malformed metrics line");
                    let msg = format!(
                        "liandan-worker: metrics file line {} is not a JSON object; skipped: {}",
                        self.line,
                        text.chars().take(200).collect::<String>()
                    );
                    recs.push(stderr_notice(job, attempt, msg));
                }
            }
        }
        // Notices about malformed lines go through the log sink, which numbers lines.
        let (logs, metrics): (Vec<_>, Vec<_>) = recs
            .into_iter()
            .partition(|r| matches!(r.body, Some(pb::record::Body::Log(_))));
        if !metrics.is_empty() {
            ctx.spool.append(metrics).await;
        }
        for l in logs {
            if let Some(pb::record::Body::Log(l)) = l.body {
                ctx.notice(job, attempt, l.text).await;
            }
        }
        true
    }
}

/// Parses `step-<N>.ckpt`, the published checkpoint name.
pub fn checkpoint_step(name: &str) -> Option<i64> {
    // Steps count up from 0: a name the job chose with a sign is no checkpoint.
    let digits = name.strip_prefix("step-")?.strip_suffix(".ckpt")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checkpoint files of an attempt the worker will not read: refused for good
/// (a link, not a regular file), or busy for now (more than one link), told
/// once each.
#[derive(Default)]
struct Refused {
    never: std::collections::HashSet<i64>,
    busy_told: std::collections::HashSet<i64>,
}

async fn scan_checkpoints(
    ctx: &WorkerCtx,
    job: &str,
    attempt: u64,
    dir: &Path,
    last: &Mutex<Option<f64>>,
    refused: &mut Refused,
) {
    // The directory as the job left it: never through a link it planted.
    let d = dir.to_path_buf();
    let Ok(Ok(names)) = tokio::task::spawn_blocking(move || crate::jail::list_job_dir(&d)).await
    else {
        return;
    };
    let known = ctx
        .spool
        .uploads_known(job, attempt)
        .await
        .unwrap_or_default();
    for name in names {
        let Some(step) = checkpoint_step(&name) else {
            continue;
        };
        if known.contains(&step) || refused.never.contains(&step) {
            continue;
        }
        let (d, n) = (dir.to_path_buf(), name.clone());
        let hashed = tokio::task::spawn_blocking(move || {
            liandan_common::hash::hash_reader(crate::jail::open_job_file(&d, &n)?)
        })
        .await;
        let (hash, size) = match hashed {
            Ok(Ok(x)) => x,
            // Gone again, or (hard links) maybe only for now: look next time.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                if refused.busy_told.insert(step) {
                    tracing::warn!(job, attempt, file = %name, error = %e, "not reading a checkpoint with more than one link; looking again later");
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(job, attempt, file = %name, error = %e, "not a checkpoint the worker will read (a link or not a regular file); ignored");
                refused.never.insert(step);
                continue;
            }
            Err(_) => continue,
        };
        let path = dir.join(&name);
        let metric = *last.lock().unwrap_or_else(|p| p.into_inner());
        let entry = UploadEntry {
            job_id: job.into(),
            attempt,
            step,
            path: path.display().to_string(),
            size,
            blake3: hash,
            metric,
            done: false,
        };
        if ctx.spool.upload_insert(entry).await.is_ok() {
            tracing::info!(job, attempt, step, size, "checkpoint published");
            ctx.uploads.notify_one();
        }
    }
}

/// Where and how a job runs on this worker, from its sweep's spec.
struct Setup {
    workdir: Option<PathBuf>,
    program: Option<String>,
    env: Vec<(String, String)>,
}

/// Resolves the workdir, the program and `liandan.env`; an error is a setup
/// error (the next attempt would find the same), said with the path and worker.
fn setup(ctx: &WorkerCtx, spec: &SweepSpec) -> Result<Setup, String> {
    let workdir = resolve_workdir(ctx, spec)?;
    let program = resolve_program(ctx, spec.program.as_deref(), workdir.as_deref())?;
    let mut env = Vec::new();
    for (k, v) in &spec.liandan.env {
        let v = expand_envvars(v, &job_envvar).map_err(|e| format!("liandan.env.{k}: {e}"))?;
        env.push((k.clone(), v));
    }
    Ok(Setup {
        workdir,
        program,
        env,
    })
}

/// Everything needed to start an attempt.
pub struct Launch {
    pub assignment: pb::Assignment,
    pub spec: SweepSpec,
    pub dir: PathBuf,
    pub resume: Option<(PathBuf, i64)>,
}

/// Runs an attempt to its end and appends its exit record.
pub async fn run_attempt(
    ctx: Arc<WorkerCtx>,
    launch: Launch,
    mut stop: watch::Receiver<Option<StopReason>>,
) {
    let a = &launch.assignment;
    let job = a.job_id.clone();
    let attempt = a.attempt;
    let ckpt_dir = launch.dir.join("checkpoints");
    let metrics_path = launch.dir.join("metrics.jsonl");
    let params_path = launch.dir.join("params.json");
    let exit = |outcome: &str, code: i32, signal: i32, message: String| pb::JobExited {
        outcome: outcome.into(),
        exit_code: code,
        signal,
        message,
    };

    // Setup errors (a missing workdir or program) end the attempt before it
    // starts and are not retried: the next attempt would find the same.
    let Setup {
        workdir,
        program,
        env: job_env,
    } = match setup(&ctx, &launch.spec) {
        Ok(x) => x,
        Err(msg) => {
            finish(&ctx, &job, attempt, exit("setup_failed", -1, 0, msg)).await;
            return;
        }
    };
    let prepared = (|| -> Result<Vec<String>, String> {
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
    })();
    let argv = match prepared {
        Ok(v) => v,
        Err(msg) => {
            finish(&ctx, &job, attempt, exit("spawn_failed", -1, 0, msg)).await;
            return;
        }
    };

    // The checkpoint to resume from, lent to the job user in its own directory.
    let resume_path = match (&launch.resume, &ctx.job_user) {
        (Some((p, _)), Some(u)) => match u.lend(p, &launch.dir) {
            Ok(lent) => Some(lent),
            Err(e) => {
                let msg = format!("cannot lend {} to job_user {}: {e}", p.display(), u.name);
                finish(&ctx, &job, attempt, exit("spawn_failed", -1, 0, msg)).await;
                return;
            }
        },
        (Some((p, _)), None) => Some(p.clone()),
        (None, _) => None,
    };
    // Only now, with everything the worker puts there written, is the
    // attempt's directory handed to the job user.
    if let (Some(u), Some(job_dir)) = (&ctx.job_user, launch.dir.parent()) {
        if let Err(e) = u.give(job_dir, &launch.dir) {
            let msg = format!(
                "cannot hand {} to job_user {}: {e}",
                launch.dir.display(),
                u.name
            );
            finish(&ctx, &job, attempt, exit("spawn_failed", -1, 0, msg)).await;
            return;
        }
    }
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
        .env("LIANDAN_JOB_ID", &job)
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
    let pre =
        crate::jail::PreExec::new(cgroup.as_ref().map(|g| g.procs_fd()), ctx.job_user.as_ref());
    // SAFETY: PreExec::run makes only async-signal-safe system calls (write,
    // prctl, setgroups, setgid, setuid, capset) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || pre.run());
    }
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            finish(
                &ctx,
                &job,
                attempt,
                exit(
                    "spawn_failed",
                    -1,
                    0,
                    match &ctx.job_user {
                        Some(u) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
                            "cannot start {:?}: {e} (jobs run as job_user {}: it needs to read and run the program and enter its workdir)",
                            argv[0], u.name
                        ),
                        _ => format!("cannot start {:?}: {e}", argv[0]),
                    },
                ),
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
    tracing::info!(job, attempt, pid, argv = ?argv, "job started");

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

    let mut tail = MetricsTail {
        skipping: false,
        path: metrics_path,
        offset: 0,
        partial: Vec::new(),
        line: 0,
    };
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    // Checkpoint files refused (links, FIFOs): not looked at again.
    let mut refused = Refused::default();
    let grace = Duration::from_secs_f64(ctx.cfg.grace_period_secs);
    let mut reason: Option<StopReason> = *stop.borrow();
    let mut term_deadline: Option<tokio::time::Instant> = None;
    let mut killed_by_us = false;
    // Signals go to the job's process group and, with a cgroup, to every
    // process in it (those that left the group too).
    let signal = |sig: Signal| {
        let _ = killpg(Pid::from_raw(pid), sig);
        if let Some(g) = &cgroup {
            g.signal(sig);
        }
    };
    if reason.is_some() {
        signal(Signal::SIGTERM);
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
                        signal(Signal::SIGTERM);
                        term_deadline = Some(tokio::time::Instant::now() + grace);
                    }
                }
            }
            _ = async { match term_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                tracing::warn!(job, attempt, "grace period over: SIGKILL to its processes");
                signal(Signal::SIGKILL);
                killed_by_us = true;
                term_deadline = None;
            }
            _ = poll.tick() => {
                tail.poll(&ctx, &job, attempt, &last_metric, metric_name.as_deref()).await;
                scan_checkpoints(&ctx, &job, attempt, &ckpt_dir, &last_metric, &mut refused).await;
            }
        }
    };
    // Whatever the job left behind in its group or cgroup (grandchildren,
    // daemons it started) goes with it.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    if let Some(g) = cgroup {
        g.remove().await;
    }
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    // Everything the job wrote, a bounded read at a time.
    while tail
        .poll(&ctx, &job, attempt, &last_metric, metric_name.as_deref())
        .await
    {}
    ctx.unregister_notices(&job, attempt);
    let _ = sink_task.await;
    scan_checkpoints(&ctx, &job, attempt, &ckpt_dir, &last_metric, &mut refused).await;
    // Give published checkpoints a chance to reach the coordinator before the
    // exit record makes this attempt stale there.
    ctx.wait_uploads(&job, attempt, Duration::from_secs(60))
        .await;

    let (code, signal) = match &status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code().unwrap_or(-1), s.signal().unwrap_or(0))
        }
        Err(_) => (-1, 0),
    };
    let quick = started.elapsed() < Duration::from_secs(1);
    let outcome = match (reason, code, signal) {
        (Some(StopReason::Preempt), _, _) => "preempted",
        // The worker's disk filled up under the job: the worker's trouble, not
        // the job's (it is requeued without spending a retry).
        (None, c, s) if (c != 0 || s != 0) && enospc.load(std::sync::atomic::Ordering::SeqCst) => {
            "disk_full"
        }
        // argparse's (and getopt's) usage error, before any work was done.
        (None, 2, 0) if quick => "usage_error",
        (Some(StopReason::Cancel), _, _) | (Some(StopReason::Stale), _, _) => "cancelled",
        (None, 0, 0) => "succeeded",
        // SIGKILL that we did not send is what the kernel's OOM killer sends.
        (None, _, 9) if !killed_by_us => "oom_killed",
        (None, _, s) if s != 0 => "signalled",
        _ => "failed",
    };
    let message = match status {
        Ok(_) if outcome == "usage_error" => format!(
            "exit status 2 within a second of starting: a command-line usage error (see `liandan logs {job}`); every attempt would end the same, so none is retried"
        ),
        Ok(s) => format!("{s}"),
        Err(e) => format!("wait failed: {e}"),
    };
    finish(&ctx, &job, attempt, exit(outcome, code, signal, message)).await;
}

/// An attempt the worker could not even set up because its own disk is full
/// (ENOSPC creating the attempt's directory or files) ends `disk_full`, not
/// as the job's failure: the next attempt, elsewhere or later, can run.
fn worker_disk_full(outcome: &str, message: &str) -> bool {
    outcome == "spawn_failed"
        && (message.contains("(os error 28)") || message.contains("No space left on device"))
}

async fn finish(ctx: &WorkerCtx, job: &str, attempt: u64, mut exited: pb::JobExited) {
    if worker_disk_full(&exited.outcome, &exited.message) {
        exited.outcome = "disk_full".into();
    }
    tracing::info!(job, attempt, outcome = %exited.outcome, code = exited.exit_code, signal = exited.signal, message = %exited.message, "job ended");
    let mut recs = Vec::new();
    if matches!(exited.outcome.as_str(), "spawn_failed" | "setup_failed") {
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
                stream: "stderr".into(),
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
    crate::retention::write_outcome(&dir, &exited.outcome);
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
        assert!(worker_disk_full("spawn_failed", &msg), "{msg}");
        assert!(!worker_disk_full(
            "spawn_failed",
            "cannot start \"python9\": No such file or directory (os error 2)"
        ));
        assert!(
            !worker_disk_full("setup_failed", &msg),
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
