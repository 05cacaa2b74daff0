//! The chaos harness: real binaries on loopback (a coordinator, three workers,
//! each behind a TCP proxy it can cut), rounds of sweeps mixing `liandan-train`
//! jobs that checkpoint often and command jobs that print numbered lines (a new
//! round whenever the cluster runs low on work, so a long soak is never idle),
//! and for a while, at random (seeded, printed): SIGKILL + restart of workers
//! and of the coordinator, SIGTERM (drain) of a worker and SIGKILL in the
//! middle of its drain, partitions (alone, and with a coordinator restart while
//! the worker is cut off), and freezes (SIGSTOP past the lease, then SIGCONT)
//! of a worker (it wakes up with attempts the coordinator already gave away)
//! and of the coordinator (a stall no worker is to blame for).
//! Then it checks the promises and prints them as a table.

use crate::{bin, Cluster, Opts};
use liandan_common::rng::Rng;
use liandan_common::time::now_secs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP forwarder that can cut every connection through it (a partition).
pub struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, k2, s2) = (cut.clone(), conns.clone(), stop.clone());
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if c2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        k2.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                }
                pipe(client.try_clone().ok(), server.try_clone().ok());
                pipe(server.try_clone().ok(), client.try_clone().ok());
            }
        });
        Proxy {
            addr,
            cut,
            conns,
            stop,
        }
    }

    /// Cuts all connections and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pipe(from: Option<TcpStream>, to: Option<TcpStream>) {
    let (Some(mut from), Some(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// What the run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub faults: Vec<String>,
    pub rounds: u32,
    pub jobs: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub results_recorded_max_per_job: i64,
    /// Succeeded jobs without a recorded result (must be none).
    pub results_missing: i64,
    /// (job, attempt) metric records stored more than once.
    pub metric_duplicates: Vec<String>,
    /// Stored checkpoints whose file is missing, not the recorded size or
    /// not the recorded hash.
    pub checkpoint_problems: Vec<String>,
    /// Checkpoint files no row refers to (after the coordinator's collection).
    pub orphan_files: Vec<String>,
    /// Succeeded jobs whose recorded result is not their last metric record,
    /// or whose best is not the best of their records.
    pub metric_mismatches: Vec<String>,
    /// Jobs `running` on a worker that did not hold the attempt, seen for
    /// longer than an assignment can take to arrive.
    pub running_nowhere: Vec<String>,
    /// Sweeps submitted by an RPC the harness cut off, and whether each exists.
    pub cut_submits: (u32, u32),
    /// Jobs of sweeps whose cancel was cut off: neither cancelled nor
    /// succeeded, or unfinished.
    pub cancel_problems: Vec<String>,
    /// Whether a worker ran on a small file system that the harness filled.
    pub disk_full: bool,
    /// Attempts the coordinator gave up on for a silent worker (lease expired)
    /// while nothing had happened to that worker.
    pub blameless_losses: Vec<String>,
    pub attempts: i64,
    pub max_attempts_per_job: i64,
    pub refused_stale: i64,
    pub log_problems: Vec<String>,
    pub trainer_mismatches: Vec<String>,
    pub integrity: String,
    pub leftover_processes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.succeeded == self.jobs
            && self.failed == 0
            && self.results_recorded_max_per_job == 1
            && self.results_missing == 0
            && self.metric_duplicates.is_empty()
            && self.checkpoint_problems.is_empty()
            && self.orphan_files.is_empty()
            && self.metric_mismatches.is_empty()
            && self.running_nowhere.is_empty()
            && self.cancel_problems.is_empty()
            && self.blameless_losses.is_empty()
            && self.log_problems.is_empty()
            && self.trainer_mismatches.is_empty()
            && self.integrity == "ok"
            && self.leftover_processes.is_empty()
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "chaos seed {} ({} rounds of sweeps; {} faults: {})\n",
            self.seed,
            self.rounds,
            self.faults.len(),
            self.faults.join(", ")
        );
        let row = |name: &str, value: String, ok: bool| {
            format!(
                "  {name:<52} {value:<24} {}\n",
                if ok { "ok" } else { "FAIL" }
            )
        };
        s += &row(
            "jobs submitted / succeeded / failed",
            format!("{} / {} / {}", self.jobs, self.succeeded, self.failed),
            self.succeeded == self.jobs && self.failed == 0,
        );
        s += &row(
            "results recorded per job (max)",
            self.results_recorded_max_per_job.to_string(),
            self.results_recorded_max_per_job == 1,
        );
        s += &row(
            "succeeded jobs without a recorded result",
            self.results_missing.to_string(),
            self.results_missing == 0,
        );
        s += &row(
            "attempts (total / max per job)",
            format!("{} / {}", self.attempts, self.max_attempts_per_job),
            true,
        );
        s += &row(
            "writes refused from stale attempts",
            self.refused_stale.to_string(),
            true,
        );
        s += &row(
            "attempt logs: gaps or duplicates",
            format!("{}", self.log_problems.len()),
            self.log_problems.is_empty(),
        );
        s += &row(
            "metric records stored twice",
            self.metric_duplicates.len().to_string(),
            self.metric_duplicates.is_empty(),
        );
        s += &row(
            "stored checkpoints missing, short or corrupt",
            self.checkpoint_problems.len().to_string(),
            self.checkpoint_problems.is_empty(),
        );
        s += &row(
            "checkpoint files without a row",
            self.orphan_files.len().to_string(),
            self.orphan_files.is_empty(),
        );
        s += &row(
            "results differing from the last/best metric record",
            self.metric_mismatches.len().to_string(),
            self.metric_mismatches.is_empty(),
        );
        s += &row(
            "jobs running on a worker that did not hold them",
            self.running_nowhere.len().to_string(),
            self.running_nowhere.is_empty(),
        );
        s += &row(
            "submits cut off mid-RPC (created / cut)",
            format!("{} / {}", self.cut_submits.1, self.cut_submits.0),
            true,
        );
        s += &row(
            "jobs of cut-off cancels neither cancelled nor done",
            self.cancel_problems.len().to_string(),
            self.cancel_problems.is_empty(),
        );
        s += &row(
            "a worker's disk filled up",
            if self.disk_full {
                "yes"
            } else {
                "no (no small fs)"
            }
            .into(),
            true,
        );
        s += &row(
            "attempts lost with nothing wrong with their worker",
            self.blameless_losses.len().to_string(),
            self.blameless_losses.is_empty(),
        );
        s += &row(
            "trainer jobs differing from a reference run",
            format!("{}", self.trainer_mismatches.len()),
            self.trainer_mismatches.is_empty(),
        );
        s += &row(
            "database integrity_check",
            self.integrity.clone(),
            self.integrity == "ok",
        );
        s += &row(
            "processes left behind",
            format!("{}", self.leftover_processes.len()),
            self.leftover_processes.is_empty(),
        );
        for p in self
            .log_problems
            .iter()
            .chain(&self.metric_duplicates)
            .chain(&self.checkpoint_problems)
            .chain(&self.orphan_files)
            .chain(&self.metric_mismatches)
            .chain(&self.running_nowhere)
            .chain(&self.cancel_problems)
            .chain(&self.blameless_losses)
            .chain(&self.trainer_mismatches)
            .chain(&self.leftover_processes)
            .take(10)
        {
            s += &format!("    {p}\n");
        }
        s
    }
}

