//! Reading a spec: the document's top level (method, metric, command, program)
//! and the helpers every part is read with.

use super::*;

const TOP_KEYS: &[&str] = &[
    "program",
    "command",
    "method",
    "metric",
    "parameters",
    "run_cap",
    "name",
    "description",
    "early_terminate",
    "project",
    "entity",
    "controller",
    "kind",
    "apiVersion",
    "liandan",
];

/// Parses and validates a spec.
pub fn parse(text: &str, format: Format) -> Result<Parsed, Invalid> {
    let root: Value = match format {
        Format::Yaml => crate::sweep::yaml11::load(text).map_err(|e| SpecError {
            path: String::new(),
            line: e.line,
            message: format!("not valid YAML: {}", e.message),
        })?,
        Format::Toml => {
            let t: toml::Table = toml::from_str(text).map_err(|e| SpecError {
                path: String::new(),
                line: None,
                message: format!(
                    "not valid TOML: {}",
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            })?;
            serde_json::to_value(t).map_err(|e| SpecError {
                path: String::new(),
                line: None,
                message: e.to_string(),
            })?
        }
    };
    let ctx = Ctx {
        text,
        format,
        warnings: Default::default(),
        errors: Default::default(),
    };
    let spec = from_value(&root, &ctx);
    let errors = ctx.errors.into_inner();
    match spec {
        Ok(spec) if errors.is_empty() => Ok(Parsed {
            spec,
            warnings: ctx.warnings.into_inner(),
        }),
        Ok(_) => Err(Invalid::new(errors)),
        // An early return stands for the recorded errors (it is a copy of
        // the first); only an error about the whole document is unrecorded.
        Err(e) if errors.is_empty() => Err(Invalid::new(vec![e])),
        Err(_) => Err(Invalid::new(errors)),
    }
}

pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", s.chars().take(60).collect::<String>()),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn as_map<'v>(
    ctx: &Ctx,
    path: &str,
    v: &'v Value,
) -> Result<&'v Map<String, Value>, SpecError> {
    v.as_object()
        .ok_or_else(|| ctx.err(path, format!("expected a mapping, found {}", describe(v))))
}

pub(super) fn check_keys(
    ctx: &Ctx,
    path: &str,
    map: &Map<String, Value>,
    allowed: &[&str],
) -> Result<(), SpecError> {
    // Every unknown key is recorded; the known ones are checked on.
    for k in map.keys() {
        if !allowed.contains(&k.as_str()) {
            ctx.record(ctx.err(
                &join(path, k),
                format!(
                    "unknown key{}; expected one of: {}",
                    did_you_mean(k, allowed),
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn get_f64(
    ctx: &Ctx,
    path: &str,
    map: &Map<String, Value>,
    key: &str,
) -> Result<Option<f64>, SpecError> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                // PyYAML (YAML 1.1, what W&B reads files with) keeps `1e-3`
                // without a dot a string, and W&B's engine then refuses the
                // file; YAML 1.2 reads a number. liandan takes the number and says so.
                Value::String(s) => {
                    let x = s.trim().parse::<f64>().ok();
                    if x.is_some() {
                        ctx.warn(format!(
                            "{}: {s:?} is read as a number; W&B reads it as a string (YAML 1.1) and refuses the file; write it with a dot (e.g. 1.0e-5) to keep the file valid for W&B",
                            join(path, key)
                        ));
                    }
                    x
                }
                _ => None,
            };
            match n {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(ctx.err(
                    &join(path, key),
                    format!("expected a number, found {}", describe(v)),
                )),
            }
        }
    }
}

pub(super) fn req_f64(
    ctx: &Ctx,
    path: &str,
    map: &Map<String, Value>,
    key: &str,
    dist: &str,
) -> Result<f64, SpecError> {
    get_f64(ctx, path, map, key)?.ok_or_else(|| {
        ctx.err(
            &join(path, key),
            format!("distribution `{dist}` needs `{key}` (a number)"),
        )
    })
}

pub(super) fn is_int(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Number(n)) if n.is_i64() || n.is_u64())
}

