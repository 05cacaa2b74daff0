//! Expansion of a spec into trials and jobs: W&B's grid (Cartesian product in
//! declaration order, duplicates removed) and reproducible random sampling
//! ([`crate::rng`]). No I/O; the same spec and ids give the same jobs forever.

use super::spec::{Method, Param, SpecError, SweepSpec};
use crate::ids::{JobId, SweepId, TrialId};
use crate::rng::Rng;
use serde_json::{Map, Number, Value};
use std::collections::HashSet;

/// One point of the parameter space.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub index: usize,
    pub id: TrialId,
    /// Parameter values as a (possibly nested) JSON object, in declaration order.
    pub params: Value,
}

/// One (trial, seed).
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub trial: TrialId,
    pub trial_index: usize,
    pub seed: i64,
}

/// Everything a spec expands into.
#[derive(Clone, Debug, PartialEq)]
pub struct Expansion {
    pub trials: Vec<Trial>,
    pub jobs: Vec<Job>,
    pub warnings: Vec<String>,
}

/// Why a spec could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExpandError {
    #[error("{0}")]
    Spec(SpecError),
    #[error(
        "the sweep expands to {0} jobs, more than the limit of {1}; lower run_cap or the grid size"
    )]
    TooLarge(usize, usize),
    #[error("two jobs or trials of this sweep got the same id {0} (a hash collision); submit it under another --name")]
    IdCollision(String),
}

/// Most jobs one sweep may expand into.
pub const MAX_JOBS: usize = 1_000_000;

/// A leaf parameter with its path in the nested params object.
struct Leaf<'a> {
    path: Vec<&'a str>,
    param: &'a Param,
}

fn leaves<'a>(params: &'a [(String, Param)], prefix: &mut Vec<&'a str>, out: &mut Vec<Leaf<'a>>) {
    for (name, p) in params {
        prefix.push(name);
        match p {
            Param::Nested { parameters } => leaves(parameters, prefix, out),
            other => out.push(Leaf {
                path: prefix.clone(),
                param: other,
            }),
        }
        prefix.pop();
    }
}

fn set_path(obj: &mut Map<String, Value>, path: &[&str], v: Value) {
    match path {
        [] => {}
        [last] => {
            obj.insert(last.to_string(), v);
        }
        [first, rest @ ..] => {
            let child = obj
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = child {
                set_path(m, rest, v);
            }
        }
    }
}

/// Every leaf parameter (nested ones flattened) with its path, in declaration order.
pub fn leaf_params(params: &[(String, Param)]) -> Vec<(Vec<String>, Param)> {
    let mut ls = Vec::new();
    leaves(params, &mut Vec::new(), &mut ls);
    ls.into_iter()
        .map(|l| {
            (
                l.path.iter().map(|s| s.to_string()).collect(),
                l.param.clone(),
            )
        })
        .collect()
}

/// Sets `v` at `path` in a (nested) params object, creating inner objects.
pub fn set_param_path(obj: &mut Map<String, Value>, path: &[String], v: Value) {
    let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
    set_path(obj, &p, v);
}

/// A JSON rendering with object keys sorted at every level, for hashing.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical_json(&m[*k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Rounds away the noise of `min + k*q` so that 0.1 steps print as 0.3, not 0.30000000000000004.
fn tidy(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 12 - x.abs().log10().ceil() as i32;
    let scale = 10f64.powi(digits.clamp(-300, 300));
    (x * scale).round() / scale
}

fn grid_values(path: &str, p: &Param) -> Result<Vec<Value>, SpecError> {
    Ok(match p {
        Param::Constant { value } => vec![value.clone()],
        Param::Categorical { values } | Param::CategoricalWProbabilities { values, .. } => values.clone(),
        Param::IntUniform { min, max } => {
            if (*max - *min) as u64 >= MAX_JOBS as u64 {
                return Err(SpecError { path: path.into(), line: None, message: format!("int_uniform range {min}..={max} is too large for a grid") });
            }
            (*min..=*max).map(|i| Value::Number(i.into())).collect()
        }
        Param::QUniform { min, max, q, integer } => {
            let n = ((max - min) / q + 1e-9).floor();
            if n >= MAX_JOBS as f64 {
                return Err(SpecError { path: path.into(), line: None, message: format!("q_uniform from {min} to {max} in steps of {q} is too large for a grid") });
            }
            (0..=n as u64)
                .map(|k| {
                    let x = tidy(min + k as f64 * q);
                    if *integer {
                        Value::Number((x.round() as i64).into())
                    } else {
                        float(x)
                    }
                })
                .collect()
        }
        other => {
            return Err(SpecError {
                path: path.into(),
                line: None,
                message: format!("grid search cannot enumerate the continuous distribution `{}`; use `values`, int_uniform or q_uniform, or method random", other.name()),
            })
        }
    })
}

