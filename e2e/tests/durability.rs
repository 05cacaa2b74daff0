//! Nothing acknowledged is lost (issue #18), on the real binaries: each test
//! makes the coordinator acknowledge something, takes the coordinator down
//! the hard way, and checks that what was acknowledged is still there.

use liandan_e2e::{eventually, Cluster, Opts};
use serde_json::Value;
use std::time::Duration;

/// Writes one metric, then waits for a file before exiting 0.
const METRIC_THEN_WAIT: &str = r#"
import json, os, sys, time
with open(os.environ["LIANDAN_METRICS_FILE"], "a") as f:
    f.write(json.dumps({"step": 1, "score": 0.777}) + "\n")
    f.flush()
gate = sys.argv[1]
while not os.path.exists(gate):
    time.sleep(0.05)
"#;

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
    let script = c.write("metric.py", METRIC_THEN_WAIT);
    let gate = c.dir.path().join("gate");
    let spec = c.write(
        "sweep.yaml",
        &format!(
            "method: grid\nmetric: {{name: score, goal: maximize}}\ncommand: [python3, '{}', '{}']\nparameters:\n  a: {{value: 1}}\n",
            script.display(),
            gate.display()
        ),
    );
    let sweep = c.submit(&spec);
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
