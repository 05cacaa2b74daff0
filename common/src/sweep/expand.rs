//! Expansion of a spec into trials and jobs: W&B's grid (the Cartesian product
//! in W&B's order: parameter names sorted at every level, nested ones
//! flattened in place, the last varying fastest; duplicates removed as W&B's
//! engine removes them) and reproducible random sampling ([`crate::rng`]).
//! No I/O; the same spec and ids give the same jobs forever.

use super::spec::{Method, Param, SeedSource, SpecError, SweepSpec};
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
    leaves_in(params, false, prefix, out)
}

/// The leaves in declaration order, or (`sorted`) in W&B's grid order: names
/// sorted by bytes (as Python sorts `str`) at every level, a nested
/// parameter's leaves in its place.
fn leaves_in<'a>(
    params: &'a [(String, Param)],
    sorted: bool,
    prefix: &mut Vec<&'a str>,
    out: &mut Vec<Leaf<'a>>,
) {
    let mut order: Vec<&'a (String, Param)> = params.iter().collect();
    if sorted {
        order.sort_by(|a, b| a.0.cmp(&b.0));
    }
    for (name, p) in order {
        prefix.push(name);
        match p {
            Param::Nested { parameters } => leaves_in(parameters, sorted, prefix, out),
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

/// numpy's `arange(start, stop, step)` for floats, value for value: the length
/// is ceil((stop - start) / step), and element i is `start + i * d` with
/// `d = (start + step) - start` (numpy fills from the first two elements).
/// W&B enumerates a q_uniform grid with it, so `max` itself is excluded and a
/// 0.1 step gives 0.30000000000000004 exactly as W&B passes it.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let n = ((stop - start) / step).ceil();
    if !n.is_finite() || n <= 0.0 {
        return Vec::new();
    }
    let n = n as usize;
    let d = (start + step) - start;
    (0..n)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * d,
        })
        .collect()
}

/// A value's identity for W&B's grid deduplication (`yaml_hash`): a float
/// with an integral value is the same point as the integer.
fn dedupe_key(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => format!("{}", x as i64),
            _ => canonical_json(v),
        },
        other => canonical_json(other),
    }
}

/// One grid axis with W&B's duplicates removed: a value equal to an earlier
/// one keeps the earlier one's place, and the last spelling wins (W&B looks
/// values up by hash in a dict built from the whole list).
fn dedupe_axis(values: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(values.len());
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for v in values {
        let k = dedupe_key(&v);
        match at.get(&k) {
            Some(&i) => out[i] = v,
            None => {
                at.insert(k, out.len());
                out.push(v);
            }
        }
    }
    out
}

fn grid_values(path: &str, p: &Param) -> Result<Vec<Value>, SpecError> {
    let too_large = |what: String| SpecError {
        path: path.into(),
        line: None,
        message: format!("{what} is too large for a grid"),
    };
    Ok(dedupe_axis(match p {
        Param::Constant { value } => vec![value.clone()],
        Param::Categorical { values } => values.clone(),
        Param::IntUniform { min, max } => {
            if (*max - *min) as u64 >= MAX_JOBS as u64 {
                return Err(too_large(format!("int_uniform range {min}..={max}")));
            }
            (*min..=*max).map(|i| Value::Number(i.into())).collect()
        }
        Param::QUniform {
            min,
            max,
            q,
            integer,
            int_bounds,
        } => {
            if (max - min) / q >= MAX_JOBS as f64 {
                return Err(too_large(format!(
                    "q_uniform from {min} to {max} in steps of {q}"
                )));
            }
            // numpy's arange is integer-typed only when min, max and q all are.
            let ints = *integer && *int_bounds;
            np_arange(*min, *max, *q)
                .into_iter()
                .map(|x| {
                    if ints {
                        Value::Number((x as i64).into())
                    } else {
                        float(x)
                    }
                })
                .collect()
        }
        Param::CategoricalWProbabilities { .. } => {
            return Err(SpecError {
                path: path.into(),
                line: None,
                message: "grid search takes no probabilities (W&B refuses them too); drop `probabilities` or use method random".into(),
            })
        }
        other => {
            return Err(SpecError {
                path: path.into(),
                line: None,
                message: format!("grid search cannot enumerate the continuous distribution `{}`; use `values`, int_uniform or q_uniform, or method random", other.name()),
            })
        }
    }))
}

