//! W&B sweep files and unmodified scripts on real workers: an argparse script
//! that refuses unknown arguments runs from a W&B file whose `liandan:`
//! section holds only `workdir`, `env` and `metric_pattern`; a `seed`
//! parameter with values is the seed axis `results` aggregates over; random
//! search without run_cap keeps proposing until it is cancelled.

use liandan_e2e::{eventually, Cluster, Opts};
use serde_json::Value;
use std::time::Duration;

/// A training script as people write them for W&B: argparse (unknown
/// arguments are an error, exit 2), a data file read from the working
/// directory, a setting from the environment, metrics only printed.
const ARGPARSE_SCRIPT: &str = r#"
import argparse, os, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, required=True)
p.add_argument("--batch_size", type=int, default=32)
p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
p.add_argument("--epochs", type=int, default=3)
args = p.parse_args()
with open("data.csv") as f:
    rows = [float(line.split(",")[1]) for line in f.read().split("\n")[1:] if line]
scale = float(os.environ["DATA_SCALE"])
target = sum(rows) / len(rows) * scale
w = 0.0
for epoch in range(args.epochs):
    bonus = 0.5 if args.optimizer == "adam" else 1.0
    w += (target - w) * min(1.0, args.lr * args.batch_size / 32 / bonus)
    print(f"epoch {epoch} loss: {(target - w) ** 2:.6f}", flush=True)
print("done", file=sys.stderr)
"#;

const ARGPARSE_SWEEP: &str = r#"
program: train.py
method: grid
metric:
  name: loss
  goal: minimize
parameters:
  optimizer:
    values: [sgd, adam]
  lr:
    values: [0.1, 0.5]
  epochs:
    value: 3
liandan:
  workdir: WORKDIR
  env:
    DATA_SCALE: "2"
  metric_pattern: 'loss: (?P<loss>[0-9.]+)'
"#;

/// A project directory with `train.py` in it, as a user's checkout would be.
fn project(c: &Cluster, script: &str) -> std::path::PathBuf {
    let work = c.dir.path().join("project");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("train.py"), script).unwrap();
    work
}

