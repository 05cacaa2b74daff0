//! What keeps a job inside its own attempt: the user it runs as (`job_user`),
//! the cgroup that holds every process it starts (`job_cgroups`), and how the
//! worker opens files a job wrote (never through a link, never a FIFO).
//!
//! With `job_user` set, the worker (root, or holding the capabilities listed
//! in [`JobUser::resolve`]) starts each job as that user: the state dir is
//! 0711 with private files, `jobs/` and each `jobs/JOB/` are the worker's and
//! 0711 (not listable), and only a running attempt's own directory belongs to
//! the job user (it goes back to the worker's user, 0700, when the attempt
//! ends). Jobs on one worker share the job user, so a running job that knows
//! another running job's id can reach that job's directory; separate users
//! need separate workers.
//!
//! With cgroups (v2, where the worker may create groups under its own, as
//! systemd's `Delegate=yes` allows), each attempt runs in
//! `OWN/liandan-HASH/JOB.ATTEMPT`; a process that left the job's process
//! group (`setsid`) is still in it, and is killed with the rest when the
//! attempt ends or is cancelled.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The unprivileged user jobs run as.
#[derive(Clone, Debug)]
pub struct JobUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// Capabilities a worker needs to run jobs as another user: start them as
/// it, hand it the attempt's directory, take the directory back, and signal
/// its processes.
const NEEDED_CAPS: [(u32, &str); 6] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
];

impl JobUser {
    /// Looks `name` up and checks that this worker can run jobs as it.
    pub fn resolve(name: &str) -> Result<JobUser, String> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("job_user {name:?}: cannot look the user up: {e}"))?
            .ok_or_else(|| {
                format!(
                    "job_user {name:?}: no such user; create it (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or leave job_user empty"
                )
            })?;
        if user.uid.is_root() {
            return Err(format!(
                "job_user {name:?} is root: jobs must run as an unprivileged user"
            ));
        }
        if user.uid == nix::unistd::geteuid() {
            return Err(format!(
                "job_user {name:?} is the worker's own user: its jobs could still read and change the worker's state; create a separate user for jobs"
            ));
        }
        let have = effective_caps();
        let missing: Vec<&str> = NEEDED_CAPS
            .iter()
            .filter(|(bit, _)| have & (1u64 << bit) == 0)
            .map(|(_, n)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "job_user {name:?}: the worker must run as root, or with the capabilities {all}, to start jobs as another user; missing: {miss} (in the systemd unit: AmbientCapabilities={all} and the same in CapabilityBoundingSet=)",
                all = NEEDED_CAPS.map(|(_, n)| n).join(" "),
                miss = missing.join(" "),
            ));
        }
        let cname = std::ffi::CString::new(name)
            .map_err(|_| format!("job_user {name:?}: not a user name"))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok(JobUser {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
        })
    }

    /// Whether this user may enter (search) the directory with `meta`.
    fn may_enter(&self, meta: &std::fs::Metadata) -> bool {
        let mode = meta.mode();
        if meta.uid() == self.uid {
            mode & 0o100 != 0
        } else if self.groups.contains(&meta.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }

    /// Makes the state dir and `jobs/` enterable (not listable) by the job
    /// user, and checks every directory above them lets it through: each
    /// attempt's directory is under `jobs/`.
    pub fn open_state_dir(&self, state_dir: &Path, jobs_dir: &Path) -> Result<(), String> {
        for d in [state_dir, jobs_dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("cannot make {} enterable by job_user: {e}", d.display()))?;
        }
        for d in state_dir.ancestors().skip(1) {
            let meta = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
            if !self.may_enter(&meta) {
                return Err(format!(
                    "job_user {:?} cannot reach the job directories under {}: {} is mode {:o} owned by uid {}; let others through it (chmod o+x {}) or choose a state_dir they can reach",
                    self.name,
                    state_dir.display(),
                    d.display(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                    d.display(),
                ));
            }
        }
        Ok(())
    }

    /// Hands the attempt's directory (and what the worker wrote in it) to the
    /// job user; `job_dir` above it stays the worker's, enterable only.
    pub fn give(&self, job_dir: &Path, attempt_dir: &Path) -> std::io::Result<()> {
        std::fs::set_permissions(job_dir, std::fs::Permissions::from_mode(0o711))?;
        for e in std::fs::read_dir(attempt_dir)? {
            let p = e?.path();
            std::os::unix::fs::lchown(&p, Some(self.uid), Some(self.gid))?;
        }
        std::os::unix::fs::lchown(attempt_dir, Some(self.uid), Some(self.gid))?;
        std::fs::set_permissions(attempt_dir, std::fs::Permissions::from_mode(0o700))
    }

    /// A file the job must read (the checkpoint it resumes from): hard-linked
    /// into its own directory and given to it, so nothing of another attempt
    /// or job is opened to it. Falls back to a copy across file systems.
    pub fn lend(&self, file: &Path, attempt_dir: &Path) -> std::io::Result<PathBuf> {
        let name = file
            .file_name()
            .map(|n| format!("resume-{}", n.to_string_lossy()))
            .unwrap_or_else(|| "resume.ckpt".into());
        let dest = attempt_dir.join(name);
        let _ = std::fs::remove_file(&dest);
        if std::fs::hard_link(file, &dest).is_err() {
            std::fs::copy(file, &dest)?;
        }
        std::os::unix::fs::lchown(&dest, Some(self.uid), Some(self.gid))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
        Ok(dest)
    }

    /// Takes an ended attempt's directory back from the job user.
    pub fn take_back(attempt_dir: &Path) {
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let _ = std::os::unix::fs::lchown(attempt_dir, Some(uid), Some(gid));
        let _ = std::fs::set_permissions(attempt_dir, std::fs::Permissions::from_mode(0o700));
    }
}

