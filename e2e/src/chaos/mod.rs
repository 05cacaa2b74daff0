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
//!
//! - [`faults`]: the tools of the faults (a cuttable proxy, a small file
//!   system to fill, RPCs cut off mid-call).
//! - [`schedule`]: the cluster and the seeded schedule of faults.
//! - [`checks`]: what must hold afterwards, read from the database and disk.

mod checks;
mod faults;
mod schedule;

pub use faults::Proxy;

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

/// Every row of `sql`, read as the tuple `T` (the check fails loudly on a
/// query it cannot run: the harness's SQL is wrong, not the system).
pub(super) fn rows<T>(db: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> Vec<T>
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
    let mut s = schedule::Schedule::start(seed);
    s.inject(length);
    s.settle();
    checks::all(s)
}
