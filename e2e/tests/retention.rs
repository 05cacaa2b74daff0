//! Retention on the real binaries (issue #18): a worker keeps a job's
//! directory only while something in it is owed to the coordinator, or for
//! `keep_failed_days` after a failure, and `liandan workers` shows its disk.

use liandan_e2e::{eventually, Cluster, Opts};
use std::time::Duration;

/// Publishes a 1 MiB checkpoint, then succeeds unless `x` is 2.
const JOB: &str = r#"
import os, sys
d = os.environ["LIANDAN_CHECKPOINT_DIR"]
with open(os.path.join(d, ".tmp"), "wb") as f:
    f.write(os.urandom(1 << 20))
os.rename(os.path.join(d, ".tmp"), os.path.join(d, "step-1.ckpt"))
sys.exit(1 if sys.argv[-1].endswith("=2") else 0)
"#;

fn attempt_dirs(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for j in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for a in std::fs::read_dir(j.path()).into_iter().flatten().flatten() {
            out.push(format!(
                "{}/{}",
                j.file_name().to_string_lossy(),
                a.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_worker_removes_finished_job_directories_and_keeps_failed_ones() {
    let c = Cluster::start(
        1,
        Opts {
            worker_env: vec![("LIANDAN_KEEP_FAILED_DAYS".into(), "1".into())],
            ..Opts::default()
        },
    );
    let script = c.write("job.py", JOB);
    let spec = c.write(
        "sweep.yaml",
        &format!(
            "method: grid\ncommand: [python3, '{}', '${{args}}']\nparameters:\n  x: {{values: [0, 1, 2]}}\nliandan:\n  retries: 0\n",
            script.display()
        ),
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    assert_eq!(st["succeeded"], 2, "{st}");
    assert_eq!(st["failed"], 1, "{st}");
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    let failed = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["state"] == "failed")
        .and_then(|j| j["id"].as_str())
        .expect("the failed job")
        .to_string();
    // Every checkpoint reached the coordinator, so the succeeded jobs owe nothing.
    let root = c.dir.path().join("worker-0").join("jobs");
    let left = eventually(Duration::from_secs(20), || {
        let left = attempt_dirs(&root);
        (left == vec![format!("{failed}/1")]).then_some(left)
    });
    assert!(
        left.is_some(),
        "only the failed attempt's directory stays; found {:?}",
        attempt_dirs(&root)
    );
    let outcome = std::fs::read_to_string(root.join(&failed).join("1").join("outcome"))
        .expect("the outcome file");
    assert_eq!(outcome, "failed");
    // `liandan workers` shows what the worker keeps and what it has free.
    let disk = eventually(Duration::from_secs(20), || {
        let ws = c.cli_json(&["workers", "-o", "json"]);
        let d = ws[0]["disk"].clone();
        (d["attempt_dirs"] == 1).then_some(d)
    })
    .expect("the worker reports its disk");
    let bytes = disk["jobs_bytes"].as_u64().expect("jobs_bytes");
    assert!((1 << 20..4 << 20).contains(&bytes), "{disk}");
    assert!(disk["free_bytes"].as_u64().expect("free") > 0, "{disk}");
    let table = c.cli(&["workers"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("JOB DIRS") && text.contains("MiB"), "{text}");
}

#[test]
fn a_coordinator_collects_orphaned_checkpoint_files_at_start() {
    let mut c = Cluster::start(1, Opts::default());
    let script = c.write("job.py", JOB);
    let spec = c.write(
        "sweep.yaml",
        &format!(
            "method: grid\ncommand: [python3, '{}', '${{args}}']\nparameters:\n  x: {{value: 0}}\n",
            script.display()
        ),
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    assert_eq!(st["succeeded"], 1, "{st}");
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    let job = jobs[0]["id"].as_str().expect("job id").to_string();
    let stored = eventually(Duration::from_secs(20), || {
        let cs = c.cli_json(&["checkpoints", &job, "-o", "json"]);
        (cs.as_array()?.len() == 1).then_some(cs)
    })
    .expect("the checkpoint is stored");
    let root = c.dir.path().join("coordinator").join("checkpoints");
    let kept: Vec<_> = std::fs::read_dir(root.join(&job))
        .expect("the job's checkpoint dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1, "{stored}");
    // While it is down: files no row refers to (a crash between rename and
    // row, a replaced file), a directory of a job it never had, and a partial
    // upload of an attempt that is over.
    let orphans = [
        root.join(&job).join("1-0123456789abcdef.ckpt"),
        root.join("jb-0000000000000000")
            .join("3-0123456789abcdef.ckpt"),
        root.join(".partial")
            .join(format!("{job}-1-7-0123456789abcdef.part")),
    ];
    c.restart_coordinator_with(|_| {
        for o in &orphans {
            std::fs::create_dir_all(o.parent().expect("parent")).expect("mkdir");
            std::fs::write(o, vec![7u8; 4096]).expect("write");
        }
    });
    for o in &orphans {
        assert!(!o.exists(), "{} was not collected", o.display());
    }
    assert!(!root.join("jb-0000000000000000").exists());
    assert!(kept[0].exists(), "the stored checkpoint stays");
    let out_path = c.dir.path().join("got.ckpt");
    let out = c.cli(&[
        "download",
        &job,
        "--file",
        out_path.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&out_path).expect("downloaded").len(),
        1 << 20
    );
    assert!(c
        .coordinator
        .log_text()
        .contains("orphaned checkpoint data removed"));
}
