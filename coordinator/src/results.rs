//! Per-trial results, kept as jobs succeed, so that ranking a sweep costs one
//! pass over its trials instead of a million jobs sent to the client. A job
//! adds its seed's final and best value once, when it succeeds (a result is
//! recorded at most once per job); start-up rebuilds the same from the jobs
//! table.
//!
//! Ranking is by the mean over seeds in the goal's direction (the order
//! `liandan results` prints); ties go to the smaller trial id, so the order is
//! the same on every call.

use liandan_common::ids::TrialId;
use liandan_common::stats::{self, Moments, VarianceShares};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// One succeeded job's values; NaN where the job never reported the metric
/// (metric values are finite: JSON has no NaN).
#[derive(Clone, Copy, Debug)]
struct SeedValues {
    seed: i64,
    last: f64,
    best: f64,
}

/// One trial's succeeded seeds, and the moments of their final and best
/// values kept as they arrive (Welford's update), so ranking reads two numbers
/// per trial instead of walking its seeds.
#[derive(Debug)]
pub struct TrialOutcome {
    pub params_json: Arc<str>,
    seeds: Vec<SeedValues>,
    last: Moments,
    best: Moments,
}

/// Adds `x` to running moments (Welford): stable where sum-of-squares is not.
fn welford(m: &mut Moments, x: f64) {
    if x.is_nan() {
        return;
    }
    m.n += 1;
    let d = x - m.mean;
    m.mean += d / m.n as f64;
    m.ss += d * (x - m.mean);
}

impl TrialOutcome {
    /// (seed, value) of every seed that has one, by seed.
    pub fn values(&self, best: bool) -> Vec<(i64, f64)> {
        let mut out: Vec<(i64, f64)> = self
            .seeds
            .iter()
            .map(|s| (s.seed, if best { s.best } else { s.last }))
            .filter(|(_, v)| !v.is_nan())
            .collect();
        out.sort_by_key(|v| v.0);
        out
    }

    fn moments(&self, best: bool) -> Moments {
        if best {
            self.best
        } else {
            self.last
        }
    }
}

/// A sweep's results by trial.
#[derive(Debug, Default)]
pub struct Outcomes {
    trials: HashMap<TrialId, TrialOutcome>,
}

/// Trials ranked by their seed mean.
pub struct Ranking<'a> {
    /// The best `limit` trials with at least one value, best first.
    pub top: Vec<(&'a TrialId, &'a TrialOutcome)>,
    /// Trials with at least one value.
    pub ranked: usize,
    /// Seed values over all trials.
    pub values: usize,
    /// Variance decomposition over all trials' values.
    pub shares: Option<VarianceShares>,
}

impl Outcomes {
    /// Adds a succeeded job's values to its trial.
    pub fn record(
        &mut self,
        trial: &TrialId,
        params_json: &Arc<str>,
        seed: i64,
        last: Option<f64>,
        best: Option<f64>,
    ) {
        let empty = Moments {
            n: 0,
            mean: 0.0,
            ss: 0.0,
        };
        let t = self
            .trials
            .entry(trial.clone())
            .or_insert_with(|| TrialOutcome {
                params_json: params_json.clone(),
                seeds: Vec::new(),
                last: empty,
                best: empty,
            });
        let v = SeedValues {
            seed,
            last: last.unwrap_or(f64::NAN),
            best: best.unwrap_or(f64::NAN),
        };
        welford(&mut t.last, v.last);
        welford(&mut t.best, v.best);
        t.seeds.push(v);
    }

    /// Whether any seed of `trial` has a value.
    pub fn has_value(&self, trial: &TrialId, best: bool) -> bool {
        self.trials
            .get(trial)
            .is_some_and(|t| t.moments(best).n > 0)
    }