const LINES: u32 = 300;

fn spec(train: bool, round: u32) -> String {
    if !train {
        return lines_spec(&format!("chaos-lines-{round}"));
    }
    format!("name: chaos-train-{round}\nmethod: grid\nmetric: {{name: val_accuracy, goal: maximize}}\nparameters:\n  steps: {{value: 4000}}\n  checkpoint_every: {{value: 250}}\n  log_every: {{value: 250}}\n  width: {{value: 32}}\n  dropout: {{value: 0.1}}\n  threads: {{value: 1}}\n  lr: {{values: [0.01, 0.03]}}\nliandan:\n  trainer: true\n  seeds: 3\n  retries: 0\n")
}

/// The command sweep (12 jobs printing numbered lines) under `name`.
fn lines_spec(name: &str) -> String {
    let cmd = format!(
        "name: {name}\nprogram: /bin/sh\ncommand: [\"/bin/sh\", \"-c\", \"i=1; while [ $i -le {LINES} ]; do echo line $i; i=$((i+1)); sleep 0.01; done\", \"${{args}}\"]\nmethod: grid\nparameters:\n  k: {{values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}}\nliandan:\n  retries: 0\n"
    );
    cmd
}

/// A small file system (tmpfs) mounted on a worker's state dir, so the
/// harness can fill it; unmounted on drop. Needs root (CI and this project's
/// machines run as root); elsewhere the disk-full fault is skipped.
struct SmallFs {
    path: std::path::PathBuf,
}

