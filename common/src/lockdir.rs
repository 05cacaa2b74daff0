//! One process per state directory: an exclusive `flock` on a lock file in
//! it, holding the holder's pid, so a second daemon on the same directory is
//! refused with a message that names the running one (two coordinators on one
//! database, or two workers on one spool, corrupt each other's work).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

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
