//! Adaptive search: the strategies that propose a sweep's next trial from the
//! trials so far (`bayes`, `tpe`), and the early-stopping rules
//! ([`stopping`]). Everything here is pure computation over values the
//! coordinator passes in; the coordinator owns the state, stores every
//! proposed trial before it runs, and rebuilds this input after a restart.
//!
//! Determinism: a proposal depends only on the sweep seed, the trial's index
//! and the trials given (in index order), so the same sweep seed and the same
//! order of results give the same sequence of trials.

pub mod gp;
pub mod space;
pub mod stopping;
pub mod sweep;
pub mod tpe;

use liandan_common::rng::Rng;
use liandan_common::sweep::spec::{Impute, Objective};
use liandan_common::sweep::{Goal, Method};
use space::Space;

/// Random candidates scored by expected improvement per proposal (as W&B).
pub const BAYES_CANDIDATES: usize = 1000;
/// Extra candidates near the best trials (a local refinement W&B does not do).
pub const BAYES_LOCAL_CANDIDATES: usize = 200;
/// Most observations the GP is fitted to (its cost grows as n³; W&B uses 100).
pub const GP_MAX_POINTS: usize = 200;
/// Most running trials the GP counts as pending points.
pub const GP_MAX_PENDING: usize = 100;
/// Trials proposed at random before TPE models anything (Optuna's n_startup_trials).
pub const TPE_STARTUP: usize = 10;

/// Where a trial stands, as the search sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrialStatus {
    /// Some seed still queued or running.
    Running,
    /// Every seed ended and at least one succeeded or was pruned with a value.
    Finished,
    /// Every seed ended and none produced a usable result.
    Failed,
}

/// One trial: its coordinates and, per seed that reported the metric, the
/// best value and the last value (in the metric's own direction).
#[derive(Clone, Debug)]
pub struct TrialData {
    pub x: Vec<f64>,
    pub status: TrialStatus,
    pub seed_best: Vec<f64>,
    pub seed_latest: Vec<f64>,
}

/// What the search optimises, from the spec.
#[derive(Clone, Copy, Debug)]
pub struct Objectives {
    pub goal: Goal,
    pub impute: Impute,
    pub impute_while_running: Option<Impute>,
    pub combine: Objective,
}

/// Combines seed values into a trial's value.
pub fn combine(how: Objective, values: &[f64]) -> Option<f64> {
    let s = liandan_common::stats::summarize(values)?;
    Some(match how {
        Objective::Mean => s.mean,
        Objective::Median => s.median,
        Objective::Iqm => s.iqm,
    })
}

/// The value W&B gives a run with nothing usable.
const FAILED_VALUE: f64 = 0.0;

/// A value to minimise, with the variance of its estimate over seeds.
struct Observed {
    x: Vec<f64>,
    y: f64,
    noise: f64,
}

fn sign(goal: Goal) -> f64 {
    match goal {
        Goal::Minimize => 1.0,
        Goal::Maximize => -1.0,
    }
}

fn noise_of(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() as f64 - 1.0);
    var / values.len() as f64
}

/// Turns trials into observations (minimisation) and pending points, with
/// W&B's imputation for failed and (optionally) running trials.
fn observations(trials: &[TrialData], o: &Objectives) -> (Vec<Observed>, Vec<Vec<f64>>) {
    let s = sign(o.goal);
    // The worst value any finished trial reached (W&B: the worst extremum of terminal runs).
    let worst = trials
        .iter()
        .filter(|t| t.status != TrialStatus::Running)
        .filter_map(|t| combine(o.combine, &t.seed_best))
        .map(|v| v * s)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    let imputed = |how: Impute, t: &TrialData| -> f64 {
        let v = match how {
            Impute::Worst => return worst.unwrap_or(FAILED_VALUE),
            Impute::Best => combine(o.combine, &t.seed_best),
            Impute::Latest => combine(o.combine, &t.seed_latest),
        };
        v.map(|v| v * s).unwrap_or(FAILED_VALUE)
    };
    let mut obs = Vec::new();
    let mut pending = Vec::new();
    for t in trials {
        match t.status {
            TrialStatus::Finished => {
                let y = match combine(o.combine, &t.seed_best) {
                    Some(v) => v * s,
                    None => imputed(o.impute, t),
                };
                obs.push(Observed {
                    x: t.x.clone(),
                    y,
                    noise: noise_of(&t.seed_best),
                });
            }
            TrialStatus::Failed => obs.push(Observed {
                x: t.x.clone(),
                y: imputed(o.impute, t),
                noise: 0.0,
            }),
            TrialStatus::Running => match o.impute_while_running {
                Some(how) => obs.push(Observed {
                    x: t.x.clone(),
                    y: imputed(how, t),
                    noise: 0.0,
                }),
                None => pending.push(t.x.clone()),
            },
        }
    }
    for ob in &mut obs {
        if !ob.y.is_finite() {
            ob.y = worst.unwrap_or(FAILED_VALUE);
        }
    }
    (obs, pending)
}

