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
    assert!(
        err.contains(&format!(
            "failed: {failed} attempt 1 failed: exit status: 3"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("see why: `liandan logs {failed} --stderr`")),
        "{err}"
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
