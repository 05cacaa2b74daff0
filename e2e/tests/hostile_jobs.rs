//! Hostile jobs (#19 item 7): a job must not own its worker. It cannot read
//! or change the worker's state when run as `job_user`, what it plants in its
//! checkpoint directory is not read through, what it starts outside its
//! process group dies with it, and killing its worker again and again makes
//! it fail instead of taking the worker down forever.

use liandan_e2e::{eventually, Cluster, Opts};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

fn job_of(c: &Cluster, sweep: &str) -> serde_json::Value {
    eventually(Duration::from_secs(20), || {
        let jobs = c.cli_json(&["jobs", sweep, "-o", "json"]);
        jobs.get(0).cloned()
    })
    .expect("the sweep has a job")
}

fn logs(c: &Cluster, job: &str) -> String {
    String::from_utf8_lossy(&c.cli(&["logs", job]).stdout).into_owned()
}

/// A job that SIGKILLs its worker (`kill -9 $PPID`), with `retries: 0`, on a
/// worker restarted after each death as systemd would: the third death in a
/// row is the job's failure, and the worker then runs the next job.
#[test]
fn a_job_that_kills_its_worker_fails_after_max_worker_deaths() {
    let mut c = Cluster::start(
        1,
        Opts {
            slots: 1,
            ..Opts::default()
        },
    );
    let spec = c.write(
        "killer.yaml",
        "name: killer\nmethod: grid\ncommand: [sh, -c, 'kill -9 $PPID; sleep 30']\nparameters:\n  k: {value: 1}\nliandan:\n  retries: 0\n",
    );
    let sweep = c.submit(&spec);
    let job = job_of(&c, &sweep)["id"].as_str().expect("id").to_string();
    let mut restarts = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let end = loop {
        let j = job_of(&c, &sweep);
        if j["state"] != "queued" && j["state"] != "running" {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job that kills its worker is still {} after {restarts} worker restarts: it would take the worker down forever",
            j["state"]
        );
        let dead = c.workers[0]
            .child
            .as_mut()
            .map(|ch| ch.try_wait().ok().flatten().is_some())
            .unwrap_or(true);
        if dead {
            restarts += 1;
            c.add_worker(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(end["attempt"], 3, "three deaths in a row: {end}");
    let outcome: String = {
        let conn = rusqlite::Connection::open(c.dir.path().join("coordinator/coordinator.db"))
            .expect("db");
        conn.query_row(
            "SELECT state || ': ' || message FROM attempts WHERE job_id=?1 ORDER BY attempt DESC LIMIT 1",
            [&job],
            |r| r.get(0),
        )
        .expect("the last attempt")
    };
    assert!(
        outcome.starts_with("worker_died: ") && outcome.contains("max_worker_deaths = 3"),
        "{outcome}"
    );
    // The worker is not taken down again: the next job runs.
    let ok = c.write(
        "ok.yaml",
        "name: fine\nmethod: grid\ncommand: ['true']\nparameters:\n  k: {value: 1}\n",
    );
    let next = c.submit(&ok);
    let st = c.wait_finished(&next, Duration::from_secs(30));
    assert_eq!(st["succeeded"], 1, "{st}");
}

/// What a job plants in its checkpoint directory (a link to the worker's
/// database, a FIFO, a hard link) is never read or uploaded, a metrics file
/// that is a link is not followed, a FIFO where the worker records the
/// attempt's outcome does not block its end, and a process the job started in a new
/// session (`setsid`) is killed when the job is cancelled (where the worker
/// can make cgroups).
#[test]
fn what_a_job_plants_is_not_read_and_what_it_starts_dies_with_it() {
    let c = Cluster::start(
        1,
        Opts {
            slots: 1,
            ..Opts::default()
        },
    );
    let script = c.write(
        "plant.sh",
        r#"
ck="$LIANDAN_CHECKPOINT_DIR"
db="$ck/../../../../worker.db"
ln -s "$db" "$ck/step-5.ckpt"
mkfifo "$ck/step-6.ckpt"
ln "$db" "$ck/step-7.ckpt"
ln -s "$db" "$LIANDAN_METRICS_FILE"
mkfifo "$ck/../outcome"
printf 'mine' > "$ck/.step-1.tmp" && mv "$ck/.step-1.tmp" "$ck/step-1.ckpt"
setsid sleep 300 &
echo "daemon=$!"
echo ready
sleep 300
"#,
    );
    let spec = c.write(
        "plant.yaml",
        &format!(
            "name: plant\nmethod: grid\ncommand: [sh, '{}']\nparameters:\n  k: {{value: 1}}\n",
            script.display()
        ),
    );
    let sweep = c.submit(&spec);
    let job = job_of(&c, &sweep)["id"].as_str().expect("id").to_string();
    let text = eventually(Duration::from_secs(30), || {
        let t = logs(&c, &job);
        t.contains("ready").then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "the job did not start; worker log:\n{}",
            c.workers[0].log_text()
        )
    });
    let daemon: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("daemon="))
        .and_then(|p| p.trim().parse().ok())
        .expect("the daemon's pid");
    // The real checkpoint is stored; the planted ones never are.
    let stored = eventually(Duration::from_secs(20), || {
        let cks = c.cli_json(&["checkpoints", &job, "-o", "json"]);
        (!cks.as_array()?.is_empty()).then_some(cks)
    })
    .unwrap_or_else(|| {
        panic!(
            "the real checkpoint was not stored; worker log:\n{}",
            c.workers[0].log_text()
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    let out = c.cli(&["cancel", &sweep]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(30), || {
        (job_of(&c, &sweep)["state"] == "cancelled").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the job was not cancelled within 30 s: {}\nworker log:\n{}",
            job_of(&c, &sweep),
            liandan_e2e::tail(&c.workers[0].log_text(), 20)
        )
    });
    let cks = c.cli_json(&["checkpoints", &job, "-o", "json"]);
    let steps: Vec<i64> = cks
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["step"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(
        steps,
        vec![1],
        "only the job's own checkpoint: {cks} (first: {stored})"
    );
    let m = c.cli_json(&["metrics", &job, "-o", "json"]);
    assert_eq!(
        m.as_array().map(|a| a.len()),
        Some(0),
        "the linked metrics file was read: {m}"
    );
    let log = c.workers[0].log_text();
    assert!(
        log.contains("not a checkpoint the worker will read"),
        "{log}"
    );
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false)
    };
    if log.contains("jobs run in their own cgroups") {
        let gone = eventually(Duration::from_secs(10), || (!alive(daemon)).then_some(()));
        if gone.is_none() {
            // Ours to clean up: the test's job started it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the job's setsid child survived the cancel");
        }
    } else {
        eprintln!("no cgroup v2 for jobs here: the setsid child's fate is not checked");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Run as `job_user` (here `nobody`), a job cannot read the worker's
/// database, list or write its state dir, or kill the worker, and holds no
/// capability; it still writes its checkpoints and metrics, and the
/// attempt's directory is the worker's again once it ended. Needs root (CI
/// runs as root).
#[test]
fn a_job_run_as_job_user_cannot_touch_its_worker() {
    job_user_probe(Vec::new(), 0);
}

/// The same with the worker run the way a unit with `User=` and
/// `AmbientCapabilities=` runs it: as `daemon`, holding only the six
/// capabilities it needs. The job must not inherit them.
#[test]
fn a_job_of_a_non_root_worker_with_capabilities_inherits_none() {
    let Ok(Some(daemon)) = nix::unistd::User::from_name("daemon") else {
        eprintln!("skipped: no user `daemon`");
        return;
    };
    if !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: no setpriv (util-linux)");
        return;
    }
    let caps = "+chown,+dac_override,+fowner,+kill,+setgid,+setuid";
    let wrapper = vec![
        "/usr/bin/setpriv".to_string(),
        format!("--reuid={}", daemon.uid),
        format!("--regid={}", daemon.gid),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
    ];
    job_user_probe(wrapper, daemon.uid.as_raw());
}

fn job_user_probe(worker_wrapper: Vec<String>, worker_uid: u32) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: starting jobs as another user needs root");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("skipped: no user `nobody`");
        return;
    };
    let mut c = Cluster::start(
        0,
        Opts {
            slots: 1,
            worker_env: vec![("LIANDAN_JOB_USER".into(), "nobody".into())],
            worker_wrapper,
            ..Opts::default()
        },
    );
    // The job user must get through the test's directory to its own.
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    c.add_worker(0);
    let script = c.write(
        "probe.sh",
        r#"
state="$LIANDAN_CHECKPOINT_DIR/../../../.."
cat "$state/worker.db" > /dev/null 2>&1 && echo READ_DB=yes || echo READ_DB=no
ls "$state/jobs" > /dev/null 2>&1 && echo LIST_JOBS=yes || echo LIST_JOBS=no
touch "$state/planted" 2> /dev/null && echo WRITE_STATE=yes || echo WRITE_STATE=no
kill -9 $PPID 2> /dev/null && echo KILL_WORKER=yes || echo KILL_WORKER=no
echo "uid=$(id -u) home=$HOME"
grep -E '^Cap(Eff|Prm|Amb):' /proc/self/status
printf 'mine' > "$LIANDAN_CHECKPOINT_DIR/.t" && mv "$LIANDAN_CHECKPOINT_DIR/.t" "$LIANDAN_CHECKPOINT_DIR/step-1.ckpt"
echo '{"step": 1, "loss": 0.5}' >> "$LIANDAN_METRICS_FILE"
"#,
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let spec = c.write(
        "probe.yaml",
        &format!(
            "name: probe\nmethod: grid\ncommand: [sh, '{}']\nparameters:\n  k: {{value: 1}}\n",
            script.display()
        ),
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(60));
    let job = job_of(&c, &sweep)["id"].as_str().expect("id").to_string();
    let text = logs(&c, &job);
    assert_eq!(
        st["succeeded"],
        1,
        "{st}\n{text}\nworker log:\n{}",
        c.workers[0].log_text()
    );
    for probe in [
        "READ_DB=no",
        "LIST_JOBS=no",
        "WRITE_STATE=no",
        "KILL_WORKER=no",
    ] {
        assert!(text.contains(probe), "{probe} expected: {text}");
    }
    assert!(
        text.contains(&format!("uid={}", nobody.uid)),
        "the job runs as nobody: {text}"
    );
    for set in ["CapEff", "CapPrm", "CapAmb"] {
        assert!(
            text.contains(&format!("{set}:\t0000000000000000")),
            "the job holds no capability ({set}): {text}"
        );
    }
    let state = c.dir.path().join("worker-0");
    assert!(!state.join("planted").exists());
    let cks = c.cli_json(&["checkpoints", &job, "-o", "json"]);
    assert_eq!(cks.as_array().map(|a| a.len()), Some(1), "{cks}");
    let m = c.cli_json(&["metrics", &job, "-o", "json"]);
    assert_eq!(m.as_array().map(|a| a.len()), Some(1), "{m}");
    // The ended attempt's directory is the worker's again (if retention has
    // not removed it already).
    let dir = state.join("jobs").join(&job).join("1");
    if let Ok(meta) = std::fs::metadata(&dir) {
        assert_eq!(meta.uid(), worker_uid, "{}", dir.display());
        assert_eq!(meta.mode() & 0o777, 0o700);
    }
    assert_eq!(
        std::fs::metadata(state.join("worker.db"))
            .expect("db")
            .mode()
            & 0o777,
        0o600
    );
}