    /// Ranks trials by the mean of their seeds' values (final, or best over
    /// training with `best`); `limit` 0 keeps every ranked trial.
    pub fn rank(&self, maximize: bool, best: bool, limit: usize) -> Ranking<'_> {
        let mut all = Vec::with_capacity(self.trials.len());
        let mut moments = Vec::with_capacity(self.trials.len());
        for (id, t) in &self.trials {
            let m = t.moments(best);
            if m.n > 0 {
                all.push((m.mean, id, t));
                moments.push(m);
            }
        }
        let cmp = |a: &(f64, &TrialId, &TrialOutcome), b: &(f64, &TrialId, &TrialOutcome)| {
            let by_mean = if maximize {
                b.0.total_cmp(&a.0)
            } else {
                a.0.total_cmp(&b.0)
            };
            match by_mean {
                Ordering::Equal => a.1.cmp(b.1),
                o => o,
            }
        };
        let ranked = all.len();
        if limit > 0 && limit < all.len() {
            all.select_nth_unstable_by(limit - 1, cmp);
            all.truncate(limit);
        }
        all.sort_unstable_by(cmp);
        Ranking {
            top: all.into_iter().map(|(_, id, t)| (id, t)).collect(),
            ranked,
            values: moments.iter().map(|m| m.n).sum(),
            shares: stats::variance_shares_of(&moments),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TrialId {
        TrialId::parse(s).unwrap()
    }

    fn outcomes() -> Outcomes {
        let mut o = Outcomes::default();
        let p: Arc<str> = "{}".into();
        for (t, vals) in [
            ("tr-a", [0.90, 0.92, 0.91]),
            ("tr-b", [0.93, 0.85, 0.89]),
            ("tr-c", [0.70, 0.72, 0.71]),
            ("tr-d", [0.95, 0.96, 0.97]),
        ] {
            for (seed, v) in vals.iter().enumerate() {
                o.record(&tid(t), &p, seed as i64, Some(*v), Some(v + 0.05));
            }
        }
        // A seed that succeeded without reporting the metric has no value.
        o.record(&tid("tr-c"), &p, 3, None, None);
        o
    }

    fn ids(r: &Ranking) -> Vec<String> {
        r.top.iter().map(|(id, _)| id.to_string()).collect()
    }

    #[test]
    fn ranks_by_seed_mean_in_the_goals_direction_and_limits_without_changing_the_order() {
        let o = outcomes();
        let all = o.rank(true, false, 0);
        assert_eq!(ids(&all), ["tr-d", "tr-a", "tr-b", "tr-c"]);
        assert_eq!((all.ranked, all.values), (4, 12));
        for limit in 1..=4 {
            assert_eq!(
                ids(&o.rank(true, false, limit)),
                ids(&all)[..limit],
                "limit {limit}"
            );
        }
        assert_eq!(ids(&o.rank(false, false, 2)), ["tr-c", "tr-b"], "minimize");
        assert_eq!(o.trials[&tid("tr-c")].values(false).len(), 3);
    }

    #[test]
    fn shares_equal_the_decomposition_of_every_value() {
        let o = outcomes();
        let r = o.rank(true, true, 1);
        let groups: Vec<Vec<f64>> = ["tr-a", "tr-b", "tr-c", "tr-d"]
            .iter()
            .map(|t| {
                o.trials[&tid(t)]
                    .values(true)
                    .into_iter()
                    .map(|v| v.1)
                    .collect()
            })
            .collect();
        let want = stats::variance_shares(&groups).unwrap();
        let got = r.shares.unwrap();
        assert!(
            (got.seeds - want.seeds).abs() < 1e-12,
            "{got:?} vs {want:?}"
        );
        assert!(o.has_value(&tid("tr-a"), true));
        assert!(!o.has_value(&tid("tr-z"), true));
    }

    #[test]
    fn running_moments_equal_the_two_pass_ones() {
        let o = outcomes();
        for t in ["tr-a", "tr-b", "tr-c", "tr-d"] {
            for best in [false, true] {
                let kept = o.trials[&tid(t)].moments(best);
                let vals = o.trials[&tid(t)].values(best);
                let direct = Moments::of(vals.iter().map(|v| v.1));
                assert_eq!(kept.n, direct.n);
                assert!((kept.mean - direct.mean).abs() < 1e-12, "{t}");
                assert!((kept.ss - direct.ss).abs() < 1e-12, "{t}");
            }
        }
    }

    #[test]
    fn equal_means_are_ordered_by_trial_id() {
        let mut o = Outcomes::default();
        let p: Arc<str> = "{}".into();
        for t in ["tr-c", "tr-a", "tr-b"] {
            o.record(&tid(t), &p, 0, Some(1.0), None);
        }
        assert_eq!(ids(&o.rank(true, false, 0)), ["tr-a", "tr-b", "tr-c"]);
        assert_eq!(ids(&o.rank(true, false, 2)), ["tr-a", "tr-b"]);
        assert_eq!(o.rank(true, true, 0).ranked, 0, "no best values");
    }
}