/// The effective capability set of this process (/proc/self/status CapEff).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// What the child does between fork and exec, in this order: join the
/// attempt's cgroup, then drop to the job user and every capability. Only
/// async-signal-safe calls.
pub struct PreExec {
    cgroup_procs: Option<RawFd>,
    /// uid, gid and the supplementary groups (made before the fork).
    user: Option<(u32, nix::unistd::Gid, Vec<nix::unistd::Gid>)>,
}

impl PreExec {
    pub fn new(cgroup_procs: Option<RawFd>, user: Option<&JobUser>) -> PreExec {
        PreExec {
            cgroup_procs,
            user: user.map(|u| {
                (
                    u.uid,
                    nix::unistd::Gid::from_raw(u.gid),
                    u.groups
                        .iter()
                        .map(|g| nix::unistd::Gid::from_raw(*g))
                        .collect(),
                )
            }),
        }
    }

    pub fn run(&self) -> std::io::Result<()> {
        if let Some(fd) = self.cgroup_procs {
            // "0" moves the writing process itself.
            let n = unsafe { nix::libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // A worker that is not root but holds capabilities (ambient, from its
        // unit) would pass them on to every job across exec: cleared always,
        // whichever user the job runs as. (A root worker's jobs without
        // job_user run as root, as the README says.)
        // SAFETY: prctl with valid arguments; no memory is shared.
        let r = unsafe {
            nix::libc::prctl(
                nix::libc::PR_CAP_AMBIENT,
                nix::libc::PR_CAP_AMBIENT_CLEAR_ALL as nix::libc::c_ulong,
                0 as nix::libc::c_ulong,
                0 as nix::libc::c_ulong,
                0 as nix::libc::c_ulong,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: a kernel without ambient capabilities (< 4.3).
            if e.raw_os_error() != Some(nix::libc::EINVAL) {
                return Err(e);
            }
        }
        if let Some((uid, gid, groups)) = &self.user {
            nix::unistd::setgroups(groups)?;
            nix::unistd::setgid(*gid)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(*uid))?;
            drop_all_caps()?;
        }
        Ok(())
    }
}

/// Empties this process's effective, permitted and inheritable capability
/// sets (capset(2), version 3). Async-signal-safe.
fn drop_all_caps() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: both pointers are valid for the call; the kernel only reads them.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_capset, &header, data.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where this worker creates its jobs' cgroups.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
}

/// One attempt's cgroup.
pub struct JobCgroup {
    dir: PathBuf,
    procs: File,
}

impl Cgroups {
    /// Opens (creates) this worker's cgroup for jobs under its own, per
    /// `mode` ("auto", "required" or "off"), and kills and removes whatever a
    /// previous run of this worker left in it. `Ok(None)`: jobs are tracked by
    /// process group only.
    pub fn open(mode: &str, state_dir: &Path) -> Result<Option<Cgroups>, String> {
        if mode == "off" {
            return Ok(None);
        }
        let found = own_cgroup_dir().and_then(|own| {
            let tag = blake3::hash(state_dir.as_os_str().as_encoded_bytes()).to_hex();
            let base = own.join(format!("liandan-{}", &tag[..12]));
            match std::fs::create_dir(&base) {
                Ok(()) => Ok(base),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(base),
                Err(e) => Err(format!("cannot create {}: {e}", base.display())),
            }
        });
        match found {
            Ok(base) => {
                let cg = Cgroups { base };
                cg.remove_stale();
                tracing::info!(dir = %cg.base.display(), "jobs run in their own cgroups");
                Ok(Some(cg))
            }
            Err(why) if mode == "required" => Err(format!(
                "job_cgroups = \"required\" but no cgroup can be made for jobs: {why} (under systemd, set Delegate=yes in the unit; or set job_cgroups = \"auto\")"
            )),
            Err(why) => {
                tracing::warn!(reason = %why, "jobs are tracked by process group only (no cgroup v2 for them): a job's process that leaves its group survives the job");
                Ok(None)
            }
        }
    }

