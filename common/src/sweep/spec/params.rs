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
        None => infer_distribution(ctx, path, map)?.into(),
    };
    let d = dist.as_str();
    check_keys(ctx, path, map, allowed_keys(d))?;
    if matches!(d, "log_uniform" | "q_log_uniform" | "inv_log_uniform") {
        ctx.warn(format!("{path}: distribution `{d}` takes exponents as bounds and is deprecated in W&B; prefer `{d}_values`"));
    }
    let p = Fields { ctx, path, map, d };
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
            values: p.values()?,
        },
        "categorical_w_probabilities" => {
            let values = p.values()?;
            let probabilities = p.probabilities(values.len())?;
            Param::CategoricalWProbabilities {
                values,
                probabilities,
            }
        }
        "int_uniform" => {
            let (min, max) = p.int_bounds()?;
            Param::IntUniform { min, max }
        }
        "uniform" => {
            let (min, max) = p.bounds()?;
            Param::Uniform { min, max }
        }
        "q_uniform" => {
            let (min, max) = p.bounds()?;
            // W&B's default q is 1.0, a float: without q the values are floats.
            Param::QUniform {
                min,
                max,
                q: p.q()?,
                integer: p.integer_q(),
                int_bounds: is_int(map.get("min")) && is_int(map.get("max")),
            }
        }
        "log_uniform" => {
            let (min, max) = p.bounds()?;
            Param::LogUniform { min, max }
        }
        "log_uniform_values" => {
            let (min, max) = p.positive_bounds()?;
            Param::LogUniformValues { min, max }
        }
        "q_log_uniform" => {
            let (min, max) = p.bounds()?;
            Param::QLogUniform {
                min,
                max,
                q: p.q()?,
                integer: p.integer_q(),
            }
        }
        "q_log_uniform_values" => {
            let (min, max) = p.positive_bounds()?;
            Param::QLogUniformValues {
                min,
                max,
                q: p.q()?,
                integer: p.integer_q(),
            }
        }
        "inv_log_uniform" => {
            let (min, max) = p.bounds()?;
            Param::InvLogUniform { min, max }
        }
        "inv_log_uniform_values" => {
            let (min, max) = p.positive_bounds()?;
            Param::InvLogUniformValues { min, max }
        }
        "normal" => {
            let (mu, sigma) = p.normal()?;
            Param::Normal { mu, sigma }
        }
        "q_normal" => {
            let (mu, sigma) = p.normal()?;
            Param::QNormal {
                mu,
                sigma,
                q: p.q()?,
                integer: p.integer_q(),
            }
        }
        "log_normal" => {
            let (mu, sigma) = p.normal()?;
            Param::LogNormal { mu, sigma }
        }
        "q_log_normal" => {
            let (mu, sigma) = p.normal()?;
            Param::QLogNormal {
                mu,
                sigma,
                q: p.q()?,
                integer: p.integer_q(),
            }
        }
        "beta" => {
            let (a, b) = p.beta()?;
            Param::Beta { a, b }
        }
        _ => {
            let (a, b) = p.beta()?;
            Param::QBeta {
                a,
                b,
                q: p.q()?,
                integer: p.integer_q(),
            }
        }
    })
}

/// W&B's type inference, for a parameter without `distribution`.
fn infer_distribution(
    ctx: &Ctx,
    path: &str,
    map: &Map<String, Value>,
) -> Result<&'static str, SpecError> {
    Ok(if map.contains_key("value") {
        "constant"
    } else if map.contains_key("values") {
        if map.contains_key("probabilities") {
            "categorical_w_probabilities"
        } else {
            "categorical"
        }
    } else if map.contains_key("min") || map.contains_key("max") {
        if map.contains_key("q") {
            "q_uniform"
        } else if is_int(map.get("min")) && is_int(map.get("max")) {
            "int_uniform"
        } else {
            "uniform"
        }
    } else if map.contains_key("mu") || map.contains_key("sigma") {
        "normal"
    } else if map.contains_key("a") || map.contains_key("b") {
        "beta"
    } else {
        // A misspelt key is the usual cause: name it.
        let before = ctx.errors.borrow().len();
        check_keys(ctx, path, map, PARAM_KEYS)?;
        if ctx.errors.borrow().len() > before {
            return Err(first_recorded_since(ctx, before));
        }
        return Err(ctx.err(
            path,
            "cannot tell the distribution: give `value`, `values`, `min`/`max`, or `distribution`",
        ));
    })
}

/// The keys distribution `d` takes.
fn allowed_keys(d: &str) -> &'static [&'static str] {
    match d {
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
    }
}

/// One parameter's fields, read and checked for distribution `d`; each
/// error names the field's path.
struct Fields<'a, 'c> {
    ctx: &'a Ctx<'c>,
    path: &'a str,
    map: &'a Map<String, Value>,
    d: &'a str,
}

