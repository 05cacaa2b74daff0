//! What must hold after a chaos run, read from the coordinator's database
//! and disk: every job done once, results equal to their records, logs whole,
//! checkpoints intact, no lease blamed on a worker nothing happened to, no
//! process left behind.

use super::schedule::Schedule;
use super::{rows, worker_id, Report, Window, LINES};
use crate::{bin, Cluster};
use std::path::Path;

/// Every check, into the run's report.
pub(super) fn all(s: Schedule) -> Report {
    let Schedule {
        c,
        mut report,
        windows,
        train,
        ..
    } = s;
    counts(&c, &mut report);
    let db = rusqlite::Connection::open(c.dir.path().join("coordinator").join("coordinator.db"))
        .expect("db");
    report.integrity = db
        .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| e.to_string());
    metric_duplicates(&db, &mut report);
    checkpoints(
        &db,
        &c.dir.path().join("coordinator").join("checkpoints"),
        &mut report,
    );
    results_are_records(&db, &mut report);
    cut_cancels(&db, &mut report);
    blameless_losses(&db, &c, &windows, &mut report);
    log_spans(&db, &mut report);
    command_lines(&db, &mut report);
    if train {
        trainer_matches_reference(&db, c.dir.path(), &mut report);
    }
    leftover_processes(c.dir.path(), &mut report);
    report
}

/// How many jobs, attempts, results and refusals there were.
fn counts(c: &Cluster, report: &mut Report) {
    const NOT_DOOMED: &str =
        "sweep_id NOT IN (SELECT id FROM sweeps WHERE name LIKE 'chaos-doomed-%')";
    report.jobs = c.query_i64(&format!("SELECT COUNT(*) FROM jobs WHERE {NOT_DOOMED}"));
    report.succeeded = c.query_i64(&format!(
        "SELECT COUNT(*) FROM jobs WHERE state='succeeded' AND {NOT_DOOMED}"
    ));
    report.failed = c.query_i64("SELECT COUNT(*) FROM jobs WHERE state='failed'");
    report.results_recorded_max_per_job =
        c.query_i64("SELECT COALESCE(MAX(result_recorded), 0) FROM jobs");
    report.attempts = c.query_i64("SELECT COUNT(*) FROM attempts");
    report.max_attempts_per_job = c.query_i64("SELECT COALESCE(MAX(attempt), 0) FROM jobs");
    report.results_missing =
        c.query_i64("SELECT COUNT(*) FROM jobs WHERE state='succeeded' AND result_recorded != 1");
    report.refused_stale = c.counter("refused_stale_writes");
}

/// No metric record stored twice for an attempt (records carry a time, so
/// two equal lines are a duplicate delivery, not two reports).
fn metric_duplicates(db: &rusqlite::Connection, report: &mut Report) {
    let dup: Vec<(String, i64, i64)> = rows(db, "SELECT job_id, attempt, COUNT(*) FROM metrics GROUP BY job_id, attempt, json HAVING COUNT(*) > 1", []);
    for (job, attempt, n) in dup {
        report.metric_duplicates.push(format!(
            "{job} attempt {attempt}: a metric record stored {n} times"
        ));
    }
}

/// Every stored checkpoint is on disk at its recorded size and hash, and
/// every file on disk has its row.
fn checkpoints(db: &rusqlite::Connection, root: &Path, report: &mut Report) {
    let stored: Vec<(String, i64, i64, String, String)> = rows(
        db,
        "SELECT job_id, step, size, blake3, file FROM checkpoints",
        [],
    );
    let mut known = std::collections::HashSet::new();
    for (job, step, size, hash, file) in stored {
        let on_disk = std::fs::read(root.join(&file));
        match &on_disk {
            Ok(bytes) if bytes.len() as i64 == size => {
                let got = blake3::hash(bytes).to_hex().to_string();
                if got != hash {
                    report.checkpoint_problems.push(format!(
                        "{job} step {step}: {file} hashes to {got}, recorded {hash}"
                    ));
                }
            }
            other => report.checkpoint_problems.push(format!(
                "{job} step {step}: {file} is {:?} bytes, recorded {size}",
                other.as_ref().map(|b| b.len()).map_err(|e| e.to_string())
            )),
        }
        known.insert(file);
    }
    for d in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let dname = d.file_name().to_string_lossy().to_string();
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let rel = format!("{dname}/{}", f.file_name().to_string_lossy());
            if !known.contains(&rel) {
                report
                    .orphan_files
                    .push(format!("{rel}: a file without a row"));
            }
        }
    }
}