pub(super) fn get_u64(
    ctx: &Ctx,
    path: &str,
    map: &Map<String, Value>,
    key: &str,
) -> Result<Option<u64>, SpecError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        // JSON Schema (W&B's validation) counts 4.0 as an integer.
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 9.0e15)
                    .map(|x| x as u64)
            })
            .map(Some)
            .ok_or_else(|| {
                ctx.err(
                    &join(path, key),
                    format!("expected a non-negative integer, found {}", describe(v)),
                )
            }),
    }
}

pub(super) fn get_str(
    ctx: &Ctx,
    path: &str,
    map: &Map<String, Value>,
    key: &str,
) -> Result<Option<String>, SpecError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ctx.err(
            &join(path, key),
            format!("expected a string, found {}", describe(v)),
        )),
    }
}

/// The spec, checked whole: each independent part (the method, the metric,
/// every parameter, each section of `liandan:`) is checked on past the
/// others' errors, which are recorded in `ctx`; a part that depends on
/// another (the grid check on the method) is checked only when that one was
/// fine. The result is meaningful only when `ctx` recorded no error.
fn from_value(root: &Value, ctx: &Ctx) -> Result<SweepSpec, SpecError> {
    let map = match root {
        Value::Object(m) => m,
        Value::Null => {
            return Err(ctx.err(
                "",
                "the sweep file is empty; it needs at least `method` and `parameters`",
            ))
        }
        other => {
            return Err(ctx.err(
                "",
                format!(
                    "expected a mapping at the top of the file, found {}",
                    describe(other)
                ),
            ))
        }
    };
    for k in map.keys() {
        if !TOP_KEYS.contains(&k.as_str()) {
            ctx.record(ctx.err(k, format!("unknown top-level key{}; expected one of: {} (liandan's own settings go under `liandan:`)", did_you_mean(k, TOP_KEYS), TOP_KEYS.join(", "))));
        }
    }
    let method = ctx.keep(parse_method(ctx, map));
    let metric = ctx.keep(parse_metric(ctx, map));
    if let (Some(method), Some(None)) = (method, &metric) {
        if method.is_adaptive() {
            ctx.record(ctx.err(
                "metric",
                format!(
                    "method `{}` needs a metric to optimise (metric.name and metric.goal)",
                    method.as_str()
                ),
            ));
        }
    }
    let parameters = match map.get("parameters") {
        None => {
            ctx.record(ctx.err(
                "parameters",
                "missing; a sweep needs at least one parameter",
            ));
            None
        }
        Some(v) => {
            if v.as_object().is_some_and(|m| m.is_empty()) {
                ctx.record(ctx.err("parameters", "empty; a sweep needs at least one parameter"));
            }
            ctx.keep(parse_params(ctx, "parameters", v))
        }
    };
    if let (Some(Method::Grid), Some(params)) = (method, &parameters) {
        check_grid(ctx, "parameters", params);
    }
    let run_cap = ctx.keep(get_u64(ctx, "", map, "run_cap")).flatten();
    if run_cap == Some(0) {
        ctx.record(ctx.err("run_cap", "expected an integer >= 1"));
    }
    let early_terminate = match map.get("early_terminate") {
        None | Some(Value::Null) => None,
        Some(v) => ctx.keep(parse_early_terminate(ctx, v)),
    };
    if early_terminate.is_some() && matches!(metric, Some(None)) {
        ctx.record(ctx.err(
            "metric",
            "early_terminate needs a metric to compare runs on (metric.name and metric.goal)",
        ));
    }
    let liandan = match map.get("liandan") {
        None | Some(Value::Null) => Some((Extensions::default(), None)),
        Some(v) => ctx.keep(parse_extensions(ctx, v)),
    };
    let program = ctx.keep(get_str(ctx, "", map, "program"));
    let command = ctx.keep(parse_command(ctx, map));
    let name = ctx.keep(get_str(ctx, "", map, "name")).flatten();
    if let Some(name) = &name {
        if crate::names::validate("sweep name", name).is_err() {
            ctx.warn(format!(
                "name {name:?} is not usable as a sweep id; submit with --name to choose one"
            ));
        }
    }
    let description = ctx.keep(get_str(ctx, "", map, "description")).flatten();
    // The metric's extensions, checked whatever else failed.
    if let Some((ext, _)) = &liandan {
        if let Some(pattern) = &ext.metric_pattern {
            let m = metric.as_ref().and_then(|m| m.as_ref());
            ctx.keep(check_metric_pattern(ctx, pattern, m));
        }
        if ext.require_metric && matches!(metric, Some(None)) {
            ctx.record(ctx.err(
                "liandan.require_metric",
                "needs metric.name: the metric every job must report",
            ));
        }
    }
    // What follows needs the parts above.
    let (
        Some(method),
        Some(metric),
        Some(mut parameters),
        Some((mut liandan, seed_axis)),
        Some(mut program),
        Some(command),
    ) = (method, metric, parameters, liandan, program, command)
    else {
        return Err(first_recorded(ctx));
    };
    let command = match (command, liandan.trainer) {
        (Some(c), _) => c,
        (None, true) => {
            program.get_or_insert_with(|| TRAINER_PROGRAM.to_string());
            vec!["${program}".into(), "${args}".into()]
        }
        (None, false) => default_command(),
    };
    if program.is_none() && command.iter().any(|c| c.contains("${program}")) {
        ctx.record(ctx.err("program", "missing; the command uses ${program} (or set liandan.trainer: true to run the built-in trainer)"));
    }
    ctx.keep(seed_axis_from_parameters(
        ctx,
        &mut liandan,
        &mut parameters,
        seed_axis,
    ));
    if liandan.seeds.len() == 1 && liandan.seed_source != SeedSource::None {
        ctx.warn(format!(
            "one seed ({}): results will show no seed-to-seed spread; give several seeds to see it",
            liandan.seeds[0]
        ));
    }
    if method == Method::Random && run_cap.is_none() {
        ctx.warn("method `random` without run_cap draws trials as slots free until the sweep is cancelled (or metric.target is met)".into());
    }
    Ok(SweepSpec {
        name,
        description,
        program,
        command,
        method,
        metric,
        parameters,
        run_cap,
        early_terminate,
        liandan,
    })
}

