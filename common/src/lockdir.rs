//! A daemon's state directory: private to its user (0700, databases 0600,
//! since they hold every sweep's commands, logs and checkpoints), and used by
//! one process at a time: an exclusive `flock` on a lock file in it, holding
//! the holder's pid, so a second daemon on the same directory is refused with
//! a message that names the running one (two coordinators on one database, or
//! two workers on one spool, corrupt each other's work).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Creates `dir` (and its parents) with mode 0700 where it does not exist; an
/// existing directory keeps the mode its administrator gave it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates an empty file with mode 0600 if none is there (SQLite then gives
/// its -wal and -shm files the same mode); an existing file is left alone.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is in use by another process (pid {1}); stop it first, or give this one another directory")]
    Held(PathBuf, String),
}

/// The held lock; dropping it (or the process ending) releases it.
pub type DirLock = nix::fcntl::Flock<std::fs::File>;

/// Locks `dir` through `dir/name`, writing this process's pid into it.
pub fn lock_dir(dir: &Path, name: &str) -> Result<DirLock, LockError> {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| LockError::Io(path.clone(), e))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.seek(std::io::SeekFrom::Start(0));
            let _ = write!(lock, "{}", std::process::id());
            let _ = lock.sync_all();
            Ok(lock)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(LockError::Held(dir.to_path_buf(), pid.trim().to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_directories_and_files_are_private_and_existing_ones_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let dir = d.path().join("a/b");
        create_private_dir(&dir).expect("dir");
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("x.db");
        create_private_file(&f).expect("file");
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        create_private_file(&f).expect("again");
        assert_eq!(mode(&f), 0o640, "an existing file keeps its mode");
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let d = tempfile::tempdir().expect("tempdir");
        let first = lock_dir(d.path(), "x.lock").expect("first lock");
        match lock_dir(d.path(), "x.lock") {
            Err(LockError::Held(p, pid)) => {
                assert_eq!(p, d.path());
                assert_eq!(pid, std::process::id().to_string());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert!(lock_dir(d.path(), "x.lock").is_ok());
    }
}
