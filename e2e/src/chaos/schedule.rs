//! The cluster under test and the seeded schedule of faults: a process or
//! network fault at every step, a client or disk fault now and then, a new
//! round of sweeps whenever the cluster runs low on work; then the settling
//! (everything finishes, the workers drain, the coordinator restarts).

use super::faults::{cut_cancel, cut_download, Proxy, SmallFs};
use super::{lines_spec, rows, spec, Length, Report, Window, LOW_WATER};
use crate::{Cluster, Opts};
use liandan_common::rng::Rng;
use liandan_common::time::now_secs;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Jobs running on a worker that does not hold them, longer than this, are
/// lost (an assignment arrives in milliseconds; no fault lasts this long).
const RUNNING_NOWHERE_SECS: u64 = 20;

/// One chaos run: the cluster, what the faults use, and what they did.
pub(super) struct Schedule {
    pub(super) c: Cluster,
    pub(super) report: Report,
    proxies: Vec<Proxy>,
    urls: Vec<String>,
    rt: tokio::runtime::Runtime,
    small_fs: Option<SmallFs>,
    /// The process and network faults.
    rng: Rng,
    /// The client faults draw from their own stream, so the seeds of earlier
    /// schedules still replay the same process and network faults.
    rng2: Rng,
    /// Sweeps whose submit was cut off (they may or may not exist).
    cut_sweeps: Vec<String>,
    /// Sweeps whose cancel was sent and cut off.
    pub(super) doomed: Vec<String>,
    /// When something happened to which worker.
    pub(super) windows: Vec<Window>,
    pub(super) sweeps: Vec<String>,
    nowhere_since: HashMap<String, Instant>,
    /// Whether trainer sweeps run (liandan-train is built).
    pub(super) train: bool,
}