/// The error to stand for the recorded ones (which `parse` reports).
fn first_recorded(ctx: &Ctx) -> SpecError {
    ctx.errors
        .borrow()
        .first()
        .cloned()
        .unwrap_or_else(|| ctx.err("", "invalid sweep spec"))
}

const METHODS: &[&str] = &["grid", "random", "bayes", "tpe"];

/// The first error recorded after the `before`th, taken out of the record
/// (to be returned in its place).
pub(super) fn first_recorded_since(ctx: &Ctx, before: usize) -> SpecError {
    ctx.errors.borrow_mut().remove(before)
}

fn parse_method(ctx: &Ctx, map: &Map<String, Value>) -> Result<Method, SpecError> {
    match map.get("method") {
        None => Err(ctx.err(
            "method",
            "missing; expected one of: grid, random, bayes, tpe",
        )),
        Some(Value::String(s)) => match s.as_str() {
            "grid" => Ok(Method::Grid),
            "random" => Ok(Method::Random),
            "bayes" => Ok(Method::Bayes),
            "tpe" => Ok(Method::Tpe),
            other => Err(ctx.err(
                "method",
                format!(
                    "expected one of: grid, random, bayes, tpe; found {other:?}{}",
                    did_you_mean(other, METHODS)
                ),
            )),
        },
        Some(v) => Err(ctx.err(
            "method",
            format!(
                "expected one of: grid, random, bayes, tpe; found {}",
                describe(v)
            ),
        )),
    }
}