/// Every succeeded job's result is its last metric record, and its best
/// the best of its records (the trainer sweeps maximise val_accuracy).
fn results_are_records(db: &rusqlite::Connection, report: &mut Report) {
    let jobs: Vec<(String, Option<f64>, Option<f64>)> = rows(db, "SELECT j.id, j.final_metric, j.best_metric FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-train-%' AND j.state = 'succeeded'", []);
    for (job, fin, best) in jobs {
        let values: Vec<f64> = rows::<(String,)>(
            db,
            "SELECT json FROM metrics WHERE job_id=?1 ORDER BY id",
            [&job],
        )
        .into_iter()
        .filter_map(|(j,)| {
            serde_json::from_str::<serde_json::Value>(&j)
                .ok()?
                .get("val_accuracy")?
                .as_f64()
                .filter(|x| x.is_finite())
        })
        .collect();
        let last = values.last().copied();
        let top = values.iter().copied().reduce(f64::max);
        if fin != last || best != top {
            report.metric_mismatches.push(format!(
                "{job}: result {fin:?} best {best:?}, records say last {last:?} best {top:?}"
            ));
        }
    }
}

/// A cut-off cancel either took (its jobs cancelled, or already done) or
/// did not (they ran to the end); nothing is left running or failed.
fn cut_cancels(db: &rusqlite::Connection, report: &mut Report) {
    let bad: Vec<(String, String, String)> = rows(db, "SELECT s.name, j.id, j.state FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-doomed-%' AND j.state NOT IN ('cancelled', 'succeeded')", []);
    for (sweep, job, state) in bad {
        report
            .cancel_problems
            .push(format!("{sweep} {job}: {state}"));
    }
}

/// A lease expires only for a worker something happened to: killed, frozen
/// or cut off (until a lease and a reconnection after). Not for a worker
/// that was fine while the coordinator restarted or stalled.
fn blameless_losses(
    db: &rusqlite::Connection,
    c: &Cluster,
    windows: &[Window],
    report: &mut Report,
) {
    // A worker keeps its id across restarts (it lives in its state dir).
    let ids: Vec<Option<String>> = c.workers.iter().map(worker_id).collect();
    let slack = c.opts.lease_timeout_secs + c.opts.restart_grace_secs + 2.0;
    let lost: Vec<(String, i64, String, f64)> = rows(db, "SELECT job_id, attempt, worker_id, ended_at FROM attempts WHERE message LIKE '%lease expired%'", []);
    for (job, attempt, worker, at) in lost {
        let index = ids
            .iter()
            .position(|id| id.as_deref() == Some(worker.as_str()));
        let excused = windows
            .iter()
            .any(|w| Some(w.worker) == index && w.from - 1.0 <= at && at <= w.to + slack);
        if !excused {
            report.blameless_losses.push(format!(
                "{job} attempt {attempt} on {worker} (worker {index:?}): lease expired at {at:.1} with no fault on that worker"
            ));
        }
    }
}

