//! Strategies on synthetic objectives with known optima, run as a sequential
//! sweep: propose, evaluate, report, repeat.

use super::*;
use liandan_common::sweep::{parse, Format};
use serde_json::Value;

fn spec_space(params_yaml: &str) -> Space {
    let text =
        format!("method: bayes\nprogram: t.py\nmetric: {{name: loss}}\nparameters:\n{params_yaml}");
    Space::new(&parse(&text, Format::Yaml).expect("spec").spec.parameters)
}

fn minimise() -> Objectives {
    Objectives {
        goal: Goal::Minimize,
        impute: Impute::Worst,
        impute_while_running: None,
        combine: Objective::Mean,
    }
}

/// Runs `n` trials of `method` on `f` and returns the best value found and the trials' params.
fn simulate(
    method: Method,
    space: &Space,
    f: &dyn Fn(&Value, u64) -> f64,
    n: usize,
    sweep_seed: u64,
) -> (f64, Vec<Value>) {
    let mut trials: Vec<TrialData> = Vec::new();
    let mut seen = Vec::new();
    let mut best = f64::INFINITY;
    for i in 0..n {
        let mut rng = Rng::keyed("liandan.adaptive-trial", &[sweep_seed, i as u64]);
        let u = propose(method, space, &trials, &minimise(), &mut rng);
        let params = space.decode(&u);
        let y = f(&params, sweep_seed * 1_000_003 + i as u64);
        best = best.min(y);
        trials.push(TrialData {
            x: space.encode(&params).expect("a proposal encodes"),
            status: TrialStatus::Finished,
            seed_best: vec![y],
            seed_latest: vec![y],
        });
        seen.push(params);
    }
    (best, seen)
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().expect("number")
}

fn noisy_quadratic(p: &Value, key: u64) -> f64 {
    let noise = 0.01 * Rng::keyed("test.noise", &[key]).normal01();
    (num(p, "x") - 0.5).powi(2) + (num(p, "y") + 0.3).powi(2) + noise
}

fn branin(p: &Value, _: u64) -> f64 {
    let (x1, x2) = (num(p, "x1"), num(p, "x2"));
    let pi = std::f64::consts::PI;
    let (a, b, c, r, s, t) = (
        1.0,
        5.1 / (4.0 * pi * pi),
        5.0 / pi,
        6.0,
        10.0,
        1.0 / (8.0 * pi),
    );
    a * (x2 - b * x1 * x1 + c * x1 - r).powi(2) + s * (1.0 - t) * x1.cos() + s
}
const BRANIN_MIN: f64 = 0.397887;

fn mixed(p: &Value, _: u64) -> f64 {
    let offset = match p["opt"].as_str() {
        Some("sgd") => 1.0,
        Some("adam") => 0.0,
        _ => 2.0,
    };
    offset + (num(p, "lr").log10() + 2.0).powi(2)
}

struct Case {
    name: &'static str,
    space: Space,
    f: fn(&Value, u64) -> f64,
    optimum: f64,
    /// How close to the optimum counts as found, for bayes and for tpe.
    tolerance: (f64, f64),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "noisy quadratic",
            space: spec_space("  x: {min: -2.0, max: 2.0}\n  y: {min: -2.0, max: 2.0}\n"),
            f: noisy_quadratic,
            optimum: 0.0,
            tolerance: (0.02, 0.1),
        },
        Case {
            name: "branin",
            space: spec_space("  x1: {min: -5.0, max: 10.0}\n  x2: {min: 0.0, max: 15.0}\n"),
            f: branin,
            optimum: BRANIN_MIN,
            tolerance: (0.05, 0.6),
        },
        Case {
            name: "categorical x continuous",
            space: spec_space("  opt: {values: [sgd, adam, rmsprop]}\n  lr: {distribution: log_uniform_values, min: 0.0001, max: 1.0}\n"),
            f: mixed,
            optimum: 0.0,
            tolerance: (0.01, 0.01),
        },
    ]
}

const SWEEP_SEEDS: [u64; 5] = [1, 2, 3, 4, 5];
const BUDGET: usize = 40;
/// Random search gets this many trials to come within the tolerance.
const RANDOM_BUDGET: usize = 400;

/// Over the sweep seeds: the mean gap to the optimum after `budget` trials, and
/// the mean number of trials until the best value came within `tol` (`budget + 1` if never).
fn run(method: Method, case: &Case, budget: usize, tol: f64) -> (f64, f64) {
    let mut gaps = 0.0;
    let mut needed = 0.0;
    for &s in &SWEEP_SEEDS {
        let (_, seen) = simulate(method, &case.space, &case.f, budget, s);
        let mut best = f64::INFINITY;
        let mut reached = budget + 1;
        for (i, p) in seen.iter().enumerate() {
            best = best.min((case.f)(p, s * 1_000_003 + i as u64));
            if reached > budget && best - case.optimum <= tol {
                reached = i + 1;
            }
        }
        gaps += best - case.optimum;
        needed += reached as f64;
    }
    let n = SWEEP_SEEDS.len() as f64;
    (gaps / n, needed / n)
}

