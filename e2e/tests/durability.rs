//! Nothing acknowledged is lost (issue #18), on the real binaries: each test
//! makes the coordinator acknowledge something, takes the coordinator down
//! the hard way, and checks that what was acknowledged is still there.

use liandan_e2e::{eventually, Cluster, Opts};
use serde_json::Value;
use std::time::Duration;

/// Writes one metric (then [`gated_job`] waits).
const METRIC: &str = r#"
import json, os, sys, time
with open(os.environ["LIANDAN_METRICS_FILE"], "a") as f:
    f.write(json.dumps({"step": 1, "score": 0.777}) + "\n")
    f.flush()
"#;

/// Submits a one-job sweep running `script` (Python), which then waits until
/// the returned gate file exists (at most 120 s, so a failed test leaves no
/// process behind for long).
fn gated_job(c: &Cluster, script: &str, metric: &str) -> (String, std::path::PathBuf) {
    let wait = "\nimport os as _os, sys as _sys, time as _time\n_d = _time.time() + 120\nwhile not _os.path.exists(_sys.argv[1]) and _time.time() < _d:\n    _time.sleep(0.05)\n";
    let path = c.write("job.py", &format!("{script}{wait}"));
    let gate = c.dir.path().join("gate");
    let spec = c.write(
        "sweep.yaml",
        &format!(
            "method: grid\n{metric}command: [python3, '{}', '{}']\nparameters:\n  a: {{value: 1}}\n",
            path.display(),
            gate.display()
        ),
    );
    (c.submit(&spec), gate)
}

#[test]
fn a_metric_acknowledged_before_a_coordinator_crash_is_the_jobs_result_after_it() {
    let mut c = Cluster::start(
        1,
        Opts {
            // The worker reconnects within the restart grace; nothing is lost.
            restart_grace_secs: 10.0,
            ..Opts::default()
        },
    );
    let (sweep, gate) = gated_job(&c, METRIC, "metric: {name: score, goal: maximize}\n");
    let job = eventually(Duration::from_secs(20), || {
        let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
        let id = jobs[0]["id"].as_str()?.to_string();
        let m = c.cli_json(&["metrics", &id, "-o", "json"]);
        (m.as_array()?.len() == 1).then_some(id)
    })
    .expect("the metric was acknowledged and stored");
    // The job's row on disk still says nothing of the metric; SIGKILL now.
    c.restart_coordinator();
    std::fs::write(&gate, "").unwrap();
    let st = c.wait_finished(&sweep, Duration::from_secs(40));
    assert_eq!(st["succeeded"], 1, "{st}");
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    assert_eq!(jobs[0]["id"], Value::String(job.clone()));
    assert_eq!(jobs[0]["final_metric"].as_f64(), Some(0.777), "{}", jobs[0]);
    let r = c.cli_json(&["results", &sweep, "-o", "json"]);
    assert_eq!(r["trials"][0]["n"], 1, "{r}");
    assert_eq!(r["trials"][0]["mean"].as_f64(), Some(0.777), "{r}");
}

/// Publishes one 64 MiB checkpoint (then [`gated_job`] waits).
const CHECKPOINT: &str = r#"
import os, sys, time
d = os.environ["LIANDAN_CHECKPOINT_DIR"]
tmp = os.path.join(d, ".step-1.tmp")
with open(tmp, "wb") as f:
    f.write(os.urandom(64 << 20))
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, os.path.join(d, "step-1.ckpt"))
"#;

