//! liandan's own section (`liandan:`): seeds, resources, retries, checkpoints,
//! metric reading, environment and sizes.

use super::*;

/// Reads `liandan.env`: names as the shell allows them; values strings (numbers
/// and booleans are written as they read). liandan's own variables and the
/// GPU assignment are the worker's to set.
fn parse_env(ctx: &Ctx, v: &Value) -> Result<Vec<(String, String)>, SpecError> {
    let p = "liandan.env";
    let m = as_map(ctx, p, v)?;
    let mut out = Vec::new();
    for (k, val) in m {
        let kp = join(p, k);
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(ctx.err(
                &kp,
                "an environment variable name is letters, digits and _, not starting with a digit",
            ));
        }
        if k.starts_with("LIANDAN_") || k == "CUDA_VISIBLE_DEVICES" || k == "CUDA_DEVICE_ORDER" {
            return Err(ctx.err(
                &kp,
                format!("{k} is set by the worker for every job and cannot be overridden"),
            ));
        }
        let text = match val {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ctx.err(&kp, format!("expected a string, found {}", describe(other))))
            }
        };
        check_macros(ctx, &kp, &text)?;
        out.push((k.clone(), text));
    }
    Ok(out)
}

pub(super) fn parse_extensions(
    ctx: &Ctx,
    v: &Value,
) -> Result<(Extensions, Option<bool>), SpecError> {
    let p = "liandan";
    let m = as_map(ctx, p, v)?;
    check_keys(
        ctx,
        p,
        m,
        &[
            "seeds",
            "seed_param",
            "resources",
            "concurrency",
            "retries",
            "sweep_seed",
            "priority",
            "checkpoint",
            "metric_pattern",
            "trainer",
            "require_metric",
            "objective",
            "env",
            "workdir",
            "seed_axis",
        ],
    )?;
    let mut ext = Extensions::default();
    if let Some(e) = m.get("env").filter(|e| !e.is_null()) {
        ext.env = parse_env(ctx, e)?;
    }
    if let Some(w) = get_str(ctx, p, m, "workdir")? {
        if w.trim().is_empty() {
            return Err(ctx.err(
                "liandan.workdir",
                "empty; leave it out to run jobs in their own attempt directory",
            ));
        }
        check_macros(ctx, "liandan.workdir", &w)?;
        ext.workdir = Some(w);
    }
    let seed_axis = match m.get("seed_axis") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            return Err(ctx.err(
                "liandan.seed_axis",
                format!("expected true or false, found {}", describe(v)),
            ))
        }
    };
    if let Some(o) = get_str(ctx, p, m, "objective")? {
        ext.objective = match o.as_str() {
            "mean" => Objective::Mean,
            "median" => Objective::Median,
            "iqm" => Objective::Iqm,
            other => {
                return Err(ctx.err(
                    "liandan.objective",
                    format!("expected mean, median or iqm, found {other:?}"),
                ))
            }
        };
    }
    if let Some(seeds) = parse_seeds(ctx, m.get("seeds"))? {
        ext.seeds = seeds;
        ext.seed_source = SeedSource::Liandan;
    }
    if let Some(sp) = get_str(ctx, p, m, "seed_param")? {
        if sp.is_empty() || sp.contains(char::is_whitespace) || sp.contains('=') {
            return Err(ctx.err(
                "liandan.seed_param",
                "must be a non-empty name without spaces or '='",
            ));
        }
        ext.seed_param = sp;
    }
    if let Some(r) = m.get("resources") {
        ext.resources = parse_resources(ctx, r)?;
    }
    if let Some(c) = get_u64(ctx, p, m, "concurrency")? {
        if c == 0 || c > u32::MAX as u64 {
            return Err(ctx.err("liandan.concurrency", "expected an integer >= 1"));
        }
        ext.concurrency = Some(c as u32);
    }
    if let Some(r) = get_u64(ctx, p, m, "retries")? {
        ext.retries = u32::try_from(r.min(1000)).unwrap_or(1000);
    }
    if let Some(s) = get_u64(ctx, p, m, "sweep_seed")? {
        ext.sweep_seed = s;
    }
    if let Some(v) = m.get("priority") {
        ext.priority = v
            .as_i64()
            .and_then(|x| i32::try_from(x).ok())
            .ok_or_else(|| {
                ctx.err(
                    "liandan.priority",
                    format!("expected an integer, found {}", describe(v)),
                )
            })?;
    }
    if let Some(c) = m.get("checkpoint") {
        ext.checkpoint = parse_checkpoint(ctx, c)?;
    }
    ext.metric_pattern = get_str(ctx, p, m, "metric_pattern")?;
    for (key, flag) in [
        ("trainer", &mut ext.trainer),
        ("require_metric", &mut ext.require_metric),
    ] {
        match m.get(key) {
            None => {}
            Some(Value::Bool(b)) => *flag = *b,
            Some(v) => {
                return Err(ctx.err(
                    &join(p, key),
                    format!("expected true or false, found {}", describe(v)),
                ))
            }
        }
    }
    Ok((ext, seed_axis))
}