impl Fields<'_, '_> {
    fn err(&self, key: &str, msg: impl Into<String>) -> SpecError {
        self.ctx.err(&join(self.path, key), msg)
    }

    fn bounds(&self) -> Result<(f64, f64), SpecError> {
        let lo = req_f64(self.ctx, self.path, self.map, "min", self.d)?;
        let hi = req_f64(self.ctx, self.path, self.map, "max", self.d)?;
        if lo >= hi {
            return Err(self.err(
                "max",
                format!("must be greater than min ({lo}), found {hi}"),
            ));
        }
        Ok((lo, hi))
    }

    /// Bounds of a distribution that takes values (not exponents): min > 0.
    fn positive_bounds(&self) -> Result<(f64, f64), SpecError> {
        let (lo, hi) = self.bounds()?;
        if lo <= 0.0 {
            return Err(self.err(
                "min",
                format!(
                    "distribution `{}` takes values, so min must be greater than 0, found {lo}",
                    self.d
                ),
            ));
        }
        Ok((lo, hi))
    }

    /// int_uniform's bounds: integers within ±2^53, min < max.
    fn int_bounds(&self) -> Result<(i64, i64), SpecError> {
        let int = |k: &str| -> Result<i64, SpecError> {
            match self.map.get(k) {
                Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
                Some(v) => Err(self.err(
                    k,
                    format!("int_uniform needs an integer, found {}", describe(v)),
                )),
                None => Err(self.err(k, "int_uniform needs `min` and `max` (integers)")),
            }
        };
        let (min, max) = (int("min")?, int("max")?);
        // W&B's backend holds numbers as float64; beyond 2^53 they are not exact.
        const LIMIT: i64 = 1 << 53;
        for (k, x) in [("min", min), ("max", max)] {
            if !(-LIMIT..=LIMIT).contains(&x) {
                return Err(self.err(
                    k,
                    format!("int_uniform bounds must lie within ±2^53, found {x}"),
                ));
            }
        }
        if min >= max {
            return Err(self.err(
                "max",
                format!("must be greater than min ({min}), found {max} (W&B's rule; for one value use `value`)"),
            ));
        }
        Ok((min, max))
    }

    fn q(&self) -> Result<f64, SpecError> {
        let q = get_f64(self.ctx, self.path, self.map, "q")?.unwrap_or(1.0);
        if q <= 0.0 {
            return Err(self.err("q", format!("must be greater than 0, found {q}")));
        }
        Ok(q)
    }

    /// An integer q makes the values integers.
    fn integer_q(&self) -> bool {
        is_int(self.map.get("q"))
    }

    fn normal(&self) -> Result<(f64, f64), SpecError> {
        let mu = get_f64(self.ctx, self.path, self.map, "mu")?.unwrap_or(0.0);
        let sigma = get_f64(self.ctx, self.path, self.map, "sigma")?.unwrap_or(1.0);
        if sigma <= 0.0 {
            return Err(self.err("sigma", format!("must be greater than 0, found {sigma}")));
        }
        Ok((mu, sigma))
    }

    fn beta(&self) -> Result<(f64, f64), SpecError> {
        let a = get_f64(self.ctx, self.path, self.map, "a")?.unwrap_or(1.0);
        let b = get_f64(self.ctx, self.path, self.map, "b")?.unwrap_or(1.0);
        for (k, x) in [("a", a), ("b", b)] {
            if x <= 0.0 {
                return Err(self.err(k, format!("must be greater than 0, found {x}")));
            }
        }
        Ok((a, b))
    }

    fn values(&self) -> Result<Vec<Value>, SpecError> {
        match self.map.get("values") {
            Some(Value::Array(a)) if !a.is_empty() => Ok(a.clone()),
            Some(Value::Array(_)) => Err(self.err("values", "empty; give at least one value")),
            Some(v) => Err(self.err("values", format!("expected a list, found {}", describe(v)))),
            None => Err(self.err(
                "values",
                format!("distribution `{}` needs `values` (a list)", self.d),
            )),
        }
    }

    /// One non-negative probability per value, summing to 1 (W&B's check:
    /// numpy's isclose(sum, 1)).
    fn probabilities(&self, n: usize) -> Result<Vec<f64>, SpecError> {
        let probs = match self.map.get("probabilities") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_f64().filter(|p| *p >= 0.0).ok_or_else(|| {
                        self.err(
                            "probabilities",
                            format!("expected non-negative numbers, found {}", describe(x)),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(self.err("probabilities", "expected a list of numbers, one per value")),
        };
        if probs.len() != n {
            return Err(self.err(
                "probabilities",
                format!("has {} entries but values has {n}", probs.len()),
            ));
        }
        let sum: f64 = probs.iter().sum();
        if (sum - 1.0).abs() > 1e-8 + 1e-5 {
            return Err(self.err("probabilities", format!("must sum to 1, found {sum}")));
        }
        Ok(probs)
    }
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