#[test]
fn a_download_cut_off_midway_leaves_the_checkpoint_stored() {
    use liandan_proto::v1 as pb;
    let c = Cluster::start(1, Opts::default());
    let (sweep, gate) = gated_job(&c, CHECKPOINT, "");
    let job = eventually(Duration::from_secs(30), || {
        let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
        let id = jobs[0]["id"].as_str()?.to_string();
        let cs = c.cli_json(&["checkpoints", &id, "-o", "json"]);
        (cs.as_array()?.len() == 1).then_some(id)
    })
    .expect("the checkpoint was uploaded");
    // A client that reads the first chunk and goes away (Ctrl-C, a dropped link).
    let rt = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..3 {
        rt.block_on(async {
            let mut user = pb::user_service_client::UserServiceClient::connect(c.url())
                .await
                .unwrap();
            let mut stream = user
                .download_checkpoint(pb::DownloadCheckpointRequest {
                    job_id: job.clone(),
                    step: -1,
                    offset: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let first = stream.message().await.unwrap().expect("a first chunk");
            assert!(!first.data.is_empty());
            drop(stream);
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let cs = c.cli_json(&["checkpoints", &job, "-o", "json"]);
    assert_eq!(
        cs.as_array().unwrap().len(),
        1,
        "a cut-off reader is no verdict on the file: {cs}\n{}",
        c.coordinator.log_text()
    );
    assert!(
        !c.coordinator.log_text().contains("corrupt"),
        "{}",
        c.coordinator.log_text()
    );
    // And a whole download still verifies.
    let out_path = c.dir.path().join("got.ckpt");
    let out = c.cli(&["download", &job, "--file", out_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&out_path).unwrap().len(), 64 << 20);
    std::fs::write(&gate, "").unwrap();
    let st = c.wait_finished(&sweep, Duration::from_secs(30));
    assert_eq!(st["succeeded"], 1, "{st}");
}

#[test]
fn one_coordinator_per_data_dir_and_a_stop_is_bounded_with_workers_connected() {
    let mut c = Cluster::start(1, Opts::default());
    // A job keeps the worker's stream busy while the coordinator stops.
    let spec = c.write(
        "sweep.yaml",
        "method: grid\ncommand: [/bin/sleep, '30']\nparameters:\n  a: {value: 1}\n",
    );
    let sweep = c.submit(&spec);
    eventually(Duration::from_secs(20), || {
        let s = c.cli_json(&["status", &sweep, "-o", "json"]);
        (s[0]["running"] == 1).then_some(())
    })
    .expect("the job runs");
    // A second coordinator on the same data directory is refused, naming the first.
    let mut second = std::process::Command::new(liandan_e2e::bin("liandan-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(c.dir.path().join("coordinator"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let code = eventually(Duration::from_secs(10), || second.try_wait().ok().flatten());
    if code.is_none() {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        code.and_then(|s| s.code()),
        Some(78),
        "a second coordinator ran: {err}"
    );
    assert!(
        err.contains(&format!(
            "in use by another process (pid {})",
            c.coordinator.pid()
        )),
        "{err}"
    );
    // SIGTERM with a worker connected: gone within seconds, not when the worker leaves.
    let t0 = std::time::Instant::now();
    let status = c
        .coordinator
        .terminate(Duration::from_secs(30))
        .expect("exited");
    let took = t0.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(8), "the stop took {took:?}");
    // The worker reconnects to the next coordinator and its job carries on.
    c.restart_coordinator();
    let s = c.cli_json(&["status", &sweep, "-o", "json"]);
    assert_eq!(s[0]["running"], 1, "{s}");
    assert_eq!(s[0]["failed"], 0, "{s}");
}

/// A client that goes away mid-submit (Ctrl-C during a big `submit`): the
/// handler is dropped, possibly after its batch committed and before the
/// assignments went out. Whatever was decided must reach the worker: no job
/// may stay `running` on a worker that does not run it.
#[test]
fn a_submit_cut_off_mid_rpc_leaves_no_job_running_nowhere() {
    let c = Cluster::start(1, Opts::default());
    let values: Vec<String> = (0..50_000).map(|i| i.to_string()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let spec_of = |name: &str| {
        format!(
            "name: {name}\nmethod: grid\ncommand: [sleep, '30']\nparameters:\n  x: {{values: [{}]}}\n",
            values.join(", ")
        )
    };
    // How long a whole submit takes here; the first cut lands in its last
    // part, where the batch is committing and the assignments are about to go
    // out. The cut time then adapts, so that on a busy or an idle machine the
    // cuts keep landing after the request arrived and before its answer: one
    // answered moves the next cut earlier, one that left no sweep (cut before
    // the request was taken) moves it later.
    let t0 = std::time::Instant::now();
    let probe = c.write("probe.yaml", &spec_of("probe"));
    c.submit(&probe);
    let whole = t0.elapsed().as_millis() as u64;
    assert!(c.cli(&["cancel", "probe"]).status.success());
    let mut ms = whole * 85 / 100;
    let (mut landed, mut tries) = (0, Vec::new());
    for k in 0..14 {
        let name = format!("cut{k}");
        let answered = liandan_e2e::cut_submit(&rt, &c.url(), spec_of(&name), ms);
        // Let the sweep settle, then hand the slots to the next one.
        std::thread::sleep(Duration::from_millis(1500));
        let created = c.cli(&["status", &name]).status.success();
        tries.push((ms, answered, created));
        let lost = eventually(Duration::from_secs(10), || {
            let l = c.running_not_held();
            l.is_empty().then_some(())
        });
        assert!(
            lost.is_some(),
            "after a submit cut off at {ms} ms, jobs run nowhere: {:?}\n{}",
            c.running_not_held(),
            c.unfinished_jobs()
                .lines()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
        if created {
            let _ = c.cli(&["cancel", &name]);
        }
        match (answered, created) {
            (true, _) => ms = ms * 3 / 4,
            (false, false) => ms = ms * 5 / 4 + 10,
            (false, true) => {
                landed += 1;
                if landed == 4 {
                    break;
                }
            }
        }
    }
    assert!(
        landed > 0,
        "no submit was cut off after it was taken; the test proves nothing \
         (probe {whole} ms; tries as (cut ms, answered, created): {tries:?})"
    );
}
