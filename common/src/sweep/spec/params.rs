//! W&B's parameter shapes (values, distributions, nested parameters), early
//! termination, what grid search can enumerate, and the seed axis.

use super::*;

/// Every key a parameter may have.
const PARAM_KEYS: &[&str] = &[
    "distribution",
    "value",
    "values",
    "probabilities",
    "min",
    "max",
    "q",
    "mu",
    "sigma",
    "a",
    "b",
    "parameters",
];

pub(super) fn parse_params(
    ctx: &Ctx,
    path: &str,
    v: &Value,
) -> Result<Vec<(String, Param)>, SpecError> {
    let map = as_map(ctx, path, v)?;
    let mut out = Vec::new();
    for (name, pv) in map {
        let p = join(path, name);
        // W&B's schema: `^[A-Za-z_][A-Za-z0-9_.-]*$` at every level.
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            ctx.record(ctx.err(
                &p,
                format!("{name:?} is not a parameter name W&B accepts: letters, digits, _, . and -, starting with a letter or _"),
            ));
            continue;
        }
        // Each parameter is checked on its own: all their errors are told.
        if let Some(param) = ctx.keep(parse_param(ctx, &p, pv)) {
            out.push((name.clone(), param));
        }
    }
    Ok(out)
}

const DIST_NAMES: &[&str] = &[
    "constant",
    "categorical",
    "categorical_w_probabilities",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
];