impl SmallFs {
    fn mount(path: &Path, bytes: u64) -> Option<SmallFs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs {
            path: path.to_path_buf(),
        })
    }

    /// Fills the file system to the last byte; returns the filler's path.
    fn fill(&self) -> std::path::PathBuf {
        let p = self.path.join("filler");
        if let Ok(mut f) = std::fs::File::create(&p) {
            let block = vec![0u8; 1 << 20];
            while f.write_all(&block).is_ok() {}
            let small = [0u8; 4096];
            while f.write_all(&small).is_ok() {}
            let _ = f.write_all(&[0u8; 512]);
        }
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Starts downloading a stored checkpoint of `job` and goes away after
/// `chunks` chunks (Ctrl-C, a dropped link, a resume fetch cut off).
fn cut_download(rt: &tokio::runtime::Runtime, url: &str, job: &str, chunks: u64) {
    use liandan_proto::v1 as pb;
    rt.block_on(async {
        let Ok(mut user) =
            pb::user_service_client::UserServiceClient::connect(url.to_string()).await
        else {
            return;
        };
        let req = pb::DownloadCheckpointRequest {
            job_id: job.into(),
            step: -1,
            offset: 0,
        };
        let Ok(r) =
            tokio::time::timeout(Duration::from_secs(5), user.download_checkpoint(req)).await
        else {
            return;
        };
        if let Ok(r) = r {
            let mut stream = r.into_inner();
            for _ in 0..chunks {
                if !matches!(stream.message().await, Ok(Some(_))) {
                    break;
                }
            }
        }
    });
}

/// Sends a cancel of `sweep` and goes away after `ms`.
fn cut_cancel(rt: &tokio::runtime::Runtime, url: &str, sweep: &str, ms: u64) {
    use liandan_proto::v1 as pb;
    rt.block_on(async {
        let Ok(mut user) =
            pb::user_service_client::UserServiceClient::connect(url.to_string()).await
        else {
            return;
        };
        let call = user.cancel_sweep(pb::SweepRef {
            sweep_id: sweep.into(),
        });
        let _ = tokio::time::timeout(Duration::from_millis(ms), call).await;
    })
}

/// Jobs running on a worker that does not hold them, longer than this, are
/// lost (an assignment arrives in milliseconds; no fault lasts this long).
const RUNNING_NOWHERE_SECS: u64 = 20;

fn cwd_under(pid: &str, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.starts_with(dir))
        .unwrap_or(false)
}