/// `liandan submit FILE -o json`, which must succeed.
fn submit_json(c: &Cluster, spec: &std::path::Path) -> Value {
    let out = c.cli(&["submit", spec.to_str().unwrap(), "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn results(c: &Cluster, sweep: &str) -> Value {
    c.cli_json(&["results", sweep, "-o", "json"])
}

#[test]
fn an_unmodified_argparse_script_runs_from_a_wandb_file() {
    let c = Cluster::start(2, Opts::default());
    let work = project(&c, ARGPARSE_SCRIPT);
    std::fs::write(work.join("data.csv"), "x,y\n1,0.5\n2,1.5\n").unwrap();
    let spec = c.write(
        "sweep.yaml",
        &ARGPARSE_SWEEP.replace("WORKDIR", &work.display().to_string()),
    );
    // W&B's command line, nothing added: no --seed the script would refuse;
    // names sorted, the last (optimizer) varying fastest.
    let e = c.cli_json(&["expand", spec.to_str().unwrap(), "-o", "json"]);
    let argv: Vec<&str> = e["jobs"][0]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        argv[2..],
        ["train.py", "--epochs=3", "--lr=0.1", "--optimizer=sgd"]
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(120));
    assert_eq!(st["succeeded"], 4, "{st}\n{}", c.unfinished_jobs());
    assert_eq!(st["failed"], 0, "{st}");
    // Metrics come from metric_pattern: the last printed loss is the result.
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    for j in jobs.as_array().unwrap() {
        assert!(j["final_metric"].as_f64().is_some(), "{j}");
        let m = c.cli_json(&["metrics", j["id"].as_str().unwrap(), "-o", "json"]);
        assert_eq!(m.as_array().unwrap().len(), 3, "one record per epoch: {m}");
    }
    let r = results(&c, &sweep);
    let trials = r["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4, "{r}");
    let means: Vec<f64> = trials.iter().map(|t| t["mean"].as_f64().unwrap()).collect();
    assert!(
        means.windows(2).all(|w| w[0] <= w[1]),
        "ranked by loss: {means:?}"
    );
    // adam with lr 0.5 reaches the target (loss 0) first.
    assert_eq!(trials[0]["params"]["optimizer"], "adam", "{r}");
    assert_eq!(trials[0]["params"]["lr"], 0.5, "{r}");
}

#[test]
fn a_missing_workdir_fails_at_once_and_spends_no_retry() {
    let c = Cluster::start(1, Opts::default());
    let spec = c.write(
        "sweep.yaml",
        "program: train.py\nmethod: grid\nparameters:\n  lr: {values: [0.1]}\nliandan:\n  workdir: /nonexistent/liandan-test\n  retries: 3\n",
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(30));
    assert_eq!(st["failed"], 1, "{st}");
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    let j = &jobs[0];
    assert_eq!(j["attempt"], 1, "no retry was spent: {j}");
    let out = c.cli(&["logs", j["id"].as_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("/nonexistent/liandan-test") && log.contains("does not exist on worker"),
        "{log}"
    );
}

#[test]
fn a_usage_error_fails_the_job_without_burning_its_retries() {
    let c = Cluster::start(1, Opts::default());
    let work = project(
        &c,
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', type=float)\np.parse_args()\n",
    );
    let spec = c.write(
        "sweep.yaml",
        &format!(
            "program: train.py\nmethod: grid\nparameters:\n  lr: {{values: [0.1]}}\n  unknown: {{value: 1}}\nliandan:\n  workdir: {}\n  retries: 3\n",
            work.display()
        ),
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(30));
    assert_eq!(st["failed"], 1, "{st}");
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    assert_eq!(jobs[0]["attempt"], 1, "{}", jobs[0]);
    let out = c.cli(&["logs", jobs[0]["id"].as_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("unrecognized arguments: --unknown=1"), "{log}");
}

/// A seeded script: the value depends on lr and, a little, on the seed.
const SEEDED_SCRIPT: &str = r#"
import argparse
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float)
p.add_argument("--seed", type=int)
a = p.parse_args()
print(f"score={1.0 - abs(a.lr - 0.1) + (a.seed % 7) * 0.001}")
"#;

#[test]
fn a_seed_parameter_with_values_is_what_results_aggregate_over() {
    let c = Cluster::start(2, Opts::default());
    let work = project(&c, SEEDED_SCRIPT);
    let text = format!(
        "program: train.py\nmethod: grid\nmetric: {{name: score, goal: maximize}}\nparameters:\n  lr: {{values: [0.1, 0.3]}}\n  seed: {{values: [1111, 2222, 3333]}}\nliandan:\n  workdir: {}\n  metric_pattern: 'score=(?P<score>[0-9.]+)'\n",
        work.display()
    );
    let spec = c.write("sweep.yaml", &text);
    let v = c.cli(&["validate", spec.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&v.stderr);
    assert!(
        said.contains("parameters.seed: 3 values used as the seed axis; liandan.seed_axis: false keeps it an ordinary parameter"),
        "{said}"
    );
    let sub = submit_json(&c, &spec);
    assert_eq!(sub["trials"], 2, "{sub}");
    assert_eq!(sub["jobs"], 6, "{sub}");
    assert_eq!(sub["created"], true, "{sub}");
    let sweep = sub["sweep_id"].as_str().unwrap().to_string();
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    assert_eq!(st["succeeded"], 6, "{st}");
    let r = results(&c, &sweep);
    let trials = r["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2, "{r}");
    for t in trials {
        assert_eq!(t["n"], 3, "{t}");
        let seeds: Vec<i64> = t["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["seed"].as_i64().unwrap())
            .collect();
        assert_eq!(seeds, [1111, 2222, 3333], "{t}");
        assert!(
            t["params"].get("seed").is_none(),
            "seed is the axis, not a parameter: {t}"
        );
        assert!(t["std"].as_f64().unwrap() > 0.0, "the seeds spread: {t}");
    }
    assert_eq!(trials[0]["params"]["lr"], 0.1);
}

#[test]
fn random_search_without_run_cap_keeps_proposing_until_cancelled() {
    let c = Cluster::start(1, Opts::default());
    let work = project(&c, SEEDED_SCRIPT);
    let text = format!(
        "program: train.py\nmethod: random\nmetric: {{name: score, goal: maximize}}\nparameters:\n  lr: {{distribution: log_uniform_values, min: 0.001, max: 1.0}}\nliandan:\n  workdir: {}\n  seeds: [5]\n  metric_pattern: 'score=(?P<score>[0-9.]+)'\n",
        work.display()
    );
    let spec = c.write("sweep.yaml", &text);
    let sub = submit_json(&c, &spec);
    assert_eq!(sub["unbounded"], true, "{sub}");
    let sweep = sub["sweep_id"].as_str().unwrap().to_string();
    let status = || c.cli_json(&["status", &sweep, "-o", "json"])[0].clone();
    // Two slots: more trials than slots means proposals keep coming as jobs end.
    let st = eventually(Duration::from_secs(60), || {
        let s = status();
        (s["succeeded"].as_u64()? >= 6).then_some(s)
    })
    .unwrap_or_else(|| panic!("trials did not keep coming: {}", status()));
    assert_eq!(st["unbounded"], true, "{st}");
    assert_eq!(st["state"], "running", "{st}");
    let table = String::from_utf8_lossy(&c.cli(&["status"]).stdout).to_string();
    assert!(table.contains("random (unbounded)"), "{table}");
    let out = c.cli(&["cancel", &sweep]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = eventually(Duration::from_secs(30), || {
        let s = status();
        (s["running"] == 0 && s["queued"] == 0).then_some(s)
    })
    .expect("the cancel stopped the search");
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["unbounded"], false, "{done}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status()["trials"],
        done["trials"],
        "no trial after the cancel"
    );
    // Every trial drew a different learning rate within its bounds.
    let r = results(&c, &sweep);
    let lrs: Vec<f64> = r["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["params"]["lr"].as_f64().unwrap())
        .collect();
    assert!(lrs.iter().all(|x| (0.001..=1.0).contains(x)), "{lrs:?}");
}
