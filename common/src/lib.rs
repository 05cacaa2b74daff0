//! Shared ground for every liandan binary: typed ids, configuration loading,
//! the sweep spec (parsing, validation, deterministic expansion, command
//! building), logging setup, exit codes and the statistics behind `results`.
//!
//! Invariant: nothing in this crate does network I/O, and the sweep expansion
//! does no I/O at all, so the CLI can validate and expand specs offline and the
//! coordinator and worker agree on every job's command line.

pub mod auth;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod hash;
pub mod ids;
pub mod lockdir;
pub mod logging;
pub mod names;
pub mod rng;
pub mod stats;
pub mod sweep;
pub mod systemd;
pub mod time;

pub use ids::{AttemptNo, JobId, SweepId, TrialId, WorkerId};
