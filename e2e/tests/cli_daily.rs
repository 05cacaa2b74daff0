//! The CLI for daily use (#20): what a user sees when things go wrong.

use liandan_e2e::{bin, Cluster, Opts};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `liandan wait` rides out a coordinator restart (it used to exit 69 at
/// the first one), names the failed job with how it ended and the command
/// to see why, and exits 1. Then the finished sweep cannot be paused or
/// cancelled (that relabelled finished work), and a sweep whose every job
/// failed is `failed`, not `finished`.
#[test]
fn wait_rides_out_a_restart_and_names_failures_and_finished_sweeps_keep_their_history() {
    let mut c = Cluster::start(
        1,
        Opts {
            slots: 3,
            ..Opts::default()
        },
    );
    let spec = c.write(
        "mixed.yaml",
        "name: mixed\nmethod: grid\ncommand: [sh, -c, 'sleep 3; case \"$LIANDAN_PARAMS\" in *3*) echo boom >&2; exit 3;; esac']\nparameters:\n  x: {values: [1, 2, 3]}\nliandan:\n  retries: 0\n",
    );
    let sweep = c.submit(&spec);
    let err_path = c.dir.path().join("wait.err");
    let mut wait = Command::new(bin("liandan"))
        .args(["wait", &sweep])
        .env("LIANDAN_COORDINATOR", c.url())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("file"))
        .spawn()
        .expect("wait");
    std::thread::sleep(Duration::from_millis(700));
    c.restart_coordinator_with(|_| std::thread::sleep(Duration::from_secs(2)));
    let status =
        liandan_e2e::eventually(Duration::from_secs(60), || wait.try_wait().ok().flatten());
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        let _ = wait.kill();
        panic!("wait did not end: {err}");
    };
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the coordinator cannot be reached"), "{err}");
    assert!(err.contains("the coordinator is back"), "{err}");
    assert!(err.contains("2 succeeded, 1 failed"), "{err}");
    let jobs = c.cli_json(&["jobs", &sweep, "--state", "failed", "-o", "json"]);
    let failed = jobs[0]["id"].as_str().expect("a failed job").to_string();
    // The failed job's row says where it ran and how it ended.
    assert!(
        jobs[0]["worker_id"]
            .as_str()
            .is_some_and(|w| w.starts_with("wk-")),
        "{jobs}"
    );
    assert!(
        jobs[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("failed, exit 3")),
        "{jobs}"
    );
    let table = c.cli(&["jobs", &sweep, "-o", "wide"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("REASON")),
        "{table}"
    );
    assert!(table.contains("failed, exit 3"), "{table}");
    assert!(err.contains(&format!("failed: {failed} attempt ")), "{err}");
    assert!(
        err.contains(&format!("see why: `liandan logs {failed} --stderr`")),
        "{err}"
    );
    // `describe` puts it all in one place, by a short id.
    let out = c.cli(&["describe", &failed[..10]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        format!("job       {failed}"),
        ", 0 retries used)".to_string(),
        "command   sh -c sleep 3;".to_string(),
        "attempts:".to_string(),
        "exit status: 3".to_string(),
        "err boom".to_string(),
        format!("`liandan retry {sweep} --job {failed}`"),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    let js = c.cli_json(&["describe", &failed, "-o", "json"]);
    assert_eq!(
        js["attempts"][js["attempts"]
            .as_array()
            .map_or(0, |a| a.len().saturating_sub(1))]["exit_code"],
        3,
        "{js}"
    );
    assert_eq!(
        js["attempts"][js["attempts"]
            .as_array()
            .map_or(0, |a| a.len().saturating_sub(1))]["state"],
        "failed",
        "{js}"
    );

    for (verb, word) in [("pause", "pause"), ("cancel", "cancel")] {
        let out = c.cli(&[verb, &sweep]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{verb}: {e}");
        assert!(
            e.contains(&format!(
                "is finished (2 succeeded, 1 failed): there is nothing left to {word}"
            )),
            "{e}"
        );
    }
    let st = c.cli_json(&["status", &sweep, "-o", "json"]);
    assert_eq!(st[0]["state"], "finished", "{st}");

    let all_fail = c.write(
        "bad.yaml",
        "name: bad\nmethod: grid\ncommand: [sh, -c, 'exit 1']\nparameters:\n  x: {values: [1, 2]}\nliandan:\n  retries: 0\n",
    );
    let bad = c.submit(&all_fail);
    let st = c.wait_finished(&bad, Duration::from_secs(30));
    assert_eq!(st["state"], "failed", "nothing succeeded: {st}");
}

/// `liandan workers --forget` (#19 item 11) on the real binaries: refused
/// while the worker is connected (exit 65, saying to stop it first), then,
/// once it stopped, the worker is gone from the list; a second forget finds
/// nothing (exit 67); and the worker registers again when it comes back.
#[test]
fn a_stopped_worker_can_be_forgotten_and_comes_back_if_it_returns() {
    let mut c = Cluster::start(1, Opts::default());
    let ws = liandan_e2e::eventually(Duration::from_secs(20), || {
        let w = c.cli_json(&["workers", "-o", "json"]);
        (w.as_array()?.len() == 1 && w[0]["connected"] == true).then_some(w)
    })
    .expect("the worker registered");
    let id = ws[0]["id"].as_str().expect("id").to_string();
    let out = c.cli(&["workers", "--forget", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("is connected; stop its daemon first"), "{err}");
    c.workers[0].terminate(Duration::from_secs(20));
    let gone = liandan_e2e::eventually(Duration::from_secs(20), || {
        let out = c.cli(&["workers", "--forget", &id]);
        out.status
            .success()
            .then_some(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .expect("forgotten once disconnected");
    assert!(gone.contains("forgotten"), "{gone}");
    assert_eq!(
        c.cli_json(&["workers", "-o", "json"])
            .as_array()
            .map(|a| a.len()),
        Some(0)
    );
    assert_eq!(c.cli(&["workers", "--forget", &id]).status.code(), Some(67));
    c.add_worker(0);
    let back = liandan_e2e::eventually(Duration::from_secs(20), || {
        let w = c.cli_json(&["workers", "-o", "json"]);
        (w.as_array()?.len() == 1).then_some(w)
    });
    assert!(back.is_some(), "the worker registered again");
}

/// `liandan retry` runs a sweep's failed jobs again (resubmitting said
/// "already exists; nothing was added"): retries reset, the next attempt
/// number. Ids can be typed short (a unique prefix, as git and docker take
/// them) and `-o wide` never cuts a cell.
#[test]
fn failed_jobs_run_again_and_ids_can_be_typed_short() {
    let c = Cluster::start(1, Opts::default());
    let marker = c.dir.path().join("marker");
    let spec = c.write(
        "flaky.yaml",
        &format!(
            "name: flaky\nmethod: grid\ncommand: [sh, -c, 'test -e {} || {{ echo no marker >&2; exit 1; }}']\nparameters:\n  x: {{value: 1}}\nliandan:\n  retries: 0\n",
            marker.display()
        ),
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(30));
    assert_eq!(st["failed"], 1, "{st}");
    let out = c.cli(&["retry", "flaky", "--job", "job-"]);
    assert_eq!(
        out.status.code(),
        Some(65),
        "a bare kind is no id nor prefix"
    );
    let out = c.cli(&["retry", "flaky", "--job", "job-ffffffffffff"]);
    assert_eq!(out.status.code(), Some(67), "no such job");
    std::fs::write(&marker, b"").expect("marker");
    let out = c.cli(&["retry", "flaky"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("queued 1 job(s) of sweep"), "{text}");
    let st = c.wait_finished(&sweep, Duration::from_secs(30));
    assert_eq!(st["succeeded"], 1, "{st}");
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    let job = jobs[0]["id"].as_str().expect("id").to_string();
    assert_eq!(jobs[0]["attempt"], 2, "{jobs}");
    assert_eq!(jobs[0]["retries_used"], 0, "{jobs}");
    // Nothing failed is left: retry says so.
    let out = c.cli(&["retry", "flaky"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no failed job"));

    // Short ids: a job, a sweep and a worker by the start of their ids.
    let short = &job[..10];
    let out = c.cli(&["logs", short, "--attempt", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no marker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.cli_json(&["status", &sweep[..7], "-o", "json"])[0]["id"],
        sweep
    );
    let ws = c.cli_json(&["workers", "-o", "json"]);
    let wid = ws[0]["id"].as_str().expect("worker").to_string();
    let out = c.cli(&["drain", &wid[..6]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.cli(&["drain", &wid[..6], "--undo"]).status.success());

    // At 60 columns the table cuts the parameters; -o wide does not.
    let narrow = |args: &[&str]| {
        let out = Command::new(bin("liandan"))
            .args(args)
            .env("LIANDAN_COORDINATOR", c.url())
            .env("COLUMNS", "60")
            .output()
            .expect("cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cut = narrow(&["jobs", &sweep]);
    let wide = narrow(&["jobs", &sweep, "-o", "wide"]);
    assert!(!cut.contains(&job), "{cut}");
    assert!(wide.contains(&job), "{wide}");

    // Tab completes ids the coordinator knows (the shell calls back into
    // the binary; fish's protocol is one candidate a line).
    let complete = |words: &[&str]| {
        let out = Command::new(bin("liandan"))
            .env("COMPLETE", "fish")
            .env("LIANDAN_COORDINATOR", c.url())
            .arg("--")
            .args(words)
            .output()
            .expect("complete");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let jobs_offered = complete(&["liandan", "logs", "job-"]);
    assert!(
        jobs_offered
            .lines()
            .any(|l| l.starts_with(&format!("{job}\t"))),
        "{jobs_offered}"
    );
    let sweeps_offered = complete(&["liandan", "wait", "fl"]);
    assert!(
        sweeps_offered.lines().any(|l| l.starts_with("flaky\t")),
        "{sweeps_offered}"
    );
    let workers_offered = complete(&["liandan", "drain", ""]);
    assert!(
        workers_offered
            .lines()
            .any(|l| l.starts_with(&format!("{wid}\t"))),
        "{workers_offered}"
    );
    let registration = Command::new(bin("liandan"))
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    assert!(String::from_utf8_lossy(&registration.stdout).contains("COMPLETE=\"bash\""));
}

/// `logs -f` on a queued job waits for it to start (it returned at once,
/// empty), follows it through a coordinator restart (it gave up), and
/// `--attempt` past the job's attempts is an error (it printed nothing, 0).
#[test]
fn logs_follow_waits_for_a_queued_job_and_rides_out_a_restart() {
    let mut c = Cluster::start(0, Opts::default());
    let spec = c.write(
        "talk.yaml",
        "name: talk\nmethod: grid\ncommand: [sh, -c, 'for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.5; done']\nparameters:\n  x: {value: 1}\n",
    );
    let sweep = c.submit(&spec);
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    let job = jobs[0]["id"].as_str().expect("id").to_string();
    let out = c.cli(&["logs", &job, "--attempt", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(67), "{err}");
    assert!(err.contains("has no attempt 3"), "{err}");
    let out_path = c.dir.path().join("follow.out");
    let err_path = c.dir.path().join("follow.err");
    let mut follow = Command::new(bin("liandan"))
        .args(["logs", &job, "-f"])
        .env("LIANDAN_COORDINATOR", c.url())
        .stdout(std::fs::File::create(&out_path).expect("file"))
        .stderr(std::fs::File::create(&err_path).expect("file"))
        .spawn()
        .expect("logs -f");
    // Queued (no worker yet): the follower waits.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        follow.try_wait().expect("wait").is_none(),
        "logs -f ended on a queued job"
    );
    c.add_worker(0);
    liandan_e2e::eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&out_path)
            .ok()?
            .contains("line-2")
            .then_some(())
    })
    .expect("the follower printed the first lines");
    c.restart_coordinator_with(|_| std::thread::sleep(Duration::from_millis(1500)));
    let status =
        liandan_e2e::eventually(Duration::from_secs(40), || follow.try_wait().ok().flatten());
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        let _ = follow.kill();
        panic!("logs -f did not end: {text}\n{err}");
    };
    assert!(status.success(), "{err}");
    assert!(err.contains("is queued; waiting for it to start"), "{err}");
    let lines: Vec<&str> = text.lines().collect();
    let want: Vec<String> = (1..=8).map(|i| format!("line-{i}")).collect();
    assert_eq!(
        lines, want,
        "every line once, in order, across the restart\n{err}"
    );
}

/// A script prints `loss: 0.5` while `metric_pattern` expects `loss=`:
/// `submit --wait` used to report success and `results` crowned a trial
/// with no values. Now both say loudly that the metric never came.
#[test]
fn a_metric_that_never_arrives_is_said_loudly_and_nothing_is_crowned() {
    let c = Cluster::start(1, Opts::default());
    let spec = c.write(
        "quiet.yaml",
        "name: quiet\nmethod: grid\nmetric: {name: loss, goal: minimize}\ncommand: [sh, -c, 'echo \"loss: 0.5\"']\nparameters:\n  x: {values: [1, 2]}\nliandan:\n  metric_pattern: 'loss=(?P<loss>[0-9.]+)'\n",
    );
    let out = c.cli(&["submit", spec.to_str().expect("path"), "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: 2 of 2 succeeded job(s) never reported the metric \"loss\""),
        "{err}"
    );
    let out = c.cli(&["results", "quiet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("top"),
        "a trial without values was crowned:\n{text}"
    );
    assert!(
        text.contains("no trial has a value for the metric \"loss\""),
        "{text}"
    );
    // `status` says it too, and each job's row says why it has no value.
    let out = c.cli(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 succeeded job(s) never reported the metric \"loss\""),
        "{err}"
    );
    let out = c.cli(&["jobs", "quiet", "-o", "csv"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("job,trial,seed,state,attempt,worker,metric,took,reason,"),
        "{text}"
    );
    assert_eq!(
        text.matches("never reported \"\"loss\"\"").count(),
        2,
        "{text}"
    );
    // A sweep that requires its metric fails such jobs at once (no retry:
    // the next attempt would print the same), and says why.
    let spec = c.write(
        "strict.yaml",
        "name: strict\nmethod: grid\nmetric: {name: loss, goal: minimize}\ncommand: [sh, -c, 'echo \"loss: 0.5\"']\nparameters:\n  x: {values: [1]}\nliandan:\n  retries: 2\n  require_metric: true\n  metric_pattern: 'loss=(?P<loss>[0-9.]+)'\n",
    );
    let out = c.cli(&["submit", spec.to_str().expect("path"), "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("attempt 1 no_metric: exited 0 but never reported the metric \"loss\""),
        "{err}"
    );
    let out = c.cli(&["jobs", "strict", "-o", "json"]);
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(js[0]["state"], "failed", "{js}");
    assert_eq!(js[0]["attempt"], 1, "not retried: {js}");
    assert!(
        js[0]["worker_id"]
            .as_str()
            .is_some_and(|w| w.starts_with("wk-")),
        "{js}"
    );
    assert!(
        js[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no_metric: exited 0")),
        "{js}"
    );
}