fn quantize(x: f64, q: f64) -> f64 {
    (x / q).round_ties_even() * q
}

/// The value of `categorical_w_probabilities` that `u` in [0, 1) falls on.
pub fn pick_weighted(values: &[Value], probabilities: &[f64], u: f64) -> Value {
    let mut acc = 0.0;
    for (v, p) in values.iter().zip(probabilities) {
        acc += p;
        if u < acc {
            return v.clone();
        }
    }
    values[values.len() - 1].clone()
}

/// Draws one value from a distribution, with W&B's semantics.
pub fn sample(p: &Param, rng: &mut Rng) -> Value {
    match p {
        Param::Constant { value } => value.clone(),
        Param::Categorical { values } => values[rng.below(values.len() as u64) as usize].clone(),
        Param::CategoricalWProbabilities {
            values,
            probabilities,
        } => pick_weighted(values, probabilities, rng.uniform01()),
        Param::IntUniform { min, max } => {
            let span = (*max - *min) as u64 + 1;
            Value::Number((min + rng.below(span) as i64).into())
        }
        Param::Uniform { min, max } => float(rng.uniform(*min, *max)),
        Param::QUniform {
            min,
            max,
            q,
            integer,
        } => {
            let x = quantize(rng.uniform(*min, *max), *q);
            if *integer {
                Value::Number((x.round() as i64).into())
            } else {
                float(x)
            }
        }
        Param::LogUniform { min, max } => float(rng.uniform(*min, *max).exp()),
        Param::LogUniformValues { min, max } => float(rng.uniform(min.ln(), max.ln()).exp()),
        Param::QLogUniform { min, max, q } => float(quantize(rng.uniform(*min, *max).exp(), *q)),
        Param::QLogUniformValues { min, max, q } => {
            float(quantize(rng.uniform(min.ln(), max.ln()).exp(), *q))
        }
        Param::InvLogUniform { min, max } => float((-rng.uniform(*min, *max)).exp()),
        Param::InvLogUniformValues { min, max } => {
            float((-rng.uniform((1.0 / max).ln(), (1.0 / min).ln())).exp())
        }
        Param::Normal { mu, sigma } => float(mu + sigma * rng.normal01()),
        Param::QNormal { mu, sigma, q } => float(quantize(mu + sigma * rng.normal01(), *q)),
        Param::LogNormal { mu, sigma } => float((mu + sigma * rng.normal01()).exp()),
        Param::QLogNormal { mu, sigma, q } => {
            float(quantize((mu + sigma * rng.normal01()).exp(), *q))
        }
        Param::Beta { a, b } => float(rng.beta(*a, *b)),
        Param::QBeta { a, b, q } => float(quantize(rng.beta(*a, *b), *q)),
        Param::Nested { .. } => Value::Null,
    }
}

fn jobs_for(trials: &[Trial], seeds: &[i64]) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(trials.len() * seeds.len());
    for t in trials {
        for &seed in seeds {
            jobs.push(Job {
                id: JobId::for_trial_seed(&t.id, seed),
                trial: t.id.clone(),
                trial_index: t.index,
                seed,
            });
        }
    }
    jobs
}

/// One trial of an adaptive search (the `index`-th proposal) and its jobs. The
/// index is part of the id: a search may propose the same point twice.
pub fn adaptive_trial(
    sweep: &SweepId,
    index: usize,
    params: Value,
    seeds: &[i64],
) -> (Trial, Vec<Job>) {
    let canon = canonical_json(&params);
    let trial = Trial {
        index,
        id: TrialId::for_params(sweep, &format!("{index}:{canon}")),
        params,
    };
    let jobs = jobs_for(std::slice::from_ref(&trial), seeds);
    (trial, jobs)
}