fn parse_param(ctx: &Ctx, path: &str, v: &Value) -> Result<Param, SpecError> {
    let map = as_map(ctx, path, v)?;
    if let Some(nested) = map.get("parameters") {
        check_keys(ctx, path, map, &["parameters"])?;
        let parameters = parse_params(ctx, &join(path, "parameters"), nested)?;
        if nested.as_object().is_some_and(|m| m.is_empty()) {
            return Err(ctx.err(
                &join(path, "parameters"),
                "empty; a nested parameter needs at least one parameter",
            ));
        }
        return Ok(Param::Nested { parameters });
    }
    let dist = match get_str(ctx, path, map, "distribution")? {
        Some(d) => {
            if !DIST_NAMES.contains(&d.as_str()) {
                return Err(ctx.err(
                    &join(path, "distribution"),
                    format!(
                        "unknown distribution {d:?}{}; expected one of: {}",
                        did_you_mean(&d, DIST_NAMES),
                        DIST_NAMES.join(", ")
                    ),
                ));
            }
            d
        }
        // W&B's type inference.
        None => {
            if map.contains_key("value") {
                "constant".into()
            } else if map.contains_key("values") {
                if map.contains_key("probabilities") {
                    "categorical_w_probabilities".into()
                } else {
                    "categorical".into()
                }
            } else if map.contains_key("min") || map.contains_key("max") {
                if map.contains_key("q") {
                    "q_uniform".into()
                } else if is_int(map.get("min")) && is_int(map.get("max")) {
                    "int_uniform".into()
                } else {
                    "uniform".into()
                }
            } else if map.contains_key("mu") || map.contains_key("sigma") {
                "normal".into()
            } else if map.contains_key("a") || map.contains_key("b") {
                "beta".into()
            } else {
                // A misspelt key is the usual cause: name it.
                let before = ctx.errors.borrow().len();
                check_keys(ctx, path, map, PARAM_KEYS)?;
                if ctx.errors.borrow().len() > before {
                    return Err(first_recorded_since(ctx, before));
                }
                return Err(ctx.err(path, "cannot tell the distribution: give `value`, `values`, `min`/`max`, or `distribution`"));
            }
        }
    };
    let d = dist.as_str();
    let allowed: &[&str] = match d {
        "constant" => &["distribution", "value"],
        "categorical" => &["distribution", "values"],
        "categorical_w_probabilities" => &["distribution", "values", "probabilities"],
        "int_uniform"
        | "uniform"
        | "log_uniform"
        | "log_uniform_values"
        | "inv_log_uniform"
        | "inv_log_uniform_values" => &["distribution", "min", "max"],
        "q_uniform" | "q_log_uniform" | "q_log_uniform_values" => {
            &["distribution", "min", "max", "q"]
        }
        "normal" | "log_normal" => &["distribution", "mu", "sigma"],
        "q_normal" | "q_log_normal" => &["distribution", "mu", "sigma", "q"],
        "beta" => &["distribution", "a", "b"],
        _ => &["distribution", "a", "b", "q"],
    };
    check_keys(ctx, path, map, allowed)?;
    let bounds = |ctx: &Ctx| -> Result<(f64, f64), SpecError> {
        let lo = req_f64(ctx, path, map, "min", d)?;
        let hi = req_f64(ctx, path, map, "max", d)?;
        if lo >= hi {
            return Err(ctx.err(
                &join(path, "max"),
                format!("must be greater than min ({lo}), found {hi}"),
            ));
        }
        Ok((lo, hi))
    };
    let q = |ctx: &Ctx| -> Result<f64, SpecError> {
        let q = get_f64(ctx, path, map, "q")?.unwrap_or(1.0);
        if q <= 0.0 {
            return Err(ctx.err(
                &join(path, "q"),
                format!("must be greater than 0, found {q}"),
            ));
        }
        Ok(q)
    };
    let normal = |ctx: &Ctx| -> Result<(f64, f64), SpecError> {
        let mu = get_f64(ctx, path, map, "mu")?.unwrap_or(0.0);
        let sigma = get_f64(ctx, path, map, "sigma")?.unwrap_or(1.0);
        if sigma <= 0.0 {
            return Err(ctx.err(
                &join(path, "sigma"),
                format!("must be greater than 0, found {sigma}"),
            ));
        }
        Ok((mu, sigma))
    };
    let beta = |ctx: &Ctx| -> Result<(f64, f64), SpecError> {
        let a = get_f64(ctx, path, map, "a")?.unwrap_or(1.0);
        let b = get_f64(ctx, path, map, "b")?.unwrap_or(1.0);
        for (k, x) in [("a", a), ("b", b)] {
            if x <= 0.0 {
                return Err(ctx.err(&join(path, k), format!("must be greater than 0, found {x}")));
            }
        }
        Ok((a, b))
    };
    let positive_bounds = |ctx: &Ctx| -> Result<(f64, f64), SpecError> {
        let (lo, hi) = bounds(ctx)?;
        if lo <= 0.0 {
            return Err(ctx.err(
                &join(path, "min"),
                format!(
                    "distribution `{d}` takes values, so min must be greater than 0, found {lo}"
                ),
            ));
        }
        Ok((lo, hi))
    };
    let values = |ctx: &Ctx| -> Result<Vec<Value>, SpecError> {
        match map.get("values") {
            Some(Value::Array(a)) if !a.is_empty() => Ok(a.clone()),
            Some(Value::Array(_)) => {
                Err(ctx.err(&join(path, "values"), "empty; give at least one value"))
            }
            Some(v) => Err(ctx.err(
                &join(path, "values"),
                format!("expected a list, found {}", describe(v)),
            )),
            None => Err(ctx.err(
                &join(path, "values"),
                format!("distribution `{d}` needs `values` (a list)"),
            )),
        }
    };
    if matches!(d, "log_uniform" | "q_log_uniform" | "inv_log_uniform") {
        ctx.warn(format!("{path}: distribution `{d}` takes exponents as bounds and is deprecated in W&B; prefer `{d}_values`"));
    }
    Ok(match d {
        "constant" => Param::Constant {
            value: map.get("value").cloned().ok_or_else(|| {
                ctx.err(
                    &join(path, "value"),
                    "distribution `constant` needs `value` (use `value: null` for None)",
                )
            })?,
        },
        "categorical" => Param::Categorical {
            values: values(ctx)?,
        },
        "categorical_w_probabilities" => {
            let vals = values(ctx)?;
            let probs = match map.get("probabilities") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_f64().filter(|p| *p >= 0.0).ok_or_else(|| {
                            ctx.err(
                                &join(path, "probabilities"),
                                format!("expected non-negative numbers, found {}", describe(x)),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(ctx.err(
                        &join(path, "probabilities"),
                        "expected a list of numbers, one per value",
                    ))
                }
            };
            if probs.len() != vals.len() {
                return Err(ctx.err(
                    &join(path, "probabilities"),
                    format!("has {} entries but values has {}", probs.len(), vals.len()),
                ));
            }
            let sum: f64 = probs.iter().sum();
            // W&B's check: numpy's isclose(sum, 1).
            if (sum - 1.0).abs() > 1e-8 + 1e-5 {
                return Err(ctx.err(
                    &join(path, "probabilities"),
                    format!("must sum to 1, found {sum}"),
                ));
            }
            Param::CategoricalWProbabilities {
                values: vals,
                probabilities: probs,
            }
        }
        "int_uniform" => {
            let ints = |k: &str| -> Result<i64, SpecError> {
                match map.get(k) {
                    Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
                    Some(v) => Err(ctx.err(
                        &join(path, k),
                        format!("int_uniform needs an integer, found {}", describe(v)),
                    )),
                    None => Err(ctx.err(
                        &join(path, k),
                        "int_uniform needs `min` and `max` (integers)",
                    )),
                }
            };
            let (min, max) = (ints("min")?, ints("max")?);
            // W&B's backend holds numbers as float64; beyond 2^53 they are not exact.
            const LIMIT: i64 = 1 << 53;
            for (k, x) in [("min", min), ("max", max)] {
                if !(-LIMIT..=LIMIT).contains(&x) {
                    return Err(ctx.err(
                        &join(path, k),
                        format!("int_uniform bounds must lie within ±2^53, found {x}"),
                    ));
                }
            }
            if min >= max {
                return Err(ctx.err(
                    &join(path, "max"),
                    format!("must be greater than min ({min}), found {max} (W&B's rule; for one value use `value`)"),
                ));
            }
            Param::IntUniform { min, max }
        }
        "uniform" => {
            let (min, max) = bounds(ctx)?;
            Param::Uniform { min, max }
        }
        "q_uniform" => {
            let (min, max) = bounds(ctx)?;
            // W&B's default q is 1.0, a float: without q the values are floats.
            Param::QUniform {
                min,
                max,
                q: q(ctx)?,
                integer: is_int(map.get("q")),
                int_bounds: is_int(map.get("min")) && is_int(map.get("max")),
            }
        }
        "log_uniform" => {
            let (min, max) = bounds(ctx)?;
            Param::LogUniform { min, max }
        }
        "log_uniform_values" => {
            let (min, max) = positive_bounds(ctx)?;
            Param::LogUniformValues { min, max }
        }
        "q_log_uniform" => {
            let (min, max) = bounds(ctx)?;
            Param::QLogUniform {
                min,
                max,
                q: q(ctx)?,
                integer: is_int(map.get("q")),
            }
        }
        "q_log_uniform_values" => {
            let (min, max) = positive_bounds(ctx)?;
            Param::QLogUniformValues {
                min,
                max,
                q: q(ctx)?,
                integer: is_int(map.get("q")),
            }
        }
        "inv_log_uniform" => {
            let (min, max) = bounds(ctx)?;
            Param::InvLogUniform { min, max }
        }
        "inv_log_uniform_values" => {
            let (min, max) = positive_bounds(ctx)?;
            Param::InvLogUniformValues { min, max }
        }
        "normal" => {
            let (mu, sigma) = normal(ctx)?;
            Param::Normal { mu, sigma }
        }
        "q_normal" => {
            let (mu, sigma) = normal(ctx)?;
            Param::QNormal {
                mu,
                sigma,
                q: q(ctx)?,
                integer: is_int(map.get("q")),
            }
        }
        "log_normal" => {
            let (mu, sigma) = normal(ctx)?;
            Param::LogNormal { mu, sigma }
        }
        "q_log_normal" => {
            let (mu, sigma) = normal(ctx)?;
            Param::QLogNormal {
                mu,
                sigma,
                q: q(ctx)?,
                integer: is_int(map.get("q")),
            }
        }
        "beta" => {
            let (a, b) = beta(ctx)?;
            Param::Beta { a, b }
        }
        _ => {
            let (a, b) = beta(ctx)?;
            Param::QBeta {
                a,
                b,
                q: q(ctx)?,
                integer: is_int(map.get("q")),
            }
        }
    })
}

pub(super) fn parse_early_terminate(ctx: &Ctx, v: &Value) -> Result<EarlyTerminate, SpecError> {
    let p = "early_terminate";
    let m = as_map(ctx, p, v)?;
    check_keys(
        ctx,
        p,
        m,
        &["type", "min_iter", "max_iter", "s", "eta", "strict"],
    )?;
    let rule = match get_str(ctx, p, m, "type")?.as_deref() {
        Some("hyperband") => StopRule::Hyperband,
        Some("asha") => StopRule::Asha,
        Some(other) => {
            return Err(ctx.err(
                "early_terminate.type",
                format!("expected hyperband or asha, found {other:?}"),
            ))
        }
        None => {
            return Err(ctx.err(
                "early_terminate.type",
                "missing; expected hyperband or asha",
            ))
        }
    };
    let min_iter = get_u64(ctx, p, m, "min_iter")?;
    let max_iter = get_u64(ctx, p, m, "max_iter")?;
    let s = get_u64(ctx, p, m, "s")?;
    let eta = get_f64(ctx, p, m, "eta")?.unwrap_or(3.0);
    if eta <= 1.0 {
        return Err(ctx.err(
            "early_terminate.eta",
            format!("must be greater than 1, found {eta}"),
        ));
    }
    match (min_iter, max_iter) {
        (None, None) => return Err(ctx.err(p, "hyperband needs min_iter, or max_iter with s")),
        (Some(_), Some(_)) => return Err(ctx.err(p, "give min_iter or max_iter, not both")),
        (_, Some(_)) if s.is_none() => {
            return Err(ctx.err(
                "early_terminate.s",
                "max_iter needs s (the number of brackets)",
            ))
        }
        (Some(0), _) | (_, Some(0)) => {
            return Err(ctx.err(p, "min_iter/max_iter must be at least 1"))
        }
        _ => {}
    }
    let strict = match m.get("strict") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ctx.err(
                "early_terminate.strict",
                format!("expected true or false, found {}", describe(v)),
            ))
        }
    };
    Ok(EarlyTerminate {
        rule,
        min_iter,
        max_iter,
        s,
        eta,
        strict,
    })
}