/// `metric:`, or None when there is none.
fn parse_metric(ctx: &Ctx, map: &Map<String, Value>) -> Result<Option<Metric>, SpecError> {
    let v = match map.get("metric") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let m = as_map(ctx, "metric", v)?;
    check_keys(
        ctx,
        "metric",
        m,
        &["name", "goal", "target", "impute", "impute_while_running"],
    )?;
    let name = get_str(ctx, "metric", m, "name")?.ok_or_else(|| {
        ctx.err(
            "metric.name",
            "missing; name the metric the program reports",
        )
    })?;
    if name.is_empty() {
        return Err(ctx.err("metric.name", "must not be empty"));
    }
    let goal = match get_str(ctx, "metric", m, "goal")?.as_deref() {
        None | Some("minimize") => Goal::Minimize,
        Some("maximize") => Goal::Maximize,
        Some(other) => {
            return Err(ctx.err(
                "metric.goal",
                format!(
                    "expected minimize or maximize, found {other:?}{}",
                    did_you_mean(other, &["minimize", "maximize"])
                ),
            ))
        }
    };
    let target = get_f64(ctx, "metric", m, "target")?;
    let impute = match get_str(ctx, "metric", m, "impute")?.as_deref() {
        None => Impute::Worst,
        Some(s) => Impute::parse(s).ok_or_else(|| {
            ctx.err(
                "metric.impute",
                format!("expected worst, best or latest, found {s:?}"),
            )
        })?,
    };
    let impute_while_running = match m.get("impute_while_running") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(false)) => {
            ctx.warn("metric.impute_while_running: the boolean false is taken as \"false\"; W&B's schema takes only the string and refuses the file, so write it quoted".into());
            None
        }
        Some(Value::String(s)) if s == "false" => None,
        Some(Value::String(s)) => Some(Impute::parse(s).ok_or_else(|| {
            ctx.err(
                "metric.impute_while_running",
                format!("expected false, worst, best or latest, found {s:?}"),
            )
        })?),
        Some(v) => {
            return Err(ctx.err(
                "metric.impute_while_running",
                format!(
                    "expected false, worst, best or latest, found {}",
                    describe(v)
                ),
            ))
        }
    };
    Ok(Some(Metric {
        name,
        goal,
        target,
        impute,
        impute_while_running,
    }))
}

/// `command:` as written, or None for the default one.
fn parse_command(ctx: &Ctx, map: &Map<String, Value>) -> Result<Option<Vec<String>>, SpecError> {
    match map.get("command") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, it) in items.iter().enumerate() {
                let p = format!("command[{i}]");
                // W&B's agent passes str() of each item: 10, 1e-05, True, None.
                let s = match it {
                    Value::String(s) => s.clone(),
                    v @ (Value::Number(_) | Value::Bool(_) | Value::Null) => {
                        crate::sweep::command::format_value(v)
                    }
                    other => {
                        return Err(
                            ctx.err(&p, format!("expected a string, found {}", describe(other)))
                        )
                    }
                };
                check_macros(ctx, &p, &s)?;
                out.push(s);
            }
            if out.is_empty() {
                // W&B's agent takes an empty command as its default one.
                ctx.warn("command: empty, so the default `${env} ${interpreter} ${program} ${args}` is used (as W&B does)".into());
                Ok(None)
            } else {
                Ok(Some(out))
            }
        }
        Some(v) => Err(ctx.err(
            "command",
            format!("expected a list of strings, found {}", describe(v)),
        )),
    }
}

