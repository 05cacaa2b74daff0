//! A harness that starts the real liandan binaries on loopback, each in its own
//! temp state dir, and stops them (by pid) when dropped. Used by the end-to-end
//! tests, the chaos suite and the benchmarks.
//!
//! The binaries are found next to the test executable's `deps` directory
//! (`target/<profile>/`); `cargo build --workspace` (or `make`) builds them.

pub mod chaos;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace` or `make build`)",
        p.display()
    );
    p
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether a workspace binary was built (the trainer needs libtorch).
pub fn has_bin(name: &str) -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.to_path_buf()))
        .map(|mut d| {
            if d.ends_with("deps") {
                d.pop();
            }
            d.join(name).exists()
        })
        == Some(true)
}

/// A started process, killed (SIGKILL, by pid) when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `max` for it to exit (SIGKILL after).
    pub fn terminate(&mut self, max: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + max;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Not its cgroups: a worker started again on the same state dir (the
        // chaos harness restarts them) runs its jobs in the same ones.
        self.kill();
    }
}

/// Options of a test cluster.
#[derive(Clone)]
pub struct Opts {
    pub lease_timeout_secs: f64,
    pub restart_grace_secs: f64,
    pub slots: u32,
    pub grace_period_secs: f64,
    /// Extra environment for workers (e.g. LIANDAN_SPOOL_MAX_BYTES).
    pub worker_env: Vec<(String, String)>,
    /// Extra environment for the coordinator.
    pub coordinator_env: Vec<(String, String)>,
    /// A command workers are started through (e.g. `setpriv ...`), or none.
    pub worker_wrapper: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            lease_timeout_secs: 3.0,
            restart_grace_secs: 3.0,
            slots: 2,
            grace_period_secs: 2.0,
            worker_env: Vec::new(),
            coordinator_env: Vec::new(),
            worker_wrapper: Vec::new(),
        }
    }
}

/// A coordinator and workers on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator: Proc,
    pub addr: String,
    pub workers: Vec<Proc>,
    pub opts: Opts,
}

/// A fresh log file name in `dir` (a restarted process gets a new one).
fn log_path(dir: &Path, prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    dir.join(format!("{prefix}-{nanos}.log"))
}

fn start_coordinator(dir: &Path, listen: &str, opts: &Opts) -> (Proc, String) {
    let log = log_path(dir, "coordinator");
    let err = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(bin("liandan-coordinator"))
        .args(["--listen", listen, "--data-dir"])
        .arg(dir.join("coordinator"))
        .args([
            "--lease-timeout-secs",
            &opts.lease_timeout_secs.to_string(),
            "--restart-grace-secs",
            &opts.restart_grace_secs.to_string(),
        ])
        .args([
            "--heartbeat-interval-secs",
            &(opts.lease_timeout_secs / 4.0).to_string(),
        ])
        .env("RUST_LOG", "info")
        .envs(
            opts.coordinator_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("start coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listen line");
    let addr = match line.trim().strip_prefix("listening on ") {
        Some(a) => a.to_string(),
        None => panic!(
            "coordinator did not start (first line {line:?}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    (
        Proc {
            child: Some(child),
            log,
        },
        addr,
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.kill();
        }
        remove_job_cgroups(self.dir.path());
    }
}

/// Kills and removes the cgroups the workers whose logs are in `dir` made
/// for their jobs (a SIGKILLed worker leaves its jobs running in them).
pub fn remove_job_cgroups(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let logs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    remove_cgroups_in_logs(&logs);
}

/// [`remove_job_cgroups`] for the cgroups named in these worker logs.
pub fn remove_cgroups_in_logs(logs: &[PathBuf]) {
    let mut bases = std::collections::BTreeSet::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("jobs run in their own cgroups"))
        {
            if let Some(d) = line
                .split("dir=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            {
                bases.insert(PathBuf::from(d));
            }
        }
    }
    for base in bases {
        let children: Vec<PathBuf> = std::fs::read_dir(&base)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        for d in children.iter().chain(std::iter::once(&base)) {
            let _ = std::fs::write(d.join("cgroup.kill"), b"1");
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Cluster {
    pub fn start(workers: usize, opts: Opts) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let (coordinator, addr) = start_coordinator(dir.path(), "127.0.0.1:0", &opts);
        let mut c = Cluster {
            dir,
            coordinator,
            addr,
            workers: Vec::new(),
            opts,
        };
        c.wait_ready();
        for i in 0..workers {
            c.add_worker(i);
        }
        c
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts (or restarts) worker `i` on its own state dir.
    pub fn add_worker(&mut self, i: usize) {
        self.add_worker_via(i, &self.url());
    }

    /// Starts (or restarts) worker `i`, reaching the coordinator at `url`
    /// (a proxy in front of it, for partitions).
    pub fn add_worker_via(&mut self, i: usize, url: &str) {
        let p = self.worker_proc(i, url);
        if i < self.workers.len() {
            self.workers[i] = p;
        } else {
            self.workers.push(p);
        }
    }

    fn worker_proc(&self, i: usize, url: &str) -> Proc {
        let log = log_path(self.dir.path(), &format!("worker-{i}"));
        let err = std::fs::File::create(&log).expect("log file");
        let mut cmd = match self.opts.worker_wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(bin("liandan-worker"));
                c
            }
            None => Command::new(bin("liandan-worker")),
        };
        cmd.args(["--coordinator", url, "--state-dir"])
            .arg(self.dir.path().join(format!("worker-{i}")))
            // Workers deployed from a checkout: examples/ resolves from the repository root.
            .arg("--base-dir")
            .arg(repo_root())
            .args([
                "--slots",
                &self.opts.slots.to_string(),
                "--gpus",
                "none",
                "--grace-period-secs",
                &self.opts.grace_period_secs.to_string(),
            ])
            .env("RUST_LOG", "info")
            .envs(
                self.opts
                    .worker_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdout(Stdio::null())
            .stderr(err);
        Proc {
            child: Some(cmd.spawn().expect("start worker")),
            log,
        }
    }

    /// SIGKILLs the coordinator and starts it again on the same address and data dir.
    pub fn restart_coordinator(&mut self) {
        self.restart_coordinator_with(|_| {});
    }

    /// SIGKILLs the coordinator, runs `while_down` on its data dir, and starts it again.
    pub fn restart_coordinator_with(&mut self, while_down: impl FnOnce(&Path)) {
        self.coordinator.kill();
        while_down(&self.dir.path().join("coordinator"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger briefly; retry binding it.
            let (p, addr) = start_coordinator(self.dir.path(), &self.addr.clone(), &self.opts);
            if addr == self.addr {
                self.coordinator = p;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "could not restart the coordinator on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = self.cli(&["status", "-o", "json"]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "coordinator not ready; log:\n{}",
            self.coordinator.log_text()
        );
    }

    /// Runs the CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("liandan"))
            .args(args)
            .env("LIANDAN_COORDINATOR", self.url())
            .env("COLUMNS", "200")
            .output()
            .expect("run liandan")
    }

    /// Runs the CLI and parses its JSON output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "liandan {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "liandan {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Writes a file into the cluster's dir and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// Submits a sweep file; returns the sweep id.
    pub fn submit(&self, path: &Path) -> String {
        let out = self.cli(&["submit", path.to_str().expect("utf8 path")]);
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .find(|w| w.starts_with("sw-"))
            .expect("sweep id")
            .to_string()
    }

    /// Polls until the sweep is finished or `max` passes; returns its status JSON.
    pub fn wait_finished(&self, sweep: &str, max: Duration) -> serde_json::Value {
        let deadline = Instant::now() + max;
        loop {
            let s = self.cli_json(&["status", sweep, "-o", "json"]);
            if s[0]["state"] == "finished"
                || s[0]["state"] == "failed"
                || s[0]["state"] == "cancelled"
            {
                return s[0].clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "sweep {sweep} did not finish in {max:?}: {s}\nunfinished jobs and their attempts:\n{}\ncoordinator log:\n{}\nworker logs:\n{}",
                    self.unfinished_jobs(),
                    tail(&self.coordinator.log_text(), 80),
                    self.workers.iter().map(|w| tail(&w.log_text(), 40)).collect::<Vec<_>>().join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every queued or running job with its attempts, from the database (what
    /// a test that waited in vain needs to see).
    pub fn unfinished_jobs(&self) -> String {
        let Ok(db) =
            rusqlite::Connection::open(self.dir.path().join("coordinator").join("coordinator.db"))
        else {
            return "(no database)".into();
        };
        let Ok(mut q) = db.prepare(
            "SELECT j.id, j.state, j.attempt, COALESCE(j.worker_id, '-'), j.cancel_requested,
                    COALESCE(a.attempt, 0), COALESCE(a.worker_id, '-'), COALESCE(a.state, '-'),
                    COALESCE(a.started_at, 0), COALESCE(a.ended_at, 0), COALESCE(a.message, '')
             FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id
             WHERE j.state IN ('queued', 'running') ORDER BY j.id, a.attempt",
        ) else {
            return "(query failed)".into();
        };
        let rows = q.query_map([], |r| {
            Ok(format!(
                "  {} {} attempt {} on {} stop {} | attempt {} on {} {} {:.1}..{:.1} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, f64>(8)?,
                r.get::<_, f64>(9)?,
                r.get::<_, String>(10)?,
            ))
        });
        match rows {
            Ok(rows) => rows.flatten().collect::<Vec<_>>().join("\n"),
            Err(e) => e.to_string(),
        }
    }

    /// Running jobs (by the coordinator's database) whose worker does not
    /// hold the attempt (by the worker's journal): `job attempt on worker`.
    /// Transiently non-empty while an assignment is on its way; a lasting
    /// entry is a job that will never run.
    pub fn running_not_held(&self) -> Vec<String> {
        let ro = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let mut held = std::collections::HashSet::new();
        for i in 0..self.workers.len() {
            let path = self
                .dir
                .path()
                .join(format!("worker-{i}"))
                .join("worker.db");
            let Ok(db) = rusqlite::Connection::open_with_flags(&path, ro) else {
                continue;
            };
            let Ok(wid) = db.query_row("SELECT value FROM meta WHERE key='worker_id'", [], |r| {
                r.get::<_, String>(0)
            }) else {
                continue;
            };
            let Ok(mut q) = db.prepare("SELECT job_id, attempt FROM attempts") else {
                continue;
            };
            let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)));
            for (job, attempt) in rows.into_iter().flatten().flatten() {
                held.insert((job, attempt, wid.clone()));
            }
        }
        let Ok(db) = rusqlite::Connection::open_with_flags(
            self.dir.path().join("coordinator").join("coordinator.db"),
            ro,
        ) else {
            return vec!["(no coordinator database)".into()];
        };
        let Ok(mut q) = db.prepare(
            "SELECT id, attempt, COALESCE(worker_id, '') FROM jobs WHERE state = 'running'",
        ) else {
            return vec!["(query failed)".into()];
        };
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        });
        rows.into_iter()
            .flatten()
            .flatten()
            .filter(|k| !held.contains(k))
            .map(|(j, a, w)| format!("{j} attempt {a} on {w}"))
            .collect()
    }

    /// Reads a counter from the coordinator's database.
    pub fn counter(&self, name: &str) -> i64 {
        let c =
            rusqlite::Connection::open(self.dir.path().join("coordinator").join("coordinator.db"))
                .expect("open db");
        c.query_row(
            "SELECT COALESCE((SELECT value FROM counters WHERE name=?1), 0)",
            [name],
            |r| r.get(0),
        )
        .expect("counter")
    }

    /// Runs a SQL query returning one integer on the coordinator's database.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let c =
            rusqlite::Connection::open(self.dir.path().join("coordinator").join("coordinator.db"))
                .expect("open db");
        c.query_row(sql, [], |r| r.get(0)).expect("query")
    }
}

/// Sends a submit of `spec` over gRPC and goes away after `ms` (a client
/// cut off mid-RPC: Ctrl-C, a dropped link); true if it answered in time.
pub fn cut_submit(rt: &tokio::runtime::Runtime, url: &str, spec: String, ms: u64) -> bool {
    use liandan_proto::v1 as pb;
    rt.block_on(async {
        let Ok(mut user) =
            pb::user_service_client::UserServiceClient::connect(url.to_string()).await
        else {
            return false;
        };
        let call = user.submit_sweep(pb::SubmitSweepRequest {
            spec,
            format: "yaml".into(),
            name: String::new(),
        });
        tokio::time::timeout(Duration::from_millis(ms), call)
            .await
            .is_ok()
    })
}

/// The last `n` lines of a text.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` until it returns Some or `max` passes.
pub fn eventually<T>(max: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + max;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
