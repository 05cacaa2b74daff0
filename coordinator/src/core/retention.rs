//! Which of a job's stored checkpoints are kept: a pure keep/remove policy
//! over (step, metric) pairs, which `add_checkpoint` applies under the lock.

use liandan_common::sweep::Goal;
use std::collections::HashSet;

/// The steps to keep of a job's checkpoints (`steps`: each one's step and
/// the metric it was taken at): the last `keep_last` by step, and with
/// `best` (the sweep's goal, when `keep_best` is set) the one with the best
/// metric, the earliest of equals (a NaN metric is none). Every other step
/// is removed.
pub(super) fn keep_steps(
    steps: &[(i64, Option<f64>)],
    keep_last: usize,
    best: Option<Goal>,
) -> HashSet<i64> {
    let mut by_step: Vec<i64> = steps.iter().map(|(s, _)| *s).collect();
    by_step.sort_unstable();
    let mut keep: HashSet<i64> = by_step.iter().rev().take(keep_last).copied().collect();
    if let Some(goal) = best {
        let mut ordered: Vec<(i64, f64)> = steps
            .iter()
            // A NaN compares with nothing; an infinity is a value like any other.
            .filter_map(|(s, m)| m.filter(|m| !m.is_nan()).map(|m| (*s, m)))
            .collect();
        ordered.sort_by_key(|(s, _)| *s);
        let top = ordered
            .iter()
            .fold(None::<(i64, f64)>, |b, &(s, m)| match b {
                Some((_, bm)) if !goal.better(m, bm) => b,
                _ => Some((s, m)),
            });
        if let Some((s, _)) = top {
            keep.insert(s);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(k: HashSet<i64>) -> Vec<i64> {
        let mut v: Vec<i64> = k.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_last_n_and_the_best_are_kept() {
        let steps = [
            (100, Some(0.9)),
            (200, Some(0.4)),
            (300, Some(0.7)),
            (400, Some(0.8)),
            (500, None),
        ];
        let cases: &[(usize, Option<Goal>, &[i64])] = &[
            (2, None, &[400, 500]),
            (1, None, &[500]),
            (0, None, &[]),
            (9, None, &[100, 200, 300, 400, 500]),
            // The best by the sweep's goal joins the last ones.
            (2, Some(Goal::Minimize), &[200, 400, 500]),
            (2, Some(Goal::Maximize), &[100, 400, 500]),
            // The best is already among the last: nothing more.
            (4, Some(Goal::Minimize), &[200, 300, 400, 500]),
            (0, Some(Goal::Maximize), &[100]),
        ];
        for (keep_last, best, want) in cases {
            assert_eq!(
                sorted(keep_steps(&steps, *keep_last, *best)),
                *want,
                "keep_last {keep_last}, best {best:?}"
            );
        }
    }

    #[test]
    fn the_earliest_of_equal_bests_is_kept_and_missing_metrics_never_win() {
        let steps = [(30, Some(0.5)), (10, Some(0.5)), (20, None), (40, None)];
        assert_eq!(sorted(keep_steps(&steps, 0, Some(Goal::Minimize))), [10]);
        // No checkpoint has a metric: only the last ones stay.
        let steps = [(1, None), (2, None), (3, None)];
        assert_eq!(sorted(keep_steps(&steps, 1, Some(Goal::Maximize))), [3]);
        assert!(keep_steps(&[], 3, Some(Goal::Minimize)).is_empty());
        // A NaN first does not stand as the best; an infinity can be the best.
        let steps = [
            (1, Some(f64::NAN)),
            (2, Some(0.3)),
            (3, Some(f64::INFINITY)),
            (4, None),
        ];
        assert_eq!(sorted(keep_steps(&steps, 0, Some(Goal::Minimize))), [2]);
        assert_eq!(sorted(keep_steps(&steps, 0, Some(Goal::Maximize))), [3]);
    }
}