#[test]
fn bayes_and_tpe_reach_known_optima_in_fewer_trials_than_random_search() {
    for case in cases() {
        for (method, tol) in [
            (Method::Bayes, case.tolerance.0),
            (Method::Tpe, case.tolerance.1),
        ] {
            let (gap, needed) = run(method, &case, BUDGET, tol);
            let (_, random_needed) = run(Method::Random, &case, RANDOM_BUDGET, tol);
            eprintln!(
                "{}: {} gap {gap:.4} after {BUDGET}; within {tol} after {needed:.1} trials (random: {random_needed:.1})",
                case.name,
                method.as_str()
            );
            assert!(
                gap <= tol,
                "{} on {}: mean gap to the optimum {gap} after {BUDGET} trials, tolerance {tol}",
                method.as_str(),
                case.name
            );
            assert!(
                needed < 0.75 * random_needed,
                "{} on {}: {needed} trials to come within {tol}, random search {random_needed}",
                method.as_str(),
                case.name
            );
        }
    }
}

#[test]
fn the_same_sweep_seed_gives_the_same_trials() {
    let case = &cases()[1];
    for method in [Method::Bayes, Method::Tpe] {
        let (_, a) = simulate(method, &case.space, &case.f, 15, 7);
        let (_, b) = simulate(method, &case.space, &case.f, 15, 7);
        let (_, c) = simulate(method, &case.space, &case.f, 15, 8);
        assert_eq!(a, b, "{}", method.as_str());
        assert_ne!(a, c, "{}", method.as_str());
    }
}

#[test]
fn running_trials_push_parallel_proposals_apart() {
    let space = spec_space("  x: {min: 0.0, max: 1.0}\n");
    let done = |x: f64, y: f64| TrialData {
        x: vec![x],
        status: TrialStatus::Finished,
        seed_best: vec![y],
        seed_latest: vec![y],
    };
    let mut trials: Vec<TrialData> = (0..6)
        .map(|i| i as f64 / 5.0)
        .map(|x| done(x, (x - 0.45).powi(2)))
        .collect();
    let mut rng = Rng::keyed("t", &[0]);
    let first = propose(Method::Bayes, &space, &trials, &minimise(), &mut rng);
    trials.push(TrialData {
        x: first.clone(),
        status: TrialStatus::Running,
        seed_best: vec![],
        seed_latest: vec![],
    });
    let mut rng = Rng::keyed("t", &[0]);
    let second = propose(Method::Bayes, &space, &trials, &minimise(), &mut rng);
    assert!((first[0] - second[0]).abs() > 0.01, "{first:?} {second:?}");
}

#[test]
fn failed_trials_are_imputed_as_wandb_does() {
    let t = |status, best: Vec<f64>, latest: Vec<f64>| TrialData {
        x: vec![0.5],
        status,
        seed_best: best,
        seed_latest: latest,
    };
    let trials = vec![
        t(TrialStatus::Finished, vec![1.0, 3.0], vec![1.0, 3.0]),
        t(TrialStatus::Finished, vec![5.0], vec![5.0]),
        t(TrialStatus::Failed, vec![0.5], vec![4.0]),
        t(TrialStatus::Running, vec![0.1], vec![0.3]),
    ];
    let mut o = minimise();
    let ys = |o: &Objectives| {
        observations(&trials, o)
            .0
            .iter()
            .map(|x| x.y)
            .collect::<Vec<_>>()
    };
    // Seeds combine by their mean; the failed trial gets the worst finished value (5, or 0.5 counted as terminal → worst is 5).
    assert_eq!(ys(&o), vec![2.0, 5.0, 5.0]);
    o.impute = Impute::Best;
    assert_eq!(ys(&o), vec![2.0, 5.0, 0.5]);
    o.impute = Impute::Latest;
    assert_eq!(ys(&o), vec![2.0, 5.0, 4.0]);
    o.impute_while_running = Some(Impute::Latest);
    assert_eq!(ys(&o), vec![2.0, 5.0, 4.0, 0.3]);
    // Maximising flips the sign: the worst is then the smallest value.
    o.goal = Goal::Maximize;
    o.impute = Impute::Worst;
    o.impute_while_running = None;
    assert_eq!(ys(&o), vec![-2.0, -5.0, -0.5]);
    // Median and interquartile mean are the other ways to combine seeds.
    assert_eq!(combine(Objective::Median, &[1.0, 2.0, 10.0]), Some(2.0));
    assert_eq!(combine(Objective::Iqm, &[1.0, 2.0, 3.0, 100.0]), Some(2.5));
    assert_eq!(combine(Objective::Mean, &[]), None);
    // The seed spread becomes the noise of the trial's mean: var 2 / 2 seeds.
    assert_eq!(observations(&trials, &o).0[0].noise, 1.0);
}