fn random_point(space: &Space, rng: &mut Rng) -> Vec<f64> {
    (0..space.len()).map(|_| rng.uniform01()).collect()
}

/// Proposes the coordinates of the next trial. `rng` should be keyed by the
/// sweep seed and the trial's index.
pub fn propose(
    method: Method,
    space: &Space,
    trials: &[TrialData],
    o: &Objectives,
    rng: &mut Rng,
) -> Vec<f64> {
    if space.is_empty() {
        return Vec::new();
    }
    let (obs, pending) = observations(trials, o);
    match method {
        Method::Tpe if obs.len() >= TPE_STARTUP => {
            let tobs: Vec<tpe::Obs> = obs
                .iter()
                .map(|o| tpe::Obs {
                    x: o.x.clone(),
                    y: o.y,
                })
                .collect();
            tpe::propose(space, &tobs, rng)
        }
        Method::Bayes if obs.len() >= 2 => bayes(space, obs, pending, rng),
        _ => random_point(space, rng),
    }
}

/// The GP's inputs: continuous coordinates as they are, each categorical as a
/// one-hot block scaled so any two categories are 1 apart. W&B feeds the
/// category's index instead, which tells the model that the middle value lies
/// between its neighbours (for [sgd, adam, rmsprop], that adam is between the
/// other two); with one-hot features every unseen category stays uncertain.
fn features(space: &Space, u: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(u.len());
    for (d, &x) in space.dims.iter().zip(u) {
        match d.kind {
            space::Kind::Continuous => out.push(x),
            space::Kind::Categorical(k) => {
                let c = ((x * k as f64) as usize).min(k.saturating_sub(1));
                out.extend((0..k).map(|i| {
                    if i == c {
                        std::f64::consts::FRAC_1_SQRT_2
                    } else {
                        0.0
                    }
                }));
            }
        }
    }
    out
}

fn bayes(space: &Space, mut obs: Vec<Observed>, pending: Vec<Vec<f64>>, rng: &mut Rng) -> Vec<f64> {
    // Bounded fit: the best quarter of the budget always, the rest a random subset.
    if obs.len() > GP_MAX_POINTS {
        obs.sort_by(|a, b| a.y.total_cmp(&b.y));
        let keep_best = GP_MAX_POINTS / 4;
        let rest = obs.split_off(keep_best);
        let order = rng.permutation(rest.len());
        let mut rest: Vec<Option<Observed>> = rest.into_iter().map(Some).collect();
        obs.extend(
            order
                .into_iter()
                .take(GP_MAX_POINTS - keep_best)
                .filter_map(|i| rest[i].take()),
        );
    }
    let best_y = obs.iter().map(|o| o.y).fold(f64::INFINITY, f64::min);
    let mut points: Vec<gp::Point> = obs
        .iter()
        .map(|o| gp::Point {
            x: features(space, &o.x),
            y: o.y,
            noise: o.noise,
        })
        .collect();
    let Some(mut model) = gp::Gp::fit(&points) else {
        return random_point(space, rng);
    };
    if model.at_bound {
        // As W&B: a kernel fitted at the edge of its range explains nothing; explore.
        return random_point(space, rng);
    }
    if !pending.is_empty() {
        // Running trials count as if they returned the model's prediction
        // ("kriging believer", as W&B does), so parallel proposals spread out.
        for x in pending.into_iter().take(GP_MAX_PENDING) {
            let x = features(space, &x);
            let (m, _) = model.predict(&x);
            points.push(gp::Point {
                x,
                y: m,
                noise: 0.0,
            });
        }
        if let Some(m) = gp::Gp::fit(&points) {
            model = m;
        }
    }
    // Local candidates: small steps around the best observations.
    let mut best_obs: Vec<&Observed> = obs.iter().collect();
    best_obs.sort_by(|a, b| a.y.total_cmp(&b.y));
    let anchors: Vec<Vec<f64>> = best_obs.iter().take(5).map(|o| o.x.clone()).collect();
    let mut best_x = random_point(space, rng);
    let mut best_ei = f64::NEG_INFINITY;
    let total = BAYES_CANDIDATES + BAYES_LOCAL_CANDIDATES;
    for i in 0..total {
        let x = if i < BAYES_CANDIDATES || anchors.is_empty() {
            random_point(space, rng)
        } else {
            let a = &anchors[i % anchors.len()];
            let step = if i % 2 == 0 { 0.02 } else { 0.08 };
            a.iter()
                .map(|v| (v + step * rng.normal01()).clamp(0.0, 1.0))
                .collect()
        };
        let (m, s) = model.predict(&features(space, &x));
        let ei = gp::expected_improvement(m, s, best_y);
        if ei > best_ei {
            best_ei = ei;
            best_x = x;
        }
    }
    best_x
}

#[cfg(test)]
mod tests;
