//! End-to-end tests with the real binaries on loopback.

use liandan_e2e::{eventually, Cluster, Opts};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::Duration;

fn jobs(c: &Cluster, sweep: &str) -> Vec<Value> {
    c.cli_json(&["jobs", sweep, "-o", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (up to 20 s) until a job of the sweep runs, and returns it.
fn running_job(c: &Cluster, sweep: &str) -> Value {
    eventually(Duration::from_secs(20), || {
        jobs(c, sweep).into_iter().find(|j| j["state"] == "running")
    })
    .expect("a job of the sweep running")
}

fn log_lines(c: &Cluster, job: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["logs", job];
    args.extend_from_slice(extra);
    let out = c.cli(&args);
    assert!(
        out.status.success(),
        "logs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_services() {
    let c = Cluster::start(0, Opts::default());
    let channel = tonic::transport::Endpoint::from_shared(c.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liandan.v1.UserService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "liandan.v1.UserService",
        "liandan.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[test]
fn bad_config_and_flags_exit_78_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "lease_timeout_secs = \"soon\"\n").unwrap();
    let out = std::process::Command::new(liandan_e2e::bin("liandan-coordinator"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lease_timeout_secs") && err.lines().count() == 1,
        "{err}"
    );

    let out = std::process::Command::new(liandan_e2e::bin("liandan-coordinator"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`listen`"));

    let out = std::process::Command::new(liandan_e2e::bin("liandan-worker"))
        .args(["--slots", "many"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--slots"));

    std::fs::write(&cfg, "slotz = 3\n").unwrap();
    let out = std::process::Command::new(liandan_e2e::bin("liandan-worker"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key `slotz`"));

    let out = std::process::Command::new(liandan_e2e::bin("liandan-coordinator"))
        .args(["--print-config", "--listen", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("listen = \"127.0.0.1:9\""));
}

#[test]
fn a_sweep_runs_to_completion_and_results_match_job_metrics() {
    let c = Cluster::start(2, Opts::default());
    // The score comes from the seed and the parameter: deterministic, varies across seeds.
    let script = r#"
name: scored
program: /bin/sh
command: ["/bin/sh", "-c", "echo hello; echo \"{\\\"step\\\": 1, \\\"score\\\": $((LIANDAN_SEED * 10 + $0))}\" >> \"$LIANDAN_METRICS_FILE\"", "${args_no_hyphens}"]
method: grid
metric: {name: score, goal: maximize}
parameters:
  s: {values: [1, 2, 3]}
liandan:
  seeds: [0, 1, 2]
"#;
    // `$0` is the first argument after the script: `s=<value>`; strip the name.
    let script = script.replace("$0", "${0#s=}");
    let p = c.write("scored.yaml", &script);
    let sweep = c.submit(&p);
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    assert_eq!(st["succeeded"], 9, "{st}");
    // Resubmitting the same file creates nothing.
    let again = c.cli(&["submit", p.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists"));
    assert_eq!(jobs(&c, &sweep).len(), 9);

    let results = c.cli_json(&["results", &sweep, "-o", "json"]);
    let trials = results["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 3);
    // Rank 1 is s=3 (maximize); its mean over seeds 0,1,2 is 3 + 10.
    assert_eq!(trials[0]["params"]["s"], 3);
    assert_eq!(trials[0]["mean"].as_f64().unwrap(), 13.0);
    for t in trials {
        let seeds = t["seeds"].as_array().unwrap();
        assert_eq!(seeds.len(), 3);
        for s in seeds {
            let want = s["seed"].as_i64().unwrap() * 10 + t["params"]["s"].as_i64().unwrap();
            assert_eq!(s["value"].as_f64().unwrap(), want as f64);
        }
    }
    // Every job's final metric agrees with its metric records.
    for j in jobs(&c, &sweep) {
        let m = c.cli_json(&["metrics", j["id"].as_str().unwrap(), "-o", "json"]);
        assert_eq!(m[0]["values"]["score"].as_f64(), j["final_metric"].as_f64());
    }
    // Seeds explain part of the variance; both shares are reported.
    let share = &results["variance_share"];
    assert!(share["seeds"].as_f64().unwrap() > 0.9, "{share}");
    let table = String::from_utf8_lossy(&c.cli(&["results", &sweep]).stdout).to_string();
    assert!(table.contains("variance explained"), "{table}");
}

#[test]
fn hostile_parameter_values_reach_the_program_as_literal_arguments() {
    let c = Cluster::start(1, Opts::default());
    let marker = c.dir.path().join("pwned");
    let spec = format!(
        "name: hostile\nprogram: /bin/echo\ncommand: [\"/bin/echo\", \"${{args}}\"]\nmethod: grid\nparameters:\n  evil: {{value: \"; touch {} #\"}}\n  sub: {{value: \"$(touch {})\"}}\n",
        marker.display(),
        marker.display()
    );
    let p = c.write("hostile.yaml", &spec);
    let sweep = c.submit(&p);
    c.wait_finished(&sweep, Duration::from_secs(30));
    let j = jobs(&c, &sweep);
    let lines = log_lines(&c, j[0]["id"].as_str().unwrap(), &[]);
    assert_eq!(
        lines,
        vec![format!(
            "--evil=; touch {} # --sub=$(touch {})",
            marker.display(),
            marker.display()
        )]
    );
    assert!(
        !marker.exists(),
        "a parameter value was interpreted by a shell"
    );
}

#[test]
fn a_hundred_thousand_lines_arrive_complete_in_order_once_even_across_a_coordinator_crash() {
    let mut c = Cluster::start(
        1,
        Opts {
            restart_grace_secs: 10.0,
            ..Opts::default()
        },
    );
    let spec = r#"
name: lines
program: /bin/sh
command: ["/bin/sh", "-c", "i=1; while [ $i -le 100000 ]; do echo \"line $i\"; if [ $((i % 20000)) -eq 0 ]; then sleep 0.3; fi; i=$((i+1)); done"]
method: grid
parameters:
  x: {value: 1}
"#;
    let p = c.write("lines.yaml", spec);
    let sweep = c.submit(&p);
    // Wait until some lines are stored, then kill -9 the coordinator mid-stream.
    let job = jobs(&c, &sweep)[0]["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), || {
        (c.query_i64("SELECT COUNT(*) FROM logs") > 10_000).then_some(())
    })
    .expect("lines started to arrive");
    c.restart_coordinator();
    let st = c.wait_finished(&sweep, Duration::from_secs(120));
    assert_eq!(st["succeeded"], 1, "{st}");
    let lines = log_lines(&c, &job, &[]);
    assert_eq!(lines.len(), 100_000, "lines lost or duplicated");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("line {}", i + 1));
    }
    // One attempt: the coordinator restart did not cost the job its run.
    let j = &jobs(&c, &sweep)[0];
    assert_eq!(j["attempt"], 1, "{j}");
    let tail = log_lines(&c, &job, &["--tail", "3"]);
    assert_eq!(tail, vec!["line 99998", "line 99999", "line 100000"]);
}

#[test]
fn coordinator_killed_mid_sweep_every_job_finishes_exactly_once() {
    let mut c = Cluster::start(
        2,
        Opts {
            restart_grace_secs: 10.0,
            ..Opts::default()
        },
    );
    let spec = r#"
name: crashy
program: /bin/sh
command: ["/bin/sh", "-c", "sleep 0.3; echo done $0", "${args_no_hyphens}"]
method: grid
parameters:
  k: {values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}
liandan:
  seeds: 2
"#;
    let p = c.write("crashy.yaml", spec);
    let sweep = c.submit(&p);
    eventually(Duration::from_secs(30), || {
        let s = c.cli_json(&["status", &sweep, "-o", "json"]);
        (s[0]["succeeded"].as_u64().unwrap_or(0) >= 4).then_some(())
    })
    .expect("some jobs finished");
    c.restart_coordinator();
    let st = c.wait_finished(&sweep, Duration::from_secs(120));
    assert_eq!(st["succeeded"], 20, "{st}");
    assert_eq!(
        c.query_i64("SELECT COUNT(*) FROM jobs WHERE result_recorded = 1"),
        20
    );
    for j in jobs(&c, &sweep) {
        let id = j["id"].as_str().unwrap();
        let lines = log_lines(&c, id, &[]);
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        assert!(lines[0].starts_with("done k="));
    }
}

#[test]
fn a_silent_worker_loses_its_lease_and_late_writes_are_refused() {
    let mut c = Cluster::start(
        1,
        Opts {
            lease_timeout_secs: 2.0,
            ..Opts::default()
        },
    );
    let spec = r#"
name: lease
program: /bin/sh
command: ["/bin/sh", "-c", "echo start; sleep 4; echo end"]
method: grid
parameters:
  x: {value: 1}
liandan:
  retries: 0
"#;
    let p = c.write("lease.yaml", spec);
    let sweep = c.submit(&p);
    let job = running_job(&c, &sweep);
    let first_worker = job["worker_id"].as_str().unwrap().to_string();
    // The worker stops heartbeating (its job keeps running in its own process group).
    c.workers[0].signal(Signal::SIGSTOP);
    c.add_worker(1);
    // After the lease timeout the job is requeued on the other worker as attempt 2.
    let moved = eventually(Duration::from_secs(20), || {
        jobs(&c, &sweep)
            .into_iter()
            .find(|j| j["attempt"] == 2 && j["state"] == "running")
    })
    .expect("requeued");
    assert_ne!(moved["worker_id"].as_str().unwrap(), first_worker);
    // The old worker wakes up and sends what attempt 1 wrote meanwhile: refused.
    c.workers[0].signal(Signal::SIGCONT);
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    assert_eq!(st["succeeded"], 1, "{st}");
    eventually(Duration::from_secs(20), || {
        (c.counter("refused_stale_writes") > 0).then_some(())
    })
    .expect("stale writes were counted");
    let j = &jobs(&c, &sweep)[0];
    assert_eq!(j["attempt"], 2);
    assert_eq!(
        log_lines(&c, j["id"].as_str().unwrap(), &[]),
        vec!["start", "end"]
    );
    // Attempt 1 kept only what it wrote before it went silent.
    let a1 = log_lines(&c, j["id"].as_str().unwrap(), &["--attempt", "1"]);
    assert!(!a1.contains(&"end".to_string()), "{a1:?}");
    assert_eq!(
        c.query_i64("SELECT COUNT(*) FROM attempts WHERE state='lost'"),
        1
    );
}

#[test]
fn a_killed_worker_has_its_job_requeued_and_finished_elsewhere() {
    let mut c = Cluster::start(
        1,
        Opts {
            lease_timeout_secs: 2.0,
            ..Opts::default()
        },
    );
    let spec = r#"
name: killed
program: /bin/sh
command: ["/bin/sh", "-c", "echo attempt $LIANDAN_ATTEMPT; sleep 2; echo ok"]
method: grid
parameters:
  x: {value: 1}
liandan:
  retries: 0
"#;
    let p = c.write("killed.yaml", spec);
    let sweep = c.submit(&p);
    running_job(&c, &sweep);
    c.workers[0].kill();
    c.add_worker(1);
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    assert_eq!(st["succeeded"], 1, "{st}");
    let j = &jobs(&c, &sweep)[0];
    assert_eq!(
        j["attempt"], 2,
        "a lost worker does not spend a retry (retries: 0)"
    );
    assert_eq!(
        log_lines(&c, j["id"].as_str().unwrap(), &[]),
        vec!["attempt 2", "ok"]
    );
}

#[test]
fn a_restarted_worker_reports_its_attempt_interrupted_and_it_reruns() {
    let mut c = Cluster::start(
        1,
        Opts {
            lease_timeout_secs: 30.0,
            ..Opts::default()
        },
    );
    let spec = r#"
name: restarted
program: /bin/sh
command: ["/bin/sh", "-c", "echo attempt $LIANDAN_ATTEMPT; sleep 2"]
method: grid
parameters:
  x: {value: 1}
liandan:
  retries: 0
"#;
    let p = c.write("restarted.yaml", spec);
    let sweep = c.submit(&p);
    running_job(&c, &sweep);
    std::thread::sleep(Duration::from_millis(300));
    c.workers[0].kill();
    // Same state dir: the journal says the attempt was running; it is reported
    // interrupted at once (no lease wait) and does not spend a retry.
    c.add_worker(0);
    let st = c.wait_finished(&sweep, Duration::from_secs(30));
    assert_eq!(st["succeeded"], 1, "{st}");
    assert_eq!(
        c.query_i64("SELECT COUNT(*) FROM attempts WHERE state='interrupted'"),
        1
    );
}

#[test]
fn cancel_kills_a_job_that_ignores_sigterm_and_its_grandchildren() {
    let c = Cluster::start(
        1,
        Opts {
            grace_period_secs: 1.0,
            ..Opts::default()
        },
    );
    let pids = c.dir.path().join("pids");
    let spec = format!(
        r#"
name: stubborn
program: /bin/sh
command: ["/bin/sh", "-c", "trap '' TERM; sleep 1000 & echo $! > {p}.grandchild; echo $$ > {p}.child; echo ready; while true; do sleep 0.1; done"]
method: grid
parameters:
  x: {{value: 1}}
"#,
        p = pids.display()
    );
    let p = c.write("stubborn.yaml", &spec);
    let sweep = c.submit(&p);
    let job = eventually(Duration::from_secs(20), || {
        let j = jobs(&c, &sweep)
            .into_iter()
            .find(|j| j["state"] == "running")?;
        pids.with_extension("grandchild").exists().then_some(j)
    })
    .expect("job running");
    let read_pid = |ext: &str| -> i32 {
        std::fs::read_to_string(pids.with_extension(ext))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (child, grandchild) = (read_pid("child"), read_pid("grandchild"));
    let out = c.cli(&["cancel", job["id"].as_str().unwrap()]);
    assert!(out.status.success());
    let st = c.wait_finished(&sweep, Duration::from_secs(20));
    assert_eq!(st["cancelled"], 1, "{st}");
    let alive = |pid: i32| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    assert!(!alive(child), "the job survived");
    assert!(!alive(grandchild), "the grandchild survived");
    let a = c.query_i64("SELECT COUNT(*) FROM attempts WHERE state='cancelled' AND signal=9");
    assert_eq!(a, 1, "it took SIGKILL after the grace period");
}

#[test]
fn validate_and_expand_work_offline_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "program: train.py\nmethod: grid\nparameters:\n  lr: {values: [0.1, 0.01]}\nliandan:\n  seeds: 3\n").unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "program: train.py\nmethod: grid\nparameters:\n  lr:\n    min: 0.1\n    max: oops\n",
    )
    .unwrap();
    let cli = liandan_e2e::bin("liandan");
    let out = std::process::Command::new(&cli)
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = std::process::Command::new(&cli)
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parameters.lr.max (line 6)") && err.contains("expected a number"),
        "{err}"
    );
    let out = std::process::Command::new(&cli)
        .args(["expand", "-o", "json"])
        .arg(&good)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 6);
    assert_eq!(
        jobs[0]["argv"],
        serde_json::json!(["/usr/bin/env", "python", "train.py", "--lr=0.1", "--seed=0"])
    );
    let out = std::process::Command::new(&cli)
        .args(["--coordinator", "http://127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the coordinator"));
}

#[test]
fn a_full_spool_blocks_the_job_instead_of_dropping_lines() {
    // 1 MiB spool; the coordinator stops answering while the job prints ~4 MB.
    let opts = Opts {
        lease_timeout_secs: 60.0,
        worker_env: vec![("LIANDAN_SPOOL_MAX_BYTES".into(), "1048576".into())],
        ..Opts::default()
    };
    let c = Cluster::start(1, opts);
    let pidfile = c.dir.path().join("job.pid");
    let spec = format!(
        r#"
name: spool
program: /bin/sh
command: ["/bin/sh", "-c", "echo $$ > {}; sleep 1; seq -f 'line %08g ..................................................' 1 60000"]
method: grid
parameters:
  x: {{value: 1}}
"#,
        pidfile.display()
    );
    let p = c.write("spool.yaml", &spec);
    let sweep = c.submit(&p);
    eventually(Duration::from_secs(20), || pidfile.exists().then_some(())).expect("job started");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    c.coordinator.signal(Signal::SIGSTOP);
    // Printing 60,000 lines takes well under a second; with the spool full and
    // nothing acknowledged, the job must still be blocked on its output.
    std::thread::sleep(Duration::from_secs(4));
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    c.coordinator.signal(Signal::SIGCONT);
    assert!(alive, "the job finished while its output could not be stored: lines were dropped or the spool was unbounded");
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    assert_eq!(st["succeeded"], 1, "{st}");
    let j = &jobs(&c, &sweep)[0];
    let lines = log_lines(&c, j["id"].as_str().unwrap(), &[]);
    assert_eq!(lines.len(), 60_000);
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("line {:08} ", i + 1)), "{l}");
    }
}

#[test]
fn pause_holds_new_jobs_and_resume_releases_them_and_drain_stops_new_work() {
    let c = Cluster::start(
        1,
        Opts {
            slots: 1,
            ..Opts::default()
        },
    );
    let spec = "name: pausable\nprogram: /bin/sh\ncommand: [\"/bin/sh\", \"-c\", \"sleep 0.5; echo done\"]\nmethod: grid\nparameters:\n  k: {values: [1, 2, 3, 4]}\n";
    let p = c.write("pausable.yaml", spec);
    let sweep = c.submit(&p);
    assert!(c.cli(&["pause", &sweep]).status.success());
    // Whatever was running finishes; nothing new starts while paused.
    std::thread::sleep(Duration::from_millis(1500));
    let st = c.cli_json(&["status", &sweep, "-o", "json"]);
    assert_eq!(st[0]["state"], "paused");
    let started = st[0]["succeeded"].as_u64().unwrap() + st[0]["running"].as_u64().unwrap();
    assert!(started <= 1, "{st}");
    std::thread::sleep(Duration::from_millis(1000));
    let later = c.cli_json(&["status", &sweep, "-o", "json"]);
    assert_eq!(later[0]["queued"].as_u64().unwrap() + started, 4, "{later}");
    assert!(c.cli(&["resume", &sweep]).status.success());
    let done = c.wait_finished(&sweep, Duration::from_secs(30));
    assert_eq!(done["succeeded"], 4);

    // Drain: the worker finishes what it runs and takes nothing new.
    let p2 = c.write("drained.yaml", &spec.replace("pausable", "drained"));
    let sweep2 = c.submit(&p2);
    let w = eventually(Duration::from_secs(10), || {
        let ws = c.cli_json(&["workers", "-o", "json"]);
        ws.as_array()
            .and_then(|a| a.first().cloned())
            .filter(|w| !w["running_jobs"].as_array().unwrap().is_empty())
    })
    .expect("a job running");
    let out = c.cli(&["drain", w["id"].as_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(2000));
    let st = c.cli_json(&["status", &sweep2, "-o", "json"]);
    assert_eq!(
        (
            st[0]["succeeded"].as_u64(),
            st[0]["running"].as_u64(),
            st[0]["queued"].as_u64()
        ),
        (Some(1), Some(0), Some(3)),
        "{st}"
    );
    let ws = c.cli_json(&["workers", "-o", "json"]);
    assert_eq!(ws[0]["draining"], true);
    // Lifting the drain lets the rest run.
    assert!(c
        .cli(&["drain", w["id"].as_str().unwrap(), "--undo"])
        .status
        .success());
    let done = c.wait_finished(&sweep2, Duration::from_secs(30));
    assert_eq!(done["succeeded"], 4, "{done}");
}

#[test]
fn two_workers_cannot_share_a_state_dir() {
    let c = Cluster::start(1, Opts::default());
    eventually(Duration::from_secs(10), || {
        (c.cli_json(&["workers", "-o", "json"])
            .as_array()
            .map(|a| a.len())
            == Some(1))
        .then_some(())
    })
    .expect("first worker up");
    let out = std::process::Command::new(liandan_e2e::bin("liandan-worker"))
        .args(["--coordinator", &c.url(), "--gpus", "none", "--state-dir"])
        .arg(c.dir.path().join("worker-0"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another liandan-worker") && err.contains("--state-dir"),
        "{err}"
    );
}