/// A grid enumerates constants, values, int_uniform and q_uniform only (W&B's
/// engine refuses the rest when it proposes the first run).
pub(super) fn check_grid(ctx: &Ctx, path: &str, params: &[(String, Param)]) {
    // Every parameter grid search cannot enumerate is recorded, not just the first.
    for (name, p) in params {
        let here = join(path, name);
        match p {
            Param::Nested { parameters } => {
                check_grid(ctx, &join(&here, "parameters"), parameters)
            }
            Param::Constant { .. }
            | Param::Categorical { .. }
            | Param::IntUniform { .. }
            | Param::QUniform { .. } => {}
            Param::CategoricalWProbabilities { .. } => {
                ctx.record(ctx.err(&join(&here, "probabilities"), "grid search takes no probabilities (W&B refuses them too); drop `probabilities` or use method random"))
            }
            other => {
                ctx.record(ctx.err(&here, format!("grid search cannot enumerate the continuous distribution `{}`; use `values`, int_uniform or q_uniform, or method random", other.name())))
            }
        }
    }
}

/// W&B files sweep seeds as an ordinary parameter (`seed: {values: [1, 2, 3]}`).
/// Such a parameter becomes the seed axis: its values are the sweep's seeds,
/// each trial (a point of the other parameters) runs once per seed, and the
/// program gets the seed exactly as W&B would pass that parameter.
pub(super) fn seed_axis_from_parameters(
    ctx: &Ctx,
    ext: &mut Extensions,
    parameters: &mut Vec<(String, Param)>,
    seed_axis: Option<bool>,
) -> Result<(), SpecError> {
    let name = ext.seed_param.clone();
    let Some(pos) = parameters.iter().position(|(n, _)| *n == name) else {
        return Ok(());
    };
    let path = format!("parameters.{name}");
    if ext.seed_source == SeedSource::Liandan {
        return Err(ctx.err(
            &path,
            format!("both this parameter and liandan.seeds give the seeds; remove one (or set liandan.seed_param to another name to keep `{name}` an ordinary parameter)"),
        ));
    }
    if seed_axis == Some(false) {
        return Ok(());
    }
    let values: Option<Vec<Value>> = match &parameters[pos].1 {
        Param::Categorical { values } => Some(values.clone()),
        Param::Constant { value } => Some(vec![value.clone()]),
        _ => None,
    };
    let Some(values) = values else {
        ctx.warn(format!(
            "{path}: a `{}` seed stays an ordinary parameter (each run draws one); list seeds with `values` or under liandan.seeds to see results over seeds",
            parameters[pos].1.name()
        ));
        return Ok(());
    };
    let mut seeds: Vec<i64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for v in &values {
        match v.as_i64() {
            Some(x) if v.is_i64() || v.is_u64() => {
                if seen.insert(x) {
                    seeds.push(x);
                }
            }
            _ => {
                ctx.warn(format!(
                    "{path}: the value {v} is not an integer, so `{name}` stays an ordinary parameter; liandan.seeds takes integer seeds"
                ));
                return Ok(());
            }
        }
    }
    if seeds.len() < values.len() {
        ctx.warn(format!("{path}: repeated seeds are run once each"));
    }
    ctx.warn(format!(
        "{path}: {} value{} used as the seed axis; liandan.seed_axis: false keeps it an ordinary parameter",
        seeds.len(),
        if seeds.len() == 1 { "" } else { "s" }
    ));
    parameters.remove(pos);
    ext.seeds = seeds;
    ext.seed_source = SeedSource::Parameter;
    Ok(())
}
