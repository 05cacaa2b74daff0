//! Retention of job directories (`<state_dir>/jobs/<job>/<attempt>/`).
//!
//! An attempt's directory holds its parameters, metrics file and checkpoints.
//! It goes once nothing in it is still owed to the coordinator: the attempt is
//! not running, its journal row is gone (the coordinator acknowledged its exit
//! record, so every record it produced) and no checkpoint of it waits for
//! upload. A failed attempt's directory is kept `keep_failed_days` for
//! inspection. A job's directory (with its cached resume copies) goes when no
//! attempt directory is left in it.
//!
//! Order matters: the directories are listed first, then the journal and the
//! pending uploads are read. An attempt is journaled before its directory is
//! created and its uploads are recorded before its exit, so a directory seen
//! in the listing whose row is missing from the later read was acknowledged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The file in an attempt directory naming how the attempt ended.
pub const OUTCOME_FILE: &str = "outcome";

/// Outcomes whose directories are removed at once (nothing to inspect).
fn finished_cleanly(outcome: &str) -> bool {
    matches!(
        outcome,
        "succeeded" | "cancelled" | "pruned" | "preempted" | "interrupted" | "disk_full"
    )
}

/// Records how an attempt ended, for retention (best effort). The job had
/// the directory: whatever it left under the name is removed (never
/// followed) and the file made anew, refusing a link or FIFO planted since.
pub fn write_outcome(dir: &Path, outcome: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !dir.is_dir() {
        return;
    }
    let path = dir.join(OUTCOME_FILE);
    let _ = std::fs::remove_file(&path);
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(outcome.as_bytes()));
    if let Err(e) = made {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot record how the attempt ended");
    }
}

/// How an attempt ended, as [`write_outcome`] recorded it (read without
/// following a link, at most 64 bytes).
fn read_outcome(dir: &Path) -> Option<(String, std::fs::Metadata)> {
    use std::io::Read;
    let f = crate::jail::open_job_file(dir, OUTCOME_FILE).ok()?;
    let meta = f.metadata().ok()?;
    let mut text = String::new();
    f.take(64).read_to_string(&mut text).ok()?;
    Some((text, meta))
}

/// What a pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Attempt directories removed.
    pub removed: u64,
    /// Attempt directories kept.
    pub kept: u64,
    /// Bytes under the job directories after the pass.
    pub bytes: u64,
}

/// The attempt directories under `jobs_dir`, as (job, attempt, path).
pub fn list(jobs_dir: &Path) -> Vec<(String, u64, PathBuf)> {
    let mut out = Vec::new();
    let Ok(jobs) = std::fs::read_dir(jobs_dir) else {
        return out;
    };
    for j in jobs.flatten() {
        let job = j.file_name().to_string_lossy().to_string();
        if !j.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(attempts) = std::fs::read_dir(j.path()) else {
            continue;
        };
        for a in attempts.flatten() {
            let Some(n) = a.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if a.file_type().is_ok_and(|t| t.is_dir()) {
                out.push((job.clone(), n, a.path()));
            }
        }
    }
    out
}

/// Removes what `owed` does not hold on to. `listed` must come from [`list`]
/// called before `owed` was computed (see the module docs). Every attempt
/// directory of a job with an owed attempt stays (a new attempt may resume
/// from a checkpoint in an older one's directory). Before touching a job's
/// directories, `claim(job)` must say yes (no attempt of it started since
/// `owed` was read, and none will create its directories until
/// `release(job)`), so removal never races a new attempt.
pub fn collect(
    jobs_dir: &Path,
    listed: Vec<(String, u64, PathBuf)>,
    owed: &HashSet<(String, u64)>,
    keep_failed: Duration,
    now: SystemTime,
    claim: &dyn Fn(&str) -> bool,
    release: &dyn Fn(&str),
) -> Pass {
    let mut pass = Pass::default();
    let owed_jobs: HashSet<&str> = owed.iter().map(|(j, _)| j.as_str()).collect();
    let mut by_job: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for (job, _attempt, dir) in listed {
        by_job.entry(job).or_default().push(dir);
    }
    for (job, dirs) in by_job {
        if owed_jobs.contains(job.as_str()) {
            pass.kept += dirs.len() as u64;
            continue;
        }
        let (doomed, kept): (Vec<PathBuf>, Vec<PathBuf>) =
            dirs.into_iter().partition(|d| expired(d, keep_failed, now));
        pass.kept += kept.len() as u64;
        if doomed.is_empty() {
            continue;
        }
        if !claim(&job) {
            pass.kept += doomed.len() as u64;
            continue;
        }
        for dir in doomed {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => pass.removed += 1,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a finished job directory");
                    pass.kept += 1;
                }
            }
        }
        // No attempt directory left (only cached resume copies): the job's goes.
        if kept.is_empty() {
            let dir = jobs_dir.join(&job);
            let has_attempt = std::fs::read_dir(&dir).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|s| s.parse::<u64>().is_ok())
                })
            });
            if !has_attempt {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        release(&job);
    }
    pass.bytes = du(jobs_dir);
    pass
}