    /// A new cgroup for one attempt, with its `cgroup.procs` open for the child.
    pub fn create(&self, job: &str, attempt: u64) -> std::io::Result<JobCgroup> {
        let dir = self.base.join(format!("{job}.{attempt}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Left by an attempt that crashed with us: empty it first.
                kill_all(&dir);
            }
            Err(e) => return Err(e),
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(dir.join("cgroup.procs"))?;
        Ok(JobCgroup { dir, procs })
    }

    fn remove_stale(&self) {
        let Ok(rd) = std::fs::read_dir(&self.base) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::warn!(cgroup = %e.path().display(), "killing what an attempt from before the restart left running");
                kill_all(&e.path());
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

impl Cgroups {
    /// Removes this worker's (empty) cgroup for jobs, when it exits.
    pub fn close(&self) {
        let _ = std::fs::remove_dir(&self.base);
    }
}

impl JobCgroup {
    /// The fd the child writes itself into.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Sends `sig` to every process in the attempt's cgroup.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal_all(&self.dir, sig);
    }

    /// Kills every process left in the cgroup and removes it (waiting up to
    /// five seconds for the kernel to empty it).
    pub async fn remove(self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            kill_all(&self.dir);
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(cgroup = %self.dir.display(), error = %e, "cannot remove a job's cgroup");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// SIGKILL to every process in the cgroup `dir`: `cgroup.kill` where the
/// kernel has it (5.14), else each pid in `cgroup.procs`.
fn kill_all(dir: &Path) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
    {
        if f.write_all(b"1").is_ok() {
            return;
        }
    }
    signal_all(dir, nix::sys::signal::Signal::SIGKILL);
}

fn signal_all(dir: &Path, sig: nix::sys::signal::Signal) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// This process's cgroup v2 directory: the `0::PATH` line of
/// /proc/self/cgroup under the cgroup2 mount of /proc/self/mountinfo.
fn own_cgroup_dir() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or("no cgroup2 file system is mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process is in no cgroup v2 hierarchy")?;
    Ok(mount.join(path.trim().trim_start_matches('/')))
}

/// Opens `name` in the directory `dir` as a job left it: `dir` itself must
/// not be a symbolic link, nor `name`; `name` must be a regular file with one
/// link (a hard link could name a file the job may not read). Never blocks
/// (a FIFO is refused, not waited on).
pub fn open_job_file(dir: &Path, name: &str) -> std::io::Result<File> {
    use nix::fcntl::OFlag;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir)?;
    let fd = nix::fcntl::openat(
        &d,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let f = File::from(fd);
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other(format!(
            "{name} is not a regular file"
        )));
    }
    if meta.nlink() != 1 {
        // ResourceBusy: maybe only for now (a job that publishes by link,
        // then unlink), so callers look again later.
        return Err(std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            format!(
                "{name} has {} hard links (refused: it could be another file's)",
                meta.nlink()
            ),
        ));
    }
    Ok(f)
}

/// [`open_job_file`] for a full path.
pub fn open_job_path(path: &Path) -> std::io::Result<File> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{}: not a file path",
            path.display()
        )));
    };
    open_job_file(dir, &name.to_string_lossy())
}

/// The names in the directory `dir` (not followed if it is a link).
pub fn list_job_dir(dir: &Path) -> std::io::Result<Vec<String>> {
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir)?;
    // The directory as opened, whatever its path names now.
    let names = std::fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_are_opened_only_when_regular_unlinked_and_not_through_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("checkpoints");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join("step-1.ckpt"), b"mine").expect("write");
        let secret = t.path().join("secret");
        std::fs::write(&secret, b"worker's").expect("write");
        std::os::unix::fs::symlink(&secret, d.join("step-2.ckpt")).expect("symlink");
        std::fs::hard_link(&secret, d.join("step-3.ckpt")).expect("link");
        nix::unistd::mkfifo(&d.join("step-4.ckpt"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        std::fs::create_dir(d.join("step-5.ckpt")).expect("mkdir");

        assert!(open_job_file(&d, "step-1.ckpt").is_ok());
        for bad in ["step-2.ckpt", "step-3.ckpt", "step-4.ckpt", "step-5.ckpt"] {
            assert!(open_job_file(&d, bad).is_err(), "{bad} was opened");
        }
        // The directory itself swapped for a link to another.
        let other = t.path().join("other");
        std::fs::create_dir(&other).expect("mkdir");
        std::fs::write(other.join("step-9.ckpt"), b"theirs").expect("write");
        let link = t.path().join("linked");
        std::os::unix::fs::symlink(&other, &link).expect("symlink");
        assert!(open_job_file(&link, "step-9.ckpt").is_err());
        assert!(list_job_dir(&link).is_err());
        let mut names = list_job_dir(&d).expect("list");
        names.sort();
        assert_eq!(names.len(), 5);
    }

    #[test]
    fn the_own_cgroup_is_found_where_cgroup2_is_mounted() {
        // Not every machine has cgroup v2; where it has, the path exists.
        if let Ok(p) = own_cgroup_dir() {
            assert!(p.join("cgroup.procs").exists(), "{}", p.display());
        }
    }
}