/// Expands a spec for the sweep `sweep`.
pub fn expand(spec: &SweepSpec, sweep: &SweepId) -> Result<Expansion, ExpandError> {
    let mut ls = Vec::new();
    leaves(&spec.parameters, &mut Vec::new(), &mut ls);
    let seeds = &spec.liandan.seeds;
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    let mut trials = Vec::new();
    let mut push = |params: Map<String, Value>, trials: &mut Vec<Trial>| -> bool {
        let params = Value::Object(params);
        let canon = canonical_json(&params);
        if !seen.insert(canon.clone()) {
            return false;
        }
        trials.push(Trial {
            index: trials.len(),
            id: TrialId::for_params(sweep, &canon),
            params,
        });
        true
    };
    let cap_trials = spec.run_cap.map(|c| (c as usize / seeds.len()).max(1));
    match spec.method {
        Method::Bayes | Method::Tpe => {
            warnings.push(format!(
                "method `{}` proposes trials one at a time as results arrive; nothing is expanded up front ({})",
                spec.method.as_str(),
                match cap_trials {
                    Some(c) => format!("up to {c} trials"),
                    None => "no run_cap: it proposes trials until you cancel the sweep".into(),
                }
            ));
        }
        Method::Grid => {
            let axes: Vec<Vec<Value>> = ls
                .iter()
                .map(|l| {
                    grid_values(
                        &format!("parameters.{}", l.path.join(".parameters.")),
                        l.param,
                    )
                })
                .collect::<Result<_, _>>()
                .map_err(ExpandError::Spec)?;
            let size = axes
                .iter()
                .try_fold(1usize, |acc, a| acc.checked_mul(a.len()))
                .unwrap_or(usize::MAX);
            if size.saturating_mul(seeds.len()) > MAX_JOBS {
                return Err(ExpandError::TooLarge(
                    size.saturating_mul(seeds.len()),
                    MAX_JOBS,
                ));
            }
            // Odometer over the axes; the last declared parameter varies fastest.
            let mut idx = vec![0usize; axes.len()];
            'outer: loop {
                let mut obj = Map::new();
                for (leaf, (axis, &i)) in ls.iter().zip(axes.iter().zip(&idx)) {
                    set_path(&mut obj, &leaf.path, axis[i].clone());
                }
                push(obj, &mut trials);
                if cap_trials.is_some_and(|c| trials.len() >= c) {
                    if trials.len() < size {
                        warnings.push(format!(
                            "run_cap {} stops the grid after {} of its {} points",
                            spec.run_cap.unwrap_or(0),
                            trials.len(),
                            size
                        ));
                    }
                    break;
                }
                for d in (0..axes.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < axes[d].len() {
                        continue 'outer;
                    }
                    idx[d] = 0;
                }
                break;
            }
        }
        Method::Random => {
            let want = cap_trials.unwrap_or(1);
            if want.saturating_mul(seeds.len()) > MAX_JOBS {
                return Err(ExpandError::TooLarge(want * seeds.len(), MAX_JOBS));
            }
            let mut draw = 0u64;
            let max_draws = (want as u64).saturating_mul(100).max(1000);
            while trials.len() < want && draw < max_draws {
                let mut rng = Rng::keyed("liandan.random-trial", &[spec.liandan.sweep_seed, draw]);
                draw += 1;
                let mut obj = Map::new();
                for leaf in &ls {
                    set_path(&mut obj, &leaf.path, sample(leaf.param, &mut rng));
                }
                push(obj, &mut trials);
            }
            if trials.len() < want {
                warnings.push(format!("the parameter space has only {} distinct points; run_cap asked for {want} trials", trials.len()));
            }
        }
    }
    let jobs = jobs_for(&trials, seeds);
    // Ids are hashes: a collision is astronomically rare, but must be an error, never a silent merge.
    let mut ids = HashSet::with_capacity(jobs.len() + trials.len());
    for id in trials
        .iter()
        .map(|t| t.id.to_string())
        .chain(jobs.iter().map(|j| j.id.to_string()))
    {
        if !ids.insert(id.clone()) {
            return Err(ExpandError::IdCollision(id));
        }
    }
    Ok(Expansion {
        trials,
        jobs,
        warnings,
    })
}