/// Every row of `sql`, read as the tuple `T` (the check fails loudly on a
/// query it cannot run: the harness's SQL is wrong, not the system).
fn rows<T>(db: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> Vec<T>
where
    T: for<'a> TryFrom<&'a rusqlite::Row<'a>, Error = rusqlite::Error>,
{
    let mut q = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    q.query_map(params, |r| T::try_from(r))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .flatten()
        .collect()
}

/// When something happened to a worker (wall-clock seconds, as the
/// coordinator stores times): a lease may expire for it until the lease after.
struct Window {
    worker: usize,
    from: f64,
    to: f64,
}

/// The worker's id, from its log (`worker starting worker=wk-...`).
fn worker_id(p: &crate::Proc) -> Option<String> {
    let text = p.log_text();
    let at = text.find("worker=wk-")? + "worker=".len();
    Some(
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect(),
    )
}

/// Below this many unfinished jobs during the fault period, another round of
/// sweeps is submitted.
const LOW_WATER: i64 = 6;

/// How long the faults go on.
#[derive(Clone, Copy, Debug)]
pub enum Length {
    /// Faults for this long (a new one until the time is up).
    Secs(u64),
    /// Exactly the first N faults of the seed's schedule, however long they take
    /// (a regression case replays the fault that found a bug, on any machine).
    Faults(usize),
}

/// Runs the chaos schedule for `fault_secs` with `seed`; returns the report.
pub fn run(seed: u64, fault_secs: u64) -> Report {
    run_for(seed, Length::Secs(fault_secs))
}

/// Runs the chaos schedule of `seed` for `length`; returns the report.
pub fn run_for(seed: u64, length: Length) -> Report {
    let mut report = Report {
        seed,
        ..Default::default()
    };
    let opts = Opts {
        lease_timeout_secs: 2.0,
        restart_grace_secs: 3.0,
        slots: 2,
        grace_period_secs: 3.0,
        worker_env: Vec::new(),
        // The faults kill workers at random, several times a minute: a job
        // interrupted three times in a row here is the suite's doing, not
        // the job's (max_worker_deaths is tested in hostile_jobs.rs).
        coordinator_env: vec![("LIANDAN_MAX_WORKER_DEATHS".into(), "1000".into())],
        worker_wrapper: Vec::new(),
    };
    let mut c = Cluster::start(0, opts);
    // Worker 2 keeps its state on a small file system the harness fills now
    // and then (where it can mount one).
    let small_fs = SmallFs::mount(&c.dir.path().join("worker-2"), 64 << 20);
    report.disk_full = small_fs.is_some();
    // Every worker reaches the coordinator through its own proxy, and always
    // comes back behind it.
    let proxies: Vec<Proxy> = (0..3).map(|_| Proxy::start(c.addr.clone())).collect();
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("http://{}", p.addr))
        .collect();
    for (i, url) in urls.iter().enumerate() {
        c.add_worker_via(i, url);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The client faults draw from their own stream, so the seeds of earlier
    // schedules still replay the same process and network faults.
    let mut rng2 = Rng::keyed("liandan.chaos.clients", &[seed]);
    let mut cut_sweeps: Vec<String> = Vec::new();
    let mut doomed: Vec<String> = Vec::new();
    let mut nowhere_since: std::collections::HashMap<String, Instant> = Default::default();
    let mut primary = 0usize;
    let restart = |c: &mut Cluster, i: usize| c.add_worker_via(i, &urls[i]);
    let train = crate::has_bin("liandan-train");
    let mut sweeps = Vec::new();
    let submit_round = |c: &Cluster, sweeps: &mut Vec<String>, round: u32| {
        sweeps.push(c.submit(&c.write(&format!("lines-{round}.yaml"), &spec(false, round))));
        if train {
            sweeps.push(c.submit(&c.write(&format!("train-{round}.yaml"), &spec(true, round))));
        }
    };
    submit_round(&c, &mut sweeps, 0);
    report.rounds = 1;
    let mut rng = Rng::keyed("liandan.chaos", &[seed]);
    let mut windows: Vec<Window> = Vec::new();
    let start = Instant::now();
    let going = |faults: usize| match length {
        Length::Secs(s) => start.elapsed() < Duration::from_secs(s),
        Length::Faults(n) => faults < n,
    };
    while going(primary) {
        std::thread::sleep(Duration::from_millis(700 + rng.below(1500)));
        // A client or disk fault first, now and then (before the process or
        // network fault, so a schedule's last fault stays the one it was).
        match rng2.below(8) {
            0 => {
                let stored: Vec<(String,)> = {
                    let db = rusqlite::Connection::open_with_flags(
                        c.dir.path().join("coordinator").join("coordinator.db"),
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .expect("db");
                    rows(&db, "SELECT job_id FROM checkpoints ORDER BY job_id", [])
                };
                if !stored.is_empty() {
                    let job = &stored[rng2.below(stored.len() as u64) as usize].0;
                    let chunks = rng2.below(3);
                    report
                        .faults
                        .push(format!("download cut after {chunks} chunks"));
                    cut_download(&rt, &c.url(), job, chunks);
                }
            }
            1 => {
                let name = format!("chaos-lines-cut{}", cut_sweeps.len());
                let ms = rng2.below(400);
                report.faults.push(format!("submit cut after {ms} ms"));
                let answered = crate::cut_submit(&rt, &c.url(), lines_spec(&name), ms);
                report.cut_submits.0 += u32::from(!answered);
                cut_sweeps.push(name);
            }
            2 => {
                let name = format!("chaos-doomed-{}", doomed.len());
                c.submit(&c.write(&format!("{name}.yaml"), &lines_spec(&name)));
                std::thread::sleep(Duration::from_millis(rng2.below(1500)));
                let ms = rng2.below(60);
                report.faults.push(format!("cancel cut after {ms} ms"));
                cut_cancel(&rt, &c.url(), &name, ms);
                doomed.push(name);
            }
            3 => {
                if let Some(fs) = &small_fs {
                    let d = 1500 + rng2.below(2500);
                    report
                        .faults
                        .push(format!("disk of worker 2 full for {d} ms"));
                    let from = now_secs();
                    let filler = fs.fill();
                    std::thread::sleep(Duration::from_millis(d));
                    let _ = std::fs::remove_file(filler);
                    // Its attempts may be lost meanwhile (a worker that cannot write).
                    windows.push(Window {
                        worker: 2,
                        from,
                        to: now_secs(),
                    });
                }
            }
            _ => {}
        }
        primary += 1;
        let i = rng.below(3) as usize;
        let from = now_secs();
        let kind = rng.below(8);
        match kind {
            0 => {
                report.faults.push(format!("kill -9 worker {i}"));
                c.workers[i].kill();
                std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
                restart(&mut c, i);
            }
            1 => {
                report.faults.push("kill -9 coordinator".into());
                c.restart_coordinator();
            }
            2 => {
                report.faults.push(format!("SIGTERM worker {i}"));
                c.workers[i].terminate(Duration::from_secs(20));
                restart(&mut c, i);
            }
            3 => {
                let d = 2500 + rng.below(2500);
                report
                    .faults
                    .push(format!("partition worker {i} for {d} ms"));
                proxies[i].cut();
                std::thread::sleep(Duration::from_millis(d));
                proxies[i].heal();
            }
            4 => {
                let d = 2500 + rng.below(2500);
                report.faults.push(format!("freeze worker {i} for {d} ms"));
                c.workers[i].signal(nix::sys::signal::Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(d));
                c.workers[i].signal(nix::sys::signal::Signal::SIGCONT);
            }
            5 => {
                report.faults.push(format!(
                    "partition worker {i}, kill -9 coordinator meanwhile"
                ));
                proxies[i].cut();
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                c.restart_coordinator();
                std::thread::sleep(Duration::from_millis(rng.below(2000)));
                proxies[i].heal();
            }
            7 => {
                let d = 2500 + rng.below(2500);
                report.faults.push(format!("freeze coordinator for {d} ms"));
                c.coordinator.signal(nix::sys::signal::Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(d));
                c.coordinator.signal(nix::sys::signal::Signal::SIGCONT);
            }
            _ => {
                let d = 200 + rng.below(800);
                report
                    .faults
                    .push(format!("SIGTERM worker {i}, kill -9 after {d} ms"));
                c.workers[i].signal(nix::sys::signal::Signal::SIGTERM);
                std::thread::sleep(Duration::from_millis(d));
                c.workers[i].kill();
                restart(&mut c, i);
            }
        }
        // Faults 1 and 7 happen to the coordinator only; the others to worker i.
        if kind != 1 && kind != 7 {
            windows.push(Window {
                worker: i,
                from,
                to: now_secs(),
            });
        }
        // A job the coordinator says runs on a worker whose journal does not
        // have it, for longer than any assignment takes, will never run.
        let now = Instant::now();
        let seen = c.running_not_held();
        nowhere_since.retain(|k, _| seen.contains(k));
        for k in seen {
            let since = *nowhere_since.entry(k.clone()).or_insert(now);
            if now.duration_since(since) >= Duration::from_secs(RUNNING_NOWHERE_SECS)
                && !report.running_nowhere.contains(&k)
            {
                report.running_nowhere.push(k);
            }
        }
        let unfinished =
            c.query_i64("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')");
        if unfinished < LOW_WATER && going(primary) {
            submit_round(&c, &mut sweeps, report.rounds);
            report.rounds += 1;
        }
    }
    // A cut-off submit may or may not have created its sweep.
    for name in &cut_sweeps {
        if c.cli(&["status", name]).status.success() {
            report.cut_submits.1 += 1;
            sweeps.push(name.clone());
        }
    }
    for s in sweeps.iter().chain(&doomed) {
        c.wait_finished(s, Duration::from_secs(300));
    }
    // A cancelled sweep's running jobs end as their workers stop them, and
    // its queued ones at once: none may be left (checked before the final
    // coordinator start, which would finish an interrupted cancel itself).
    let doomed_left = || {
        c.query_i64("SELECT COUNT(*) FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-doomed-%' AND j.state IN ('queued', 'running')")
    };
    if crate::eventually(Duration::from_secs(60), || {
        (doomed_left() == 0).then_some(())
    })
    .is_none()
    {
        report.cancel_problems.push(format!(
            "{} jobs of cancelled sweeps still queued or running a minute after their cancel",
            doomed_left()
        ));
    }
    // Stop the workers (drain), then look at what is left.
    for w in c.workers.iter_mut() {
        w.terminate(Duration::from_secs(30));
    }
    // A coordinator start collects orphaned checkpoint files (a crash between
    // an upload's rename and its row leaves one until then).
    c.restart_coordinator();
    std::thread::sleep(Duration::from_millis(300));
    const NOT_DOOMED: &str =
        "sweep_id NOT IN (SELECT id FROM sweeps WHERE name LIKE 'chaos-doomed-%')";
    report.jobs = c.query_i64(&format!("SELECT COUNT(*) FROM jobs WHERE {NOT_DOOMED}"));
    report.succeeded = c.query_i64(&format!(
        "SELECT COUNT(*) FROM jobs WHERE state='succeeded' AND {NOT_DOOMED}"
    ));
    report.failed = c.query_i64("SELECT COUNT(*) FROM jobs WHERE state='failed'");
    report.results_recorded_max_per_job =
        c.query_i64("SELECT COALESCE(MAX(result_recorded), 0) FROM jobs");
    report.attempts = c.query_i64("SELECT COUNT(*) FROM attempts");
    report.max_attempts_per_job = c.query_i64("SELECT COALESCE(MAX(attempt), 0) FROM jobs");
    report.results_missing =
        c.query_i64("SELECT COUNT(*) FROM jobs WHERE state='succeeded' AND result_recorded != 1");
    report.refused_stale = c.counter("refused_stale_writes");
    let db = rusqlite::Connection::open(c.dir.path().join("coordinator").join("coordinator.db"))
        .expect("db");
    report.integrity = db
        .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| e.to_string());
    // No metric record stored twice for an attempt (records carry a time, so
    // two equal lines are a duplicate delivery, not two reports).
    {
        let dup: Vec<(String, i64, i64)> = rows(&db, "SELECT job_id, attempt, COUNT(*) FROM metrics GROUP BY job_id, attempt, json HAVING COUNT(*) > 1", []);
        for (job, attempt, n) in dup {
            report.metric_duplicates.push(format!(
                "{job} attempt {attempt}: a metric record stored {n} times"
            ));
        }
    }
    // Every stored checkpoint is on disk at its recorded size and hash, and
    // every file on disk has its row.
    {
        let root = c.dir.path().join("coordinator").join("checkpoints");
        let stored: Vec<(String, i64, i64, String, String)> = rows(
            &db,
            "SELECT job_id, step, size, blake3, file FROM checkpoints",
            [],
        );
        let mut known = std::collections::HashSet::new();
        for (job, step, size, hash, file) in stored {
            let on_disk = std::fs::read(root.join(&file));
            match &on_disk {
                Ok(bytes) if bytes.len() as i64 == size => {
                    let got = blake3::hash(bytes).to_hex().to_string();
                    if got != hash {
                        report.checkpoint_problems.push(format!(
                            "{job} step {step}: {file} hashes to {got}, recorded {hash}"
                        ));
                    }
                }
                other => report.checkpoint_problems.push(format!(
                    "{job} step {step}: {file} is {:?} bytes, recorded {size}",
                    other.as_ref().map(|b| b.len()).map_err(|e| e.to_string())
                )),
            }
            known.insert(file);
        }
        for d in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let dname = d.file_name().to_string_lossy().to_string();
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let rel = format!("{dname}/{}", f.file_name().to_string_lossy());
                if !known.contains(&rel) {
                    report
                        .orphan_files
                        .push(format!("{rel}: a file without a row"));
                }
            }
        }
    }
    // Every succeeded job's result is its last metric record, and its best
    // the best of its records (the trainer sweeps maximise val_accuracy).
    {
        let jobs: Vec<(String, Option<f64>, Option<f64>)> = rows(&db, "SELECT j.id, j.final_metric, j.best_metric FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-train-%' AND j.state = 'succeeded'", []);
        for (job, fin, best) in jobs {
            let values: Vec<f64> = rows::<(String,)>(
                &db,
                "SELECT json FROM metrics WHERE job_id=?1 ORDER BY id",
                [&job],
            )
            .into_iter()
            .filter_map(|(j,)| {
                serde_json::from_str::<serde_json::Value>(&j)
                    .ok()?
                    .get("val_accuracy")?
                    .as_f64()
                    .filter(|x| x.is_finite())
            })
            .collect();
            let last = values.last().copied();
            let top = values.iter().copied().reduce(f64::max);
            if fin != last || best != top {
                report.metric_mismatches.push(format!(
                    "{job}: result {fin:?} best {best:?}, records say last {last:?} best {top:?}"
                ));
            }
        }
    }
    // A cut-off cancel either took (its jobs cancelled, or already done) or
    // did not (they ran to the end); nothing is left running or failed.
    {
        let bad: Vec<(String, String, String)> = rows(&db, "SELECT s.name, j.id, j.state FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-doomed-%' AND j.state NOT IN ('cancelled', 'succeeded')", []);
        for (sweep, job, state) in bad {
            report
                .cancel_problems
                .push(format!("{sweep} {job}: {state}"));
        }
    }
    // A lease expires only for a worker something happened to: killed, frozen
    // or cut off (until a lease and a reconnection after). Not for a worker
    // that was fine while the coordinator restarted or stalled.
    {
        // A worker keeps its id across restarts (it lives in its state dir).
        let ids: Vec<Option<String>> = c.workers.iter().map(worker_id).collect();
        let slack = c.opts.lease_timeout_secs + c.opts.restart_grace_secs + 2.0;
        let lost: Vec<(String, i64, String, f64)> = rows(&db, "SELECT job_id, attempt, worker_id, ended_at FROM attempts WHERE message LIKE '%lease expired%'", []);
        for (job, attempt, worker, at) in lost {
            let index = ids
                .iter()
                .position(|id| id.as_deref() == Some(worker.as_str()));
            let excused = windows
                .iter()
                .any(|w| Some(w.worker) == index && w.from - 1.0 <= at && at <= w.to + slack);
            if !excused {
                report.blameless_losses.push(format!(
                    "{job} attempt {attempt} on {worker} (worker {index:?}): lease expired at {at:.1} with no fault on that worker"
                ));
            }
        }
    }
    // Every attempt's log: lines 1..=max, each once.
    {
        let spans: Vec<(String, i64, i64, i64, i64)> = rows(&db, "SELECT job_id, attempt, COUNT(*), MIN(line), MAX(line) FROM logs GROUP BY job_id, attempt", []);
        for (job, attempt, n, lo, hi) in spans {
            if lo != 1 || n != hi {
                report.log_problems.push(format!(
                    "{job} attempt {attempt}: {n} lines spanning {lo}..{hi}"
                ));
            }
        }
    }
    // Command jobs: the final attempt printed every line, once, in order.
    {
        let jobs: Vec<(String, i64)> = rows(&db, "SELECT j.id, j.attempt FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-lines-%'", []);
        for (job, attempt) in jobs {
            let lines: Vec<String> = rows::<(String,)>(
                &db,
                "SELECT text FROM logs WHERE job_id=?1 AND attempt=?2 AND stream=0 ORDER BY line",
                rusqlite::params![job, attempt],
            )
            .into_iter()
            .map(|(t,)| t)
            .collect();
            let want: Vec<String> = (1..=LINES).map(|i| format!("line {i}")).collect();
            if lines != want {
                report.log_problems.push(format!(
                    "{job} attempt {attempt}: {} of {LINES} lines as printed",
                    lines.iter().zip(&want).filter(|(a, b)| a == b).count()
                ));
            }
        }
    }
    // Trainer jobs: the final summary equals an uninterrupted reference run, bit for bit.
    if train {
        let jobs: Vec<(String, String, i64)> = rows(&db, "SELECT j.id, t.params_json, j.seed FROM jobs j JOIN trials t ON t.id = j.trial_id JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-train-%'", []);
        let mut refs: std::collections::HashMap<(String, i64), String> =
            std::collections::HashMap::new();
        for (job, params, seed) in jobs {
            let got: Option<String> = db
                .query_row("SELECT json FROM metrics WHERE job_id=?1 AND json LIKE '%\"final\":true%' ORDER BY id DESC LIMIT 1", [&job], |r| r.get(0))
                .ok();
            let want = refs
                .entry((params.clone(), seed))
                .or_insert_with(|| reference(c.dir.path(), &params, seed))
                .clone();
            if got.as_deref() != Some(want.as_str()) {
                report
                    .trainer_mismatches
                    .push(format!("{job}: {got:?} != reference {want}"));
            }
        }
    }
    // No job process outlives its worker.
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if pid.chars().all(|ch| ch.is_ascii_digit()) && cwd_under(&pid, c.dir.path()) {
                let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                report.leftover_processes.push(format!("pid {pid}: {cmd}"));
            }
        }
    }
    report
}

/// The final summary line of an uninterrupted run with these parameters.
fn reference(dir: &Path, params_json: &str, seed: i64) -> String {
    let params: serde_json::Value = serde_json::from_str(params_json).unwrap_or_default();
    let mut args: Vec<String> = params
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("--{k}={}", liandan_common::sweep::command::format_value(v)))
                .collect()
        })
        .unwrap_or_default();
    args.push(format!("--seed={seed}"));
    let metrics = dir.join(format!(
        "ref-{}.jsonl",
        liandan_common::ids::short_hash(&[params_json.as_bytes(), &seed.to_le_bytes()], 6)
    ));
    let out = std::process::Command::new(bin("liandan-train"))
        .args(&args)
        .env("LIANDAN_METRICS_FILE", &metrics)
        .output()
        .expect("reference run");
    assert!(
        out.status.success(),
        "reference run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("\"final\":true"))
        .unwrap_or_default();
    // Same canonical JSON as the coordinator stores (it re-serialises the worker's parse).
    serde_json::from_str::<serde_json::Value>(last)
        .map(|v| v.to_string())
        .unwrap_or_default()
}
