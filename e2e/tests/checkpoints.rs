//! Checkpoints end to end: a `liandan-train` job whose worker is SIGKILLed after
//! its first stored checkpoint resumes on another worker from that checkpoint
//! and ends bitwise equal to an uninterrupted run; a corrupted stored
//! checkpoint is detected and never used.

use liandan_e2e::{bin, eventually, Cluster, Opts};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const TRAIN_SPEC: &str = r#"
name: resume
method: grid
metric: {name: val_accuracy, goal: maximize}
parameters:
  steps: {value: 6000}
  checkpoint_every: {value: 500}
  log_every: {value: 250}
  width: {value: 48}
  dropout: {value: 0.1}
  threads: {value: 1}
liandan:
  trainer: true
  seeds: [5]
  retries: 0
"#;

fn job(c: &Cluster, sweep: &str) -> Value {
    c.cli_json(&["jobs", sweep, "-o", "json"])[0].clone()
}

fn checkpoints(c: &Cluster, job: &str) -> Vec<Value> {
    c.cli_json(&["checkpoints", job, "-o", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn strip_time(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("samples_per_sec");
    }
    v
}

/// The same training run by hand, uninterrupted: its metric lines.
fn reference_run(argv: &[String]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.jsonl");
    let out = std::process::Command::new(bin("liandan-train"))
        .args(argv)
        .env("LIANDAN_METRICS_FILE", &metrics)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| strip_time(serde_json::from_str(l).unwrap()))
        .collect()
}

fn args_of(c: &Cluster, path: &std::path::Path) -> Vec<String> {
    let v = c.cli_json(&["expand", path.to_str().unwrap(), "-o", "json"]);
    v["jobs"][0]["argv"].as_array().unwrap()[1..]
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_killed_workers_job_resumes_from_its_checkpoint_elsewhere_bitwise_equal() {
    assert!(
        liandan_e2e::has_bin("liandan-train"),
        "liandan-train is not built: run `make build` (it needs libtorch)"
    );
    let mut c = Cluster::start(
        1,
        Opts {
            lease_timeout_secs: 2.0,
            ..Opts::default()
        },
    );
    let p = c.write("resume.yaml", TRAIN_SPEC);
    let sweep = c.submit(&p);
    let id = eventually(Duration::from_secs(30), || {
        let j = job(&c, &sweep);
        let id = j["id"].as_str()?.to_string();
        (j["state"] == "running" && !checkpoints(&c, &id).is_empty()).then_some(id)
    })
    .expect("a checkpoint was stored while the job ran");
    c.workers[0].kill();
    let stored_step = checkpoints(&c, &id)
        .iter()
        .filter_map(|v| v["step"].as_i64())
        .max()
        .unwrap();
    c.add_worker(1);
    let st = c.wait_finished(&sweep, Duration::from_secs(120));
    assert_eq!(st["succeeded"], 1, "{st}");
    let j = job(&c, &sweep);
    assert_eq!(j["attempt"], 2, "{j}");

    // The second attempt started at the checkpoint's step, not at zero.
    let log = String::from_utf8_lossy(&c.cli(&["logs", &id, "--stderr"]).stdout).to_string();
    let resumed_at: i64 = log
        .lines()
        .find_map(|l| {
            l.split(" at step ")
                .nth(1)
                .and_then(|s| s.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("attempt 2 did not resume: {log}"));
    assert!(
        resumed_at >= 500 && resumed_at <= stored_step,
        "resumed at {resumed_at}, stored {stored_step}"
    );
    let m = c.cli_json(&["metrics", &id, "--attempt", "2", "-o", "json"]);
    let first_step = m[0]["step"].as_i64().unwrap();
    assert!(
        first_step > resumed_at,
        "first metric of attempt 2 at step {first_step}"
    );

    // Its metrics from the resume point on equal an uninterrupted run's, bit for bit.
    let reference = reference_run(&args_of(&c, &p));
    let attempt2: Vec<Value> = m
        .as_array()
        .unwrap()
        .iter()
        .map(|r| strip_time(r["values"].clone()))
        .collect();
    let tail: Vec<Value> = reference
        .iter()
        .filter(|v| v["step"].as_i64().unwrap_or(0) > resumed_at)
        .cloned()
        .collect();
    assert_eq!(attempt2, tail);
    assert_eq!(attempt2.last().unwrap()["final"], true);
    assert_eq!(
        j["final_metric"].as_f64(),
        reference.last().unwrap()["val_accuracy"].as_f64()
    );
}

#[test]
fn a_corrupted_stored_checkpoint_is_detected_and_not_used() {
    assert!(
        liandan_e2e::has_bin("liandan-train"),
        "liandan-train is not built: run `make build` (it needs libtorch)"
    );
    let mut c = Cluster::start(
        1,
        Opts {
            lease_timeout_secs: 2.0,
            ..Opts::default()
        },
    );
    let spec = TRAIN_SPEC.replace(
        "checkpoint_every: {value: 500}",
        "checkpoint_every: {value: 3000}",
    );
    let p = c.write("corrupt.yaml", &spec);
    let sweep = c.submit(&p);
    let id = eventually(Duration::from_secs(30), || {
        let j = job(&c, &sweep);
        let id = j["id"].as_str()?.to_string();
        (!checkpoints(&c, &id).is_empty()).then_some(id)
    })
    .expect("a checkpoint was stored");
    c.workers[0].kill();
    // Flip bytes in every stored checkpoint file of the job.
    let dir: PathBuf = c
        .dir
        .path()
        .join("coordinator")
        .join("checkpoints")
        .join(&id);
    for f in std::fs::read_dir(&dir).unwrap() {
        let p = f.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n / 2] ^= 0xff;
        b[n - 1] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let out = c.cli(&[
        "download",
        &id,
        "--file",
        c.dir.path().join("x.ckpt").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(74),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    assert!(
        checkpoints(&c, &id).is_empty(),
        "the corrupt checkpoint is forgotten"
    );
    assert!(c.counter("corrupt_checkpoints") >= 1);
    // The job reruns from scratch on another worker (nothing trustworthy to resume from).
    c.add_worker(1);
    let st = c.wait_finished(&sweep, Duration::from_secs(120));
    assert_eq!(st["succeeded"], 1, "{st}");
    let log = String::from_utf8_lossy(&c.cli(&["logs", &id, "--stderr"]).stdout).to_string();
    assert!(!log.contains("resumed from"), "{log}");
}

#[test]
fn sigterm_to_a_worker_preempts_its_job_with_a_fresh_checkpoint_and_it_resumes_elsewhere() {
    assert!(
        liandan_e2e::has_bin("liandan-train"),
        "liandan-train is not built: run `make build` (it needs libtorch)"
    );
    // A long lease: the job must move because of the drain, not because of a lease.
    let mut c = Cluster::start(
        1,
        Opts {
            lease_timeout_secs: 60.0,
            grace_period_secs: 10.0,
            ..Opts::default()
        },
    );
    let spec = TRAIN_SPEC
        .replace("steps: {value: 6000}", "steps: {value: 20000}")
        .replace(
            "checkpoint_every: {value: 500}",
            "checkpoint_every: {value: 0}",
        );
    let p = c.write("drain.yaml", &spec);
    let sweep = c.submit(&p);
    let id = eventually(Duration::from_secs(30), || {
        let j = job(&c, &sweep);
        let id = j["id"].as_str()?.to_string();
        let m = c.cli_json(&["metrics", &id, "-o", "json"]);
        (j["state"] == "running" && m.as_array().is_some_and(|a| !a.is_empty())).then_some(id)
    })
    .expect("the job is training");
    assert!(
        checkpoints(&c, &id).is_empty(),
        "no periodic checkpoints in this test"
    );
    let status = c.workers[0]
        .terminate(Duration::from_secs(60))
        .expect("worker exited");
    assert!(
        status.success(),
        "the worker drained and exited cleanly: {status:?}"
    );
    let j = job(&c, &sweep);
    assert_eq!(j["state"], "queued", "{j}");
    let attempts = c.query_i64("SELECT COUNT(*) FROM attempts WHERE state='preempted'");
    assert_eq!(attempts, 1, "the attempt is preempted, not failed");
    let ck = checkpoints(&c, &id);
    let step = ck
        .iter()
        .filter_map(|v| v["step"].as_i64())
        .max()
        .expect("the SIGTERM checkpoint was uploaded before the exit");
    assert!(step > 0 && step < 20000);
    c.add_worker(1);
    let st = c.wait_finished(&sweep, Duration::from_secs(120));
    assert_eq!(st["succeeded"], 1, "{st}");
    let j = job(&c, &sweep);
    assert_eq!(
        (j["attempt"].as_u64(), j["retries_used"].as_u64()),
        (Some(2), Some(0))
    );
    let log = String::from_utf8_lossy(&c.cli(&["logs", &id, "--stderr"]).stdout).to_string();
    assert!(
        log.contains(&format!("at step {step}")),
        "attempt 2 resumed from the drain checkpoint: {log}"
    );
}

#[test]
fn an_ordinary_python_script_sweeps_checkpoints_and_resumes_by_the_documented_convention() {
    // examples/train.py follows the README's conventions; run its sweep with
    // `${interpreter} ${program} ${args}`, then preempt a job mid-run.
    let mut c = Cluster::start(
        1,
        Opts {
            lease_timeout_secs: 30.0,
            grace_period_secs: 5.0,
            ..Opts::default()
        },
    );
    // The example as shipped: `liandan.workdir: examples`, relative to the worker's base_dir.
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-sweep.yaml"),
    )
    .unwrap()
    .replace(
        "steps:\n    value: 200",
        "steps:\n    value: 200\n  sleep:\n    value: 0.01",
    );
    let p = c.write("python.yaml", &spec);
    let sweep = c.submit(&p);
    let first = eventually(Duration::from_secs(20), || {
        let j = job(&c, &sweep);
        let id = j["id"].as_str()?.to_string();
        (j["state"] == "running" && !checkpoints(&c, &id).is_empty()).then_some(id)
    })
    .expect("a published checkpoint was uploaded");
    c.workers[0].terminate(Duration::from_secs(30));
    c.add_worker(1);
    let st = c.wait_finished(&sweep, Duration::from_secs(120));
    assert_eq!(st["succeeded"], 12, "{st}");
    let log = String::from_utf8_lossy(&c.cli(&["logs", &first, "--stderr"]).stdout).to_string();
    assert!(
        log.contains("resumed from step"),
        "the preempted job resumed from its checkpoint: {log}"
    );
    let r = c.cli_json(&["results", &sweep, "-o", "json"]);
    assert_eq!(r["trials"].as_array().unwrap().len(), 3);
    assert!(r["trials"].as_array().unwrap().iter().all(|t| t["n"] == 4));
}