impl Schedule {
    /// A coordinator and three workers, each behind its own proxy (and
    /// always coming back behind it), worker 2 on a small file system where
    /// one can be mounted; the first round of sweeps submitted.
    pub(super) fn start(seed: u64) -> Schedule {
        let report = Report {
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
        let small_fs = SmallFs::mount(&c.dir.path().join("worker-2"), 64 << 20);
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
        let mut s = Schedule {
            c,
            report,
            proxies,
            urls,
            rt,
            small_fs,
            rng: Rng::keyed("liandan.chaos", &[seed]),
            rng2: Rng::keyed("liandan.chaos.clients", &[seed]),
            cut_sweeps: Vec::new(),
            doomed: Vec::new(),
            windows: Vec::new(),
            sweeps: Vec::new(),
            nowhere_since: HashMap::new(),
            train: crate::has_bin("liandan-train"),
        };
        s.report.disk_full = s.small_fs.is_some();
        s.submit_round();
        s
    }

    /// A round of sweeps: command jobs, and trainer jobs where it is built.
    fn submit_round(&mut self) {
        let (c, round) = (&self.c, self.report.rounds);
        let lines = c.write(&format!("lines-{round}.yaml"), &spec(false, round));
        self.sweeps.push(c.submit(&lines));
        if self.train {
            let train = c.write(&format!("train-{round}.yaml"), &spec(true, round));
            self.sweeps.push(c.submit(&train));
        }
        self.report.rounds += 1;
    }

    fn restart(&mut self, i: usize) {
        self.c.add_worker_via(i, &self.urls[i]);
    }

    /// Faults until `length` is over.
    pub(super) fn inject(&mut self, length: Length) {
        let start = Instant::now();
        let going = |faults: usize| match length {
            Length::Secs(s) => start.elapsed() < Duration::from_secs(s),
            Length::Faults(n) => faults < n,
        };
        let mut primary = 0usize;
        while going(primary) {
            std::thread::sleep(Duration::from_millis(700 + self.rng.below(1500)));
            // A client or disk fault first, now and then (before the process or
            // network fault, so a schedule's last fault stays the one it was).
            self.client_fault();
            primary += 1;
            self.process_fault();
            self.watch_running_nowhere();
            let unfinished = self
                .c
                .query_i64("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')");
            if unfinished < LOW_WATER && going(primary) {
                self.submit_round();
            }
        }
    }

    /// One in two draws: a download or a submit or a cancel cut off, or the
    /// disk of worker 2 full for a while.
    fn client_fault(&mut self) {
        match self.rng2.below(8) {
            0 => {
                let stored: Vec<(String,)> = {
                    let db = rusqlite::Connection::open_with_flags(
                        self.c.dir.path().join("coordinator").join("coordinator.db"),
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .expect("db");
                    rows(&db, "SELECT job_id FROM checkpoints ORDER BY job_id", [])
                };
                if !stored.is_empty() {
                    let job = &stored[self.rng2.below(stored.len() as u64) as usize].0;
                    let chunks = self.rng2.below(3);
                    self.report
                        .faults
                        .push(format!("download cut after {chunks} chunks"));
                    cut_download(&self.rt, &self.c.url(), job, chunks);
                }
            }
            1 => {
                let name = format!("chaos-lines-cut{}", self.cut_sweeps.len());
                let ms = self.rng2.below(400);
                self.report.faults.push(format!("submit cut after {ms} ms"));
                let answered = crate::cut_submit(&self.rt, &self.c.url(), lines_spec(&name), ms);
                self.report.cut_submits.0 += u32::from(!answered);
                self.cut_sweeps.push(name);
            }
            2 => {
                let name = format!("chaos-doomed-{}", self.doomed.len());
                let c = &self.c;
                c.submit(&c.write(&format!("{name}.yaml"), &lines_spec(&name)));
                std::thread::sleep(Duration::from_millis(self.rng2.below(1500)));
                let ms = self.rng2.below(60);
                self.report.faults.push(format!("cancel cut after {ms} ms"));
                cut_cancel(&self.rt, &self.c.url(), &name, ms);
                self.doomed.push(name);
            }
            3 => {
                if let Some(fs) = &self.small_fs {
                    let d = 1500 + self.rng2.below(2500);
                    self.report
                        .faults
                        .push(format!("disk of worker 2 full for {d} ms"));
                    let from = now_secs();
                    let filler = fs.fill();
                    std::thread::sleep(Duration::from_millis(d));
                    let _ = std::fs::remove_file(filler);
                    // Its attempts may be lost meanwhile (a worker that cannot write).
                    self.windows.push(Window {
                        worker: 2,
                        from,
                        to: now_secs(),
                    });
                }
            }
            _ => {}
        }
    }

    /// A process or network fault, to a worker or to the coordinator.
    fn process_fault(&mut self) {
        let i = self.rng.below(3) as usize;
        let from = now_secs();
        let kind = self.rng.below(8);
        match kind {
            0 => {
                self.report.faults.push(format!("kill -9 worker {i}"));
                self.c.workers[i].kill();
                std::thread::sleep(Duration::from_millis(200 + self.rng.below(800)));
                self.restart(i);
            }
            1 => {
                self.report.faults.push("kill -9 coordinator".into());
                self.c.restart_coordinator();
            }
            2 => {
                self.report.faults.push(format!("SIGTERM worker {i}"));
                self.c.workers[i].terminate(Duration::from_secs(20));
                self.restart(i);
            }
            3 => {
                let d = 2500 + self.rng.below(2500);
                self.report
                    .faults
                    .push(format!("partition worker {i} for {d} ms"));
                self.proxies[i].cut();
                std::thread::sleep(Duration::from_millis(d));
                self.proxies[i].heal();
            }
            4 => {
                let d = 2500 + self.rng.below(2500);
                self.report
                    .faults
                    .push(format!("freeze worker {i} for {d} ms"));
                self.c.workers[i].signal(nix::sys::signal::Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(d));
                self.c.workers[i].signal(nix::sys::signal::Signal::SIGCONT);
            }
            5 => {
                self.report.faults.push(format!(
                    "partition worker {i}, kill -9 coordinator meanwhile"
                ));
                self.proxies[i].cut();
                std::thread::sleep(Duration::from_millis(500 + self.rng.below(1500)));
                self.c.restart_coordinator();
                std::thread::sleep(Duration::from_millis(self.rng.below(2000)));
                self.proxies[i].heal();
            }
            7 => {
                let d = 2500 + self.rng.below(2500);
                self.report
                    .faults
                    .push(format!("freeze coordinator for {d} ms"));
                self.c.coordinator.signal(nix::sys::signal::Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(d));
                self.c.coordinator.signal(nix::sys::signal::Signal::SIGCONT);
            }
            _ => {
                let d = 200 + self.rng.below(800);
                self.report
                    .faults
                    .push(format!("SIGTERM worker {i}, kill -9 after {d} ms"));
                self.c.workers[i].signal(nix::sys::signal::Signal::SIGTERM);
                std::thread::sleep(Duration::from_millis(d));
                self.c.workers[i].kill();
                self.restart(i);
            }
        }
        // Faults 1 and 7 happen to the coordinator only; the others to worker i.
        if kind != 1 && kind != 7 {
            self.windows.push(Window {
                worker: i,
                from,
                to: now_secs(),
            });
        }
    }

    /// A job the coordinator says runs on a worker whose journal does not
    /// have it, for longer than any assignment takes, will never run.
    fn watch_running_nowhere(&mut self) {
        let now = Instant::now();
        let seen = self.c.running_not_held();
        self.nowhere_since.retain(|k, _| seen.contains(k));
        for k in seen {
            let since = *self.nowhere_since.entry(k.clone()).or_insert(now);
            if now.duration_since(since) >= Duration::from_secs(RUNNING_NOWHERE_SECS)
                && !self.report.running_nowhere.contains(&k)
            {
                self.report.running_nowhere.push(k);
            }
        }
    }

    /// After the faults: every sweep finishes, a cancelled sweep's jobs are
    /// all ended, the workers drain and the coordinator starts once more
    /// (it collects orphaned checkpoint files at start).
    pub(super) fn settle(&mut self) {
        // A cut-off submit may or may not have created its sweep.
        for name in &self.cut_sweeps {
            if self.c.cli(&["status", name]).status.success() {
                self.report.cut_submits.1 += 1;
                self.sweeps.push(name.clone());
            }
        }
        for s in self.sweeps.iter().chain(&self.doomed) {
            self.c.wait_finished(s, Duration::from_secs(300));
        }
        // A cancelled sweep's running jobs end as their workers stop them, and
        // its queued ones at once: none may be left (checked before the final
        // coordinator start, which would finish an interrupted cancel itself).
        let c = &self.c;
        let doomed_left = || {
            c.query_i64("SELECT COUNT(*) FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE s.name LIKE 'chaos-doomed-%' AND j.state IN ('queued', 'running')")
        };
        if crate::eventually(Duration::from_secs(60), || {
            (doomed_left() == 0).then_some(())
        })
        .is_none()
        {
            let left = doomed_left();
            self.report.cancel_problems.push(format!(
                "{left} jobs of cancelled sweeps still queued or running a minute after their cancel"
            ));
        }
        // Stop the workers (drain), then look at what is left.
        for w in self.c.workers.iter_mut() {
            w.terminate(Duration::from_secs(30));
        }
        // A coordinator start collects orphaned checkpoint files (a crash between
        // an upload's rename and its row leaves one until then).
        self.c.restart_coordinator();
        std::thread::sleep(Duration::from_millis(300));
    }
}
