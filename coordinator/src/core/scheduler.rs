//! The scheduler's decisions as pure functions over read-only views: which
//! sweeps may place a job now, in what order, and whether a worker has room
//! for one of a sweep's jobs. `dispatch` (in `schedule.rs`) gathers the
//! views under the lock and carries out what these decide; nothing here
//! touches the core.

use liandan_common::ids::{JobId, SweepId, WorkerId};
use std::collections::HashMap;

/// A job placed on a worker, with the resources it takes there.
#[derive(Clone, Debug)]
pub(super) struct Placement {
    pub sweep: SweepId,
    pub job: JobId,
    pub worker: WorkerId,
    /// Whole GPUs (a GPU job takes no CPU slot).
    pub gpus: u32,
    pub cpus: u32,
}

/// What one job of a sweep needs of a worker.
#[derive(Clone, Copy, Debug)]
pub(super) struct Need<'a> {
    /// Whole GPUs; a GPU job takes no CPU slot.
    pub gpus: u32,
    pub cpus: u32,
    /// Labels the worker must have, all of them.
    pub labels: &'a [String],
}

/// A worker's room, as dispatch sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Room<'a> {
    pub free_gpus: u32,
    pub free_cpus: u32,
    pub labels: &'a [String],
}

/// A sweep, as the scheduler sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SweepView<'a> {
    /// Active (neither paused nor cancelled).
    pub active: bool,
    /// It has a queued job, or its search can propose one.
    pub has_work: bool,
    pub priority: i32,
    pub running: u64,
    pub concurrency: Option<u32>,
    pub created_at: f64,
    /// Its owner ("" without user authentication: no quota applies).
    pub owner: &'a str,
}

/// Whether a worker with `room` can take a job that needs `need`.
pub(super) fn fits(room: &Room<'_>, need: &Need<'_>) -> bool {
    room.free_gpus >= need.gpus
        && room.free_cpus >= need.cpus
        && need.labels.iter().all(|l| room.labels.contains(l))
}

/// The sweeps that may place a job now, in the order they get to: higher
/// priority first, then fewer running jobs (fair share), then older. A sweep
/// at its concurrency cap waits, and so does every sweep of an owner with
/// `quota` running jobs (`max_running_jobs_per_user`; 0 for none). Returns
/// indices into `sweeps`.
pub(super) fn candidates(sweeps: &[SweepView<'_>], quota: u32) -> Vec<usize> {
    let mut by_owner: HashMap<&str, u64> = HashMap::new();
    if quota > 0 {
        for s in sweeps.iter().filter(|s| !s.owner.is_empty()) {
            *by_owner.entry(s.owner).or_default() += s.running;
        }
    }
    let mut out: Vec<usize> = (0..sweeps.len())
        .filter(|&i| {
            let s = &sweeps[i];
            s.active
                && s.has_work
                && s.concurrency.is_none_or(|c| s.running < u64::from(c))
                && by_owner.get(s.owner).is_none_or(|r| *r < u64::from(quota))
        })
        .collect();
    out.sort_by(|&a, &b| {
        let (a, b) = (&sweeps[a], &sweeps[b]);
        b.priority
            .cmp(&a.priority)
            .then(a.running.cmp(&b.running))
            .then(a.created_at.total_cmp(&b.created_at))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(priority: i32, running: u64, created_at: f64) -> SweepView<'static> {
        SweepView {
            active: true,
            has_work: true,
            priority,
            running,
            concurrency: None,
            created_at,
            owner: "",
        }
    }

    #[test]
    fn sweeps_go_by_priority_then_fewest_running_then_age() {
        let cases: &[(&[SweepView], &[usize])] = &[
            // Fair share: the sweep with fewer running jobs goes first.
            (&[sweep(0, 3, 1.0), sweep(0, 1, 2.0)], &[1, 0]),
            // Equal shares: the older sweep first.
            (&[sweep(0, 2, 5.0), sweep(0, 2, 1.0)], &[1, 0]),
            // Priority beats fair share and age.
            (&[sweep(0, 0, 1.0), sweep(5, 9, 9.0)], &[1, 0]),
            (
                &[sweep(-1, 0, 1.0), sweep(0, 4, 2.0), sweep(0, 4, 1.5)],
                &[2, 1, 0],
            ),
        ];
        for (sweeps, want) in cases {
            assert_eq!(candidates(sweeps, 0), *want, "{sweeps:?}");
        }
    }

    #[test]
    fn a_sweep_waits_when_paused_idle_capped_or_its_owner_is_at_quota() {
        let paused = SweepView {
            active: false,
            ..sweep(0, 0, 1.0)
        };
        let idle = SweepView {
            has_work: false,
            ..sweep(0, 0, 1.0)
        };
        let capped = SweepView {
            concurrency: Some(2),
            ..sweep(0, 2, 1.0)
        };
        let under_cap = SweepView {
            concurrency: Some(3),
            ..sweep(0, 2, 1.0)
        };
        let ann = |running| SweepView {
            owner: "ann",
            ..sweep(0, running, 1.0)
        };
        let bob = SweepView {
            owner: "bob",
            ..sweep(0, 0, 1.0)
        };
        let cases: &[(&[SweepView], u32, &[usize])] = &[
            (&[paused, idle, capped, under_cap], 0, &[3]),
            // ann runs 2 + 1 across her sweeps: at a quota of 3 both wait.
            (&[ann(2), ann(1), bob], 3, &[2]),
            (&[ann(2), ann(1), bob], 4, &[2, 1, 0]),
            // No quota: owners do not matter.
            (&[ann(2), ann(1), bob], 0, &[2, 1, 0]),
        ];
        for (sweeps, quota, want) in cases {
            assert_eq!(
                candidates(sweeps, *quota),
                *want,
                "quota {quota}: {sweeps:?}"
            );
        }
    }

    #[test]
    fn a_job_fits_a_worker_with_its_gpus_slots_and_labels() {
        let gpu = ["gpu".to_string()];
        let both = ["gpu".to_string(), "a100".to_string()];
        let none: [String; 0] = [];
        let room = |free_gpus, free_cpus, labels| Room {
            free_gpus,
            free_cpus,
            labels,
        };
        let need = |gpus, cpus, labels| Need { gpus, cpus, labels };
        let cases = [
            (room(2, 0, &both[..]), need(2, 0, &gpu[..]), true),
            (room(1, 4, &both[..]), need(2, 0, &none[..]), false),
            (room(0, 1, &none[..]), need(0, 1, &none[..]), true),
            (room(0, 0, &none[..]), need(0, 1, &none[..]), false),
            (room(4, 4, &gpu[..]), need(1, 0, &both[..]), false),
            (room(4, 4, &both[..]), need(1, 0, &both[..]), true),
        ];
        for (r, n, want) in cases {
            assert_eq!(fits(&r, &n), want, "{r:?} {n:?}");
        }
    }
}