/// `liandan.seeds`: a count (seeds 0..n) or a list of distinct integers.
fn parse_seeds(ctx: &Ctx, v: Option<&Value>) -> Result<Option<Vec<i64>>, SpecError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c) if (1..=10_000).contains(&c) => Ok(Some((0..c as i64).collect())),
            _ => Err(ctx.err(
                "liandan.seeds",
                format!("expected a count from 1 to 10000 or a list of integers, found {n}"),
            )),
        },
        Some(Value::Array(a)) => {
            let mut seeds = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (i, s) in a.iter().enumerate() {
                let seed = s.as_i64().ok_or_else(|| {
                    ctx.err(
                        &format!("liandan.seeds[{i}]"),
                        format!("expected an integer, found {}", describe(s)),
                    )
                })?;
                if !seen.insert(seed) {
                    return Err(ctx.err(
                        &format!("liandan.seeds[{i}]"),
                        format!("seed {seed} is listed twice"),
                    ));
                }
                seeds.push(seed);
            }
            if seeds.is_empty() {
                return Err(ctx.err("liandan.seeds", "empty; give at least one seed"));
            }
            Ok(Some(seeds))
        }
        Some(v) => Err(ctx.err(
            "liandan.seeds",
            format!(
                "expected a count or a list of integers, found {}",
                describe(v)
            ),
        )),
    }
}

/// `liandan.resources`: whole GPUs, CPU slots, memory and required labels.
fn parse_resources(ctx: &Ctx, r: &Value) -> Result<Resources, SpecError> {
    let mut res = Resources::default();
    let rp = "liandan.resources";
    let rm = as_map(ctx, rp, r)?;
    check_keys(ctx, rp, rm, &["gpus", "cpus", "memory", "labels"])?;
    let small = |k: &str| -> Result<Option<u32>, SpecError> {
        get_u64(ctx, rp, rm, k)?
            .map(|x| u32::try_from(x).map_err(|_| ctx.err(&join(rp, k), "too large")))
            .transpose()
    };
    if let Some(g) = small("gpus")? {
        res.gpus = g;
    }
    if let Some(c) = small("cpus")? {
        res.cpus = c;
    }
    if res.gpus == 0 && res.cpus == 0 {
        return Err(ctx.err(
            "liandan.resources.cpus",
            "a job needs at least one GPU or one CPU slot",
        ));
    }
    res.memory_bytes = match rm.get("memory") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
            ctx.err(
                "liandan.resources.memory",
                "expected bytes or a size like \"16GiB\"",
            )
        })?),
        Some(Value::String(s)) => Some(parse_size(s).ok_or_else(|| {
            ctx.err(
                "liandan.resources.memory",
                format!("expected a size like \"16GiB\" or \"512MB\", found {s:?}"),
            )
        })?),
        Some(v) => {
            return Err(ctx.err(
                "liandan.resources.memory",
                format!("expected a size like \"16GiB\", found {}", describe(v)),
            ))
        }
    };
    if let Some(l) = rm.get("labels") {
        let arr = l
            .as_array()
            .ok_or_else(|| ctx.err("liandan.resources.labels", "expected a list of labels"))?;
        for (i, x) in arr.iter().enumerate() {
            let s = x.as_str().ok_or_else(|| {
                ctx.err(
                    &format!("liandan.resources.labels[{i}]"),
                    "expected a string",
                )
            })?;
            crate::names::validate("label", s)
                .map_err(|e| ctx.err(&format!("liandan.resources.labels[{i}]"), e.to_string()))?;
            res.labels.push(s.to_string());
        }
    }
    Ok(res)
}

/// `liandan.checkpoint`: how many checkpoints a job keeps.
fn parse_checkpoint(ctx: &Ctx, c: &Value) -> Result<CheckpointPolicy, SpecError> {
    let mut policy = CheckpointPolicy::default();
    let cp = "liandan.checkpoint";
    let cm = as_map(ctx, cp, c)?;
    check_keys(ctx, cp, cm, &["keep_last", "keep_best"])?;
    if let Some(k) = get_u64(ctx, cp, cm, "keep_last")? {
        if k == 0 {
            return Err(ctx.err("liandan.checkpoint.keep_last", "expected an integer >= 1"));
        }
        policy.keep_last = Some(k.min(1000) as u32);
    }
    match cm.get("keep_best") {
        None => {}
        Some(Value::Bool(b)) => policy.keep_best = *b,
        Some(v) => {
            return Err(ctx.err(
                "liandan.checkpoint.keep_best",
                format!("expected true or false, found {}", describe(v)),
            ))
        }
    }
    Ok(policy)
}

/// Parses sizes like "512MB", "16GiB", "1024".
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let idx = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(idx);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}