/// Whether an attempt directory nothing is owed from may go now: at once
/// for a clean ending (or none recorded: a crash, an older worker), after
/// `keep_failed` for a failure.
fn expired(dir: &Path, keep_failed: Duration, now: SystemTime) -> bool {
    match read_outcome(dir) {
        None => true,
        Some((o, _)) if finished_cleanly(o.trim()) => true,
        Some((_, meta)) => meta
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= keep_failed),
    }
}

/// Bytes of the regular files under `dir` (symlinks are not followed).
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Bytes free to an unprivileged user on the file system holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(root: &Path, job: &str, n: u64, outcome: Option<&str>) -> PathBuf {
        let d = root.join(job).join(n.to_string());
        std::fs::create_dir_all(d.join("checkpoints")).expect("mkdir");
        std::fs::write(d.join("checkpoints").join("step-1.ckpt"), vec![0u8; 1000]).expect("write");
        if let Some(o) = outcome {
            std::fs::write(d.join(OUTCOME_FILE), o).expect("write");
        }
        d
    }

    #[test]
    fn finished_attempts_go_and_owed_or_recently_failed_ones_stay() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let done = attempt(root, "jb-done", 1, Some("succeeded"));
        std::fs::write(root.join("jb-done").join("resume-1-abc.ckpt"), b"x").expect("write");
        let owed = attempt(root, "jb-owed", 1, Some("succeeded"));
        let running = attempt(root, "jb-run", 2, None);
        let failed = attempt(root, "jb-fail", 1, Some("failed"));
        let crashed = attempt(root, "jb-crash", 1, None);
        let keep: HashSet<(String, u64)> =
            [("jb-owed".to_string(), 1), ("jb-run".to_string(), 2)].into();
        let listed = list(root);
        assert_eq!(listed.len(), 5);
        let now = SystemTime::now();
        let pass = collect(
            root,
            listed,
            &keep,
            Duration::from_secs(3600),
            now,
            &|_| true,
            &|_| {},
        );
        assert_eq!(pass.removed, 2, "{pass:?}");
        assert_eq!(pass.kept, 3);
        assert!(
            !done.exists() && !root.join("jb-done").exists(),
            "a finished job's directory goes, resume copies too"
        );
        assert!(!crashed.exists());
        assert!(owed.exists() && running.exists() && failed.exists());
        assert_eq!(
            pass.bytes,
            3000 + "succeeded".len() as u64 + "failed".len() as u64
        );
        // A day later the failed attempt's time is up.
        let later = now + Duration::from_secs(2 * 3600);
        let pass = collect(
            root,
            list(root),
            &keep,
            Duration::from_secs(3600),
            later,
            &|_| true,
            &|_| {},
        );
        assert_eq!(pass.removed, 1);
        assert!(!failed.exists() && !root.join("jb-fail").exists());
        assert!(owed.exists() && running.exists());
    }

    #[test]
    fn an_owed_attempt_keeps_every_directory_of_its_job() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        // Attempt 1 was preempted; attempt 2 is starting and may resume from
        // attempt 1's checkpoint (a local copy in its directory).
        let prev = attempt(root, "jb-a", 1, Some("preempted"));
        std::fs::write(root.join("jb-a").join("resume-1-abc.ckpt"), b"x").expect("write");
        let keep: HashSet<(String, u64)> = [("jb-a".to_string(), 2)].into();
        let pass = collect(
            root,
            list(root),
            &keep,
            Duration::ZERO,
            SystemTime::now(),
            &|_| true,
            &|_| {},
        );
        assert_eq!(pass.removed, 0);
        assert!(prev.exists() && root.join("jb-a").join("resume-1-abc.ckpt").exists());
    }

    #[test]
    fn a_job_that_cannot_be_claimed_is_left_alone() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let done = attempt(root, "jb-b", 1, Some("succeeded"));
        // An attempt of it started after the owed set was read.
        let claimed = std::cell::RefCell::new(Vec::new());
        let pass = collect(
            root,
            list(root),
            &HashSet::new(),
            Duration::ZERO,
            SystemTime::now(),
            &|j| {
                claimed.borrow_mut().push(j.to_string());
                false
            },
            &|_| panic!("released what was not claimed"),
        );
        assert_eq!((pass.removed, pass.kept), (0, 1));
        assert!(done.exists());
        assert_eq!(claimed.into_inner(), vec!["jb-b".to_string()]);
    }
}