/// Every attempt's log: lines 1..=max, each once.
fn log_spans(db: &rusqlite::Connection, report: &mut Report) {
    let spans: Vec<(String, i64, i64, i64, i64)> = rows(
        db,
        "SELECT job_id, attempt, COUNT(*), MIN(line), MAX(line) FROM logs GROUP BY job_id, attempt",
        [],
    );
    for (job, attempt, n, lo, hi) in spans {
        if lo != 1 || n != hi {
            report.log_problems.push(format!(
                "{job} attempt {attempt}: {n} lines spanning {lo}..{hi}"
            ));
        }
    }
}

/// Command jobs: the final attempt printed every line, once, in order.
fn command_lines(db: &rusqlite::Connection, report: &mut Report) {
    let jobs: Vec<(String, i64)> = rows(db, "SELECT j.id, j.attempt FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-lines-%'", []);
    for (job, attempt) in jobs {
        let lines: Vec<String> = rows::<(String,)>(
            db,
            "SELECT text FROM logs WHERE job_id=?1 AND attempt=?2 AND stream=0 ORDER BY line",
            rusqlite::params![job, attempt],
        )
        .into_iter()
        .map(|(t,)| t)
        .collect();
        let want: Vec<String> = (1..=LINES).map(|i| format!("line {i}")).collect();
        if lines != want {
            report.log_problems.push(format!(
                "{job} attempt {attempt}: {} of {LINES} lines as printed",
                lines.iter().zip(&want).filter(|(a, b)| a == b).count()
            ));
        }
    }
}

/// Trainer jobs: the final summary equals an uninterrupted reference run, bit for bit.
fn trainer_matches_reference(db: &rusqlite::Connection, dir: &Path, report: &mut Report) {
    let jobs: Vec<(String, String, i64)> = rows(db, "SELECT j.id, t.params_json, j.seed FROM jobs j JOIN trials t ON t.id = j.trial_id JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-train-%'", []);
    let mut refs: std::collections::HashMap<(String, i64), String> =
        std::collections::HashMap::new();
    for (job, params, seed) in jobs {
        let got: Option<String> = db
            .query_row("SELECT json FROM metrics WHERE job_id=?1 AND json LIKE '%\"final\":true%' ORDER BY id DESC LIMIT 1", [&job], |r| r.get(0))
            .ok();
        let want = refs
            .entry((params.clone(), seed))
            .or_insert_with(|| reference(dir, &params, seed))
            .clone();
        if got.as_deref() != Some(want.as_str()) {
            report
                .trainer_mismatches
                .push(format!("{job}: {got:?} != reference {want}"));
        }
    }
}

/// No job process outlives its worker.
fn leftover_processes(dir: &Path, report: &mut Report) {
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if pid.chars().all(|ch| ch.is_ascii_digit()) && cwd_under(&pid, dir) {
                let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                report.leftover_processes.push(format!("pid {pid}: {cmd}"));
            }
        }
    }
}

fn cwd_under(pid: &str, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.starts_with(dir))
        .unwrap_or(false)
}

/// The final summary line of an uninterrupted run with these parameters.
fn reference(dir: &Path, params_json: &str, seed: i64) -> String {
    let params: serde_json::Value = serde_json::from_str(params_json).unwrap_or_default();
    let mut args: Vec<String> = params
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("--{k}={}", liandan_common::sweep::command::format_value(v)))
                .collect()
        })
        .unwrap_or_default();
    args.push(format!("--seed={seed}"));
    let metrics = dir.join(format!(
        "ref-{}.jsonl",
        liandan_common::ids::short_hash(&[params_json.as_bytes(), &seed.to_le_bytes()], 6)
    ));
    let out = std::process::Command::new(bin("liandan-train"))
        .args(&args)
        .env("LIANDAN_METRICS_FILE", &metrics)
        .output()
        .expect("reference run");
    assert!(
        out.status.success(),
        "reference run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("\"final\":true"))
        .unwrap_or_default();
    // Same canonical JSON as the coordinator stores (it re-serialises the worker's parse).
    serde_json::from_str::<serde_json::Value>(last)
        .map(|v| v.to_string())
        .unwrap_or_default()
}
