//! Why the worker cannot run: configuration and state-directory errors.

use crate::spool;
use std::path::PathBuf;

/// Why the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot use state dir {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
    #[error("state dir {0} is in use by another liandan-worker (pid {1}); give each worker its own --state-dir")]
    Locked(PathBuf, String),
    #[error("{0}")]
    Spool(#[from] spool::SpoolError),
    #[error("coordinator URL {0:?}: {1}")]
    Url(String, String),
    /// Certificates or tokens that cannot be used (a configuration error).
    #[error("{0}")]
    Tls(String),
    /// `job_user` or `job_cgroups` cannot be had, or the machine offers
    /// nothing jobs can use (a configuration error).
    #[error("{0}")]
    Jail(String),
}