/// `liandan.metric_pattern`: a regular expression with named groups, one of
/// them (else a warning) the sweep's metric.
fn check_metric_pattern(
    ctx: &Ctx,
    pattern: &str,
    metric: Option<&Metric>,
) -> Result<(), SpecError> {
    let re = regex::Regex::new(pattern).map_err(|e| {
        ctx.err(
            "liandan.metric_pattern",
            format!("not a valid regular expression: {e}"),
        )
    })?;
    if re.capture_names().flatten().next().is_none() {
        return Err(ctx.err(
            "liandan.metric_pattern",
            "needs at least one named group, e.g. loss=(?P<loss>[0-9.eE+-]+)",
        ));
    }
    if let Some(m) = metric {
        if !re.capture_names().flatten().any(|g| g == m.name) {
            ctx.warn(format!(
                "liandan.metric_pattern has no group named {:?} (metric.name), so stdout never reports the sweep's metric; name a group (?P<{}>...)",
                m.name, m.name
            ));
        }
    }
    Ok(())
}

/// Checks macros the way W&B's agent reads them: `${envvar:NAME}` is replaced
/// anywhere in an argument, for NAME in `[A-Z0-9_]*` (anything else stays
/// literal, so shell text such as `${HOME}` passes through); every other macro
/// counts only as a whole argument, so one inside a longer argument is passed
/// literally. Both are warned about, since they are rarely what was meant.
pub(super) fn check_macros(ctx: &Ctx, path: &str, s: &str) -> Result<(), SpecError> {
    let mut rest = s;
    while let Some(start) = rest.find("${envvar:") {
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            ctx.warn(format!(
                "{path}: unclosed ${{envvar:...}} in {s:?} is passed literally"
            ));
            break;
        };
        let name = &after["${envvar:".len()..end];
        if !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            ctx.warn(format!(
                "{path}: ${{envvar:{name}}} is passed literally: W&B replaces only upper-case names ([A-Z0-9_])"
            ));
        }
        rest = &after[end + 1..];
    }
    if !path.starts_with("command") {
        return Ok(());
    }
    let whole = s.starts_with("${") && s.ends_with('}');
    for mac in MACROS {
        let m = format!("${{{mac}}}");
        if s.contains(&m) && !(whole && s == m) {
            ctx.warn(format!(
                "{path}: {m} inside {s:?} is passed literally, as W&B's agent does; make it a list item of its own"
            ));
        }
    }
    if whole && !s.starts_with("${envvar:") && !MACROS.contains(&&s[2..s.len() - 1]) {
        ctx.warn(format!(
            "{path}: {s} is not a W&B macro and expands to nothing, as in W&B's agent; known: {}",
            MACROS.join(", ")
        ));
    }
    Ok(())
}

/// The whole-argument macros of W&B's agent.
pub const MACROS: &[&str] = &[
    "env",
    "interpreter",
    "program",
    "args",
    "args_no_equals",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_json",
    "args_json_file",
    "args_dict",
    "args_append_hydra",
    "args_override_hydra",
];

/// Finds the 1-based line of a key path (`parameters.lr.min`, `command[2]`) in
/// block-style YAML, by following indentation. Best effort: `None` when the
/// path cannot be followed (flow style, anchors).
pub fn locate_line(text: &str, path: &str) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut parent_indent: i64 = -1;
    let mut found = None;
    for seg in path.split('.') {
        let key = seg.split('[').next().unwrap_or(seg);
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (line.len() - trimmed.len()) as i64;
            if indent <= parent_indent && i > start {
                break;
            }
            let bare = trimmed.trim_start_matches("- ");
            let matches = bare
                .strip_prefix(key)
                .map(|r| r.trim_start().starts_with(':'))
                .unwrap_or(false)
                || bare
                    .strip_prefix(&format!("\"{key}\""))
                    .map(|r| r.trim_start().starts_with(':'))
                    .unwrap_or(false);
            if matches && indent > parent_indent {
                hit = Some((i, indent));
                break;
            }
        }
        let Some((i, indent)) = hit else {
            // A key inside a flow mapping (`a: {values: [1], q: 2}`): the parent's line.
            let parent_line = found?;
            let pl: &str = lines.get(parent_line - 1).copied()?;
            return (pl.contains(&format!("{key}:")) || pl.contains(&format!("{key} :")))
                .then_some(parent_line);
        };
        found = Some(i + 1);
        start = i + 1;
        parent_indent = indent;
    }
    found
}