fn quantize(x: f64, q: f64) -> f64 {
    (x / q).round_ties_even() * q
}

/// `x` rounded to a multiple of `q` (numpy's round, half to even), as an
/// integer when `q` was written as one (W&B's `astype(int)`).
pub fn quantized(x: f64, q: f64, integer: bool) -> Value {
    let v = quantize(x, q);
    if integer && v.is_finite() && v.abs() < 9.0e18 {
        Value::Number((v as i64).into())
    } else {
        float(v)
    }
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
            ..
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
        Param::QLogUniform {
            min,
            max,
            q,
            integer,
        } => quantized(rng.uniform(*min, *max).exp(), *q, *integer),
        Param::QLogUniformValues {
            min,
            max,
            q,
            integer,
        } => quantized(rng.uniform(min.ln(), max.ln()).exp(), *q, *integer),
        Param::InvLogUniform { min, max } => float((-rng.uniform(*min, *max)).exp()),
        Param::InvLogUniformValues { min, max } => {
            float((-rng.uniform((1.0 / max).ln(), (1.0 / min).ln())).exp())
        }
        Param::Normal { mu, sigma } => float(mu + sigma * rng.normal01()),
        Param::QNormal {
            mu,
            sigma,
            q,
            integer,
        } => quantized(mu + sigma * rng.normal01(), *q, *integer),
        Param::LogNormal { mu, sigma } => float((mu + sigma * rng.normal01()).exp()),
        Param::QLogNormal {
            mu,
            sigma,
            q,
            integer,
        } => quantized((mu + sigma * rng.normal01()).exp(), *q, *integer),
        Param::Beta { a, b } => float(rng.beta(*a, *b)),
        Param::QBeta { a, b, q, integer } => quantized(rng.beta(*a, *b), *q, *integer),
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

/// The `draw`-th random point of a random sweep: each leaf sampled in
/// declaration order from a generator keyed by the sweep seed and the draw.
/// Up-front expansion (with run_cap) skips draws that repeat a point; a lazy
/// random sweep (no run_cap) takes draw k as its k-th trial.
pub fn random_params(spec: &SweepSpec, draw: u64) -> Value {
    let mut ls = Vec::new();
    leaves(&spec.parameters, &mut Vec::new(), &mut ls);
    let mut rng = Rng::keyed("liandan.random-trial", &[spec.liandan.sweep_seed, draw]);
    let mut obj = Map::new();
    for leaf in &ls {
        set_path(&mut obj, &leaf.path, sample(leaf.param, &mut rng));
    }
    Value::Object(obj)
}

/// Expands a spec for the sweep `sweep`. Lazy sweeps (bayes, tpe, random
/// without run_cap) expand to nothing here: the coordinator proposes their
/// trials as slots free.
pub fn expand(spec: &SweepSpec, sweep: &SweepId) -> Result<Expansion, ExpandError> {
    let seeds = &spec.liandan.seeds;
    let mut warnings = Vec::new();
    let mut trials: Vec<Trial> = Vec::new();
    let cap_trials = spec.run_cap.map(|c| (c as usize / seeds.len()).max(1));
    let mut jobs: Option<Vec<Job>> = None;
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
        Method::Random if spec.run_cap.is_none() => {
            warnings.push("method `random` without run_cap draws trials as slots free, until you cancel the sweep or metric.target is met; nothing is expanded up front".into());
        }
        Method::Grid => {
            let (t, j) = expand_grid(spec, sweep, cap_trials, &mut warnings)?;
            trials = t;
            jobs = Some(j);
        }
        Method::Random => {
            trials = expand_random(spec, sweep, cap_trials.unwrap_or(1), &mut warnings)?;
        }
    }
    let jobs = match jobs {
        Some(j) => j,
        None => jobs_for(&trials, seeds),
    };
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

/// A grid's trials and jobs, in W&B's order (itertools.product over the
/// sorted axes, the last varying fastest), up to run_cap.
fn expand_grid(
    spec: &SweepSpec,
    sweep: &SweepId,
    cap_trials: Option<usize>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Trial>, Vec<Job>), ExpandError> {
    let seeds = &spec.liandan.seeds;
    let mut trials: Vec<Trial> = Vec::new();
    let mut by_canon: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    // The trial a parameter point belongs to, added when new. With a seed
    // axis several grid points (one per seed) share a trial.
    let mut trial_of = |params: Map<String, Value>, trials: &mut Vec<Trial>| -> Option<usize> {
        let params = Value::Object(params);
        let canon = canonical_json(&params);
        if let Some(&i) = by_canon.get(&canon) {
            return Some(i);
        }
        by_canon.insert(canon.clone(), trials.len());
        trials.push(Trial {
            index: trials.len(),
            id: TrialId::for_params(sweep, &canon),
            params,
        });
        Some(trials.len() - 1)
    };
    // The seed axis of a W&B file is one of W&B's grid parameters, in
    // its sorted place; liandan.seeds (not a W&B notion) vary fastest
    // within each trial.
    let seed_axis = spec.liandan.seed_source == SeedSource::Parameter;
    let mut all = spec.parameters.clone();
    if seed_axis {
        all.push((
            spec.liandan.seed_param.clone(),
            Param::Categorical {
                values: seeds.iter().map(|s| Value::Number((*s).into())).collect(),
            },
        ));
    }
    let mut ls = Vec::new();
    leaves_in(&all, true, &mut Vec::new(), &mut ls);
    let seed_leaf = ls
        .iter()
        .position(|l| seed_axis && l.path.len() == 1 && l.path[0] == spec.liandan.seed_param);
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
    let runs_per_point = if seed_axis { 1 } else { seeds.len() };
    if size.saturating_mul(runs_per_point) > MAX_JOBS {
        return Err(ExpandError::TooLarge(
            size.saturating_mul(runs_per_point),
            MAX_JOBS,
        ));
    }
    // run_cap counts runs: with a seed axis, W&B's first run_cap runs;
    // otherwise whole trials (every seed of each).
    let cap_points = if seed_axis {
        spec.run_cap.map(|c| c as usize)
    } else {
        cap_trials
    };
    let mut out_jobs = Vec::new();
    let mut points = 0usize;
    // Odometer over the axes; the last varies fastest (itertools.product).
    let mut idx = vec![0usize; axes.len()];
    if size > 0 {
        'outer: loop {
            let mut obj = Map::new();
            let mut seed = None;
            for (k, (leaf, (axis, &i))) in ls.iter().zip(axes.iter().zip(&idx)).enumerate() {
                if Some(k) == seed_leaf {
                    seed = axis[i].as_i64();
                } else {
                    set_path(&mut obj, &leaf.path, axis[i].clone());
                }
            }
            if let Some(t) = trial_of(obj, &mut trials) {
                let trial = &trials[t];
                let run_seeds: Vec<i64> = match seed {
                    Some(s) => vec![s],
                    None => seeds.clone(),
                };
                for s in run_seeds {
                    out_jobs.push(Job {
                        id: JobId::for_trial_seed(&trial.id, s),
                        trial: trial.id.clone(),
                        trial_index: trial.index,
                        seed: s,
                    });
                }
                points += 1;
            }
            if cap_points.is_some_and(|c| points >= c) {
                if points < size {
                    warnings.push(format!(
                        "run_cap {} stops the grid after {} of its {} {}",
                        spec.run_cap.unwrap_or(0),
                        points,
                        size,
                        if seed_axis { "runs" } else { "points" }
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
    Ok((trials, out_jobs))
}

/// A random sweep with run_cap: `want` distinct points, drawn in order.
fn expand_random(
    spec: &SweepSpec,
    sweep: &SweepId,
    want: usize,
    warnings: &mut Vec<String>,
) -> Result<Vec<Trial>, ExpandError> {
    let seeds = &spec.liandan.seeds;
    let mut trials: Vec<Trial> = Vec::new();
    if want.saturating_mul(seeds.len()) > MAX_JOBS {
        return Err(ExpandError::TooLarge(want * seeds.len(), MAX_JOBS));
    }
    let mut draw = 0u64;
    let max_draws = (want as u64).saturating_mul(100).max(1000);
    let mut seen_random = HashSet::new();
    while trials.len() < want && draw < max_draws {
        let params = random_params(spec, draw);
        draw += 1;
        let canon = canonical_json(&params);
        if !seen_random.insert(canon.clone()) {
            continue;
        }
        trials.push(Trial {
            index: trials.len(),
            id: TrialId::for_params(sweep, &canon),
            params,
        });
    }
    if trials.len() < want {
        warnings.push(format!(
            "the parameter space has only {} distinct points; run_cap asked for {want} trials",
            trials.len()
        ));
    }
    Ok(trials)
}
