//! Tests of `liandan-train` as a program: reproducibility, resume after
//! SIGTERM and after SIGKILL (bitwise on CPU), the practitioner tools, the data
//! loaders and the error messages.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_liandan-train");

/// Metric lines without the wall-clock field (throughput is not deterministic).
fn metrics(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("metric line is JSON");
            if let Some(o) = v.as_object_mut() {
                o.remove("samples_per_sec");
            }
            v
        })
        .collect()
}

fn step(v: &Value) -> u64 {
    v["step"].as_u64().unwrap_or(0)
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ckpt")).unwrap();
        Run { dir }
    }
    fn metrics(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn cmd(&self, args: &[&str], metrics: &str, resume: Option<&Path>) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("LIANDAN_METRICS_FILE", self.metrics(metrics))
            .env("LIANDAN_CHECKPOINT_DIR", self.dir.path().join("ckpt"))
            .env_remove("LIANDAN_RESUME_FROM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(r) = resume {
            c.env("LIANDAN_RESUME_FROM", r);
        }
        c
    }
    fn run(&self, args: &[&str], metrics: &str) -> Vec<Value> {
        let out = self.cmd(args, metrics, None).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.metrics_of(metrics)
    }
    fn metrics_of(&self, name: &str) -> Vec<Value> {
        metrics(&self.metrics(name))
    }
}

const ARGS: &[&str] = &[
    "--steps=1500",
    "--log_every=10",
    "--checkpoint_every=100",
    "--width=128",
    "--dropout=0.1",
    "--threads=1",
    "--batch_size=32",
    "--schedule=cosine",
    "--warmup_steps=50",
];

#[test]
fn same_seed_is_bitwise_identical_and_different_seeds_differ() {
    let r = Run::new();
    let a = r.run(&[ARGS, &["--seed=1"]].concat(), "a.jsonl");
    let b = r.run(&[ARGS, &["--seed=1"]].concat(), "b.jsonl");
    let c = r.run(&[ARGS, &["--seed=2"]].concat(), "c.jsonl");
    assert!(a.len() > 100);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.last().unwrap()["final"], true);
}

#[test]
fn sigterm_then_resume_ends_bitwise_equal() {
    let r = Run::new();
    let full = r.run(&[ARGS, &["--seed=3"]].concat(), "full.jsonl");
    for f in std::fs::read_dir(r.dir.path().join("ckpt")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let mut child = r
        .cmd(&[ARGS, &["--seed=3"]].concat(), "part.jsonl", None)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.metrics_of("part.jsonl").last().map(step).unwrap_or(0) < 230 {
        assert!(Instant::now() < deadline, "training did not progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "SIGTERM exits 143 after its checkpoint"
    );
    let part = r.metrics_of("part.jsonl");
    // The stop step is the newest checkpoint (it may fall between log lines).
    let stopped = std::fs::read_dir(r.dir.path().join("ckpt"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .strip_suffix(".ckpt")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap();
    assert!(stopped >= 230);
    assert!(stopped < 1500, "it stopped early");
    let ckpt = r
        .dir
        .path()
        .join("ckpt")
        .join(format!("step-{stopped}.ckpt"));
    assert!(ckpt.exists(), "a checkpoint at the stop step {stopped}");
    let out = r
        .cmd(&[ARGS, &["--seed=3"]].concat(), "rest.jsonl", Some(&ckpt))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut joined = part;
    joined.extend(r.metrics_of("rest.jsonl"));
    assert_eq!(
        joined, full,
        "resumed run differs from the uninterrupted one"
    );
}

#[test]
fn sigkill_after_a_checkpoint_then_resume_ends_bitwise_equal_even_twice() {
    let r = Run::new();
    let full = r.run(&[ARGS, &["--seed=4"]].concat(), "full.jsonl");
    for f in std::fs::read_dir(r.dir.path().join("ckpt")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let mut resume: Option<PathBuf> = None;
    let mut kept: Vec<Value> = Vec::new();
    // Killed twice, resumed each time, then left to finish.
    for (round, at) in [(0, 300u64), (1, 700)] {
        let name = format!("run{round}.jsonl");
        let mut child = r
            .cmd(&[ARGS, &["--seed=4"]].concat(), &name, resume.as_deref())
            .spawn()
            .unwrap();
        let want = r.dir.path().join("ckpt").join(format!("step-{at}.ckpt"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !want.exists() {
            assert!(Instant::now() < deadline, "no checkpoint at {at}");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines after the checkpoint die with the attempt; the next one redoes them.
        kept.extend(r.metrics_of(&name).into_iter().filter(|v| step(v) <= at));
        resume = Some(want);
    }
    let out = r
        .cmd(
            &[ARGS, &["--seed=4"]].concat(),
            "last.jsonl",
            resume.as_deref(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kept.extend(r.metrics_of("last.jsonl"));
    assert_eq!(kept, full);
}

#[test]
fn resume_with_other_parameters_is_refused() {
    let r = Run::new();
    r.run(&["--steps=100", "--checkpoint_every=50"], "a.jsonl");
    let ckpt = r.dir.path().join("ckpt").join("step-50.ckpt");
    let out = r
        .cmd(&["--steps=100", "--lr=0.5"], "b.jsonl", Some(&ckpt))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different training parameters"));
}

#[test]
fn overfit_check_passes_on_a_healthy_model_and_flags_a_broken_one() {
    let ok = Command::new(BIN)
        .args(["overfit-check", "--threads=1"])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = Command::new(BIN)
        .args(["overfit-check", "--lr=0", "--threads=1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("something is wrong"));
}

#[test]
fn lr_range_test_suggests_a_rate_where_the_loss_falls() {
    let out = Command::new(BIN)
        .args([
            "lr-range",
            "--threads=1",
            "--range_steps=120",
            "--lr_min=1e-5",
            "--lr_max=10",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let suggested = lines.last().unwrap()["suggested_lr"].as_f64().unwrap();
    let curve: Vec<(f64, f64)> = lines
        .iter()
        .filter_map(|v| Some((v["lr"].as_f64()?, v["smoothed_loss"].as_f64()?)))
        .collect();
    let i = curve.iter().position(|(lr, _)| *lr >= suggested).unwrap();
    assert!(i >= 2 && i + 2 < curve.len());
    // The loss is falling around the suggestion and is below where it started.
    assert!(
        curve[i + 2].1 < curve[i - 2].1,
        "loss not falling at {suggested}"
    );
    assert!(curve[i].1 < curve[0].1);
}

fn write_idx(dir: &Path, n: usize) {
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, 12, 12] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    for i in 0..n {
        let class = (i % 2) as u8;
        // Class 0: bright left half; class 1: bright right half.
        for _ in 0..12 {
            for c in 0..12 {
                img.push(if (c < 6) == (class == 0) { 200 } else { 10 });
            }
        }
        lab.push(class);
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), lab).unwrap();
}

#[test]
fn idx_and_csv_files_load_and_train() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), 64);
    let data = format!("--data={}", dir.path().display());
    let out = Command::new(BIN)
        .args([
            "--task=idx",
            &data,
            "--model=cnn",
            "--epochs=3",
            "--threads=1",
            "--batch_size=16",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(last["val_accuracy"].as_f64().unwrap() > 0.9, "{last}");

    let csv = dir.path().join("d.csv");
    let mut text = String::from("a,b,label\n");
    for i in 0..200 {
        let x = (i as f64 / 100.0) - 1.0;
        text.push_str(&format!("{x},{},{}\n", -x, (x > 0.0) as i32));
    }
    std::fs::write(&csv, text).unwrap();
    let out = Command::new(BIN)
        .args([
            "--task=csv",
            &format!("--data={}", csv.display()),
            "--epochs=20",
            "--threads=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(last["val_accuracy"].as_f64().unwrap() > 0.9, "{last}");
}

#[test]
fn malformed_data_and_unknown_parameters_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "1,2,0\n3,four,1\n").unwrap();
    let out = Command::new(BIN)
        .args(["--task=csv", &format!("--data={}", csv.display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv") && err.contains("line 2") && err.contains("four"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("train-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0],
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--task=idx", &format!("--data={}", dir.path().display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("train-images-idx3-ubyte"));

    let out = Command::new(BIN)
        .arg("--learning_rate=0.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown parameter `learning_rate`"));
}

#[test]
fn doctor_reports_libtorch_and_cuda() {
    let out = Command::new(BIN)
        .arg("doctor")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libtorch 2.11.0"), "{text}");
    assert!(text.contains("cuda available:"));
}

#[test]
fn a_new_checkpoint_directory_is_created_and_an_unusable_one_is_refused_before_training() {
    let r = Run::new();
    let fresh = r.dir.path().join("new/nested/ckpt");
    let out = Command::new(BIN)
        .args([
            "--steps=20",
            "--checkpoint_every=10",
            "--width=8",
            "--threads=1",
        ])
        .env("LIANDAN_METRICS_FILE", r.metrics("m.jsonl"))
        .env("LIANDAN_CHECKPOINT_DIR", &fresh)
        .env_remove("LIANDAN_RESUME_FROM")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fresh.join("step-20.ckpt").exists(),
        "checkpoints written into the new directory"
    );
    // A path through a regular file cannot be a directory: refused at once, naming it.
    let file = r.dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let t0 = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["--steps=100000", "--width=8", "--threads=1"])
        .env("LIANDAN_METRICS_FILE", r.metrics("m2.jsonl"))
        .env("LIANDAN_CHECKPOINT_DIR", file.join("ckpt"))
        .env_remove("LIANDAN_RESUME_FROM")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LIANDAN_CHECKPOINT_DIR") && err.contains("plain-file"),
        "{err}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "refused before training"
    );
}
