//! Building a job's argv from the sweep's command template and W&B's macros.
//! The result is an argv vector, executed without a shell: a parameter value
//! such as `; rm -rf /` reaches the program as one literal argument.

use super::spec::SweepSpec;
use serde_json::Value;

/// What the macros expand to on the machine that runs the job.
pub struct CommandContext<'a> {
    /// `${env}`.
    pub env: &'a str,
    /// `${interpreter}`.
    pub interpreter: &'a str,
    /// `${program}`, after the worker resolved it (e.g. `liandan-train` to a path).
    pub program: Option<&'a str>,
    /// Path of the file `${args_json_file}` names (the worker writes it).
    pub args_json_file: &'a str,
    /// `${envvar:NAME}` lookups.
    pub envvar: &'a dyn Fn(&str) -> Option<String>,
}

/// Why a command could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("the command uses ${{envvar:{0}}} but {0} is not set on this machine")]
    MissingEnvVar(String),
    #[error("the command uses ${{program}} but the sweep has no program")]
    NoProgram,
    #[error("the command is empty after expansion")]
    Empty,
}

/// Formats a float as Python's `repr` does (W&B formats arguments with Python).
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

/// Python's `repr` of a string (the quotes W&B's `str(list)` puts around items).
fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn py_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        py_float(n.as_f64().unwrap_or(f64::NAN))
    } else {
        n.to_string()
    }
}

/// Python's `repr` of a value (items of lists and dicts).
fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => py_repr_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format_value(other),
    }
}

/// A parameter value as W&B's agent puts it in an argument: Python's `str()`
/// (`True`, `None`, `1e-05`, `['a', 1]`, `{'k': 2}`).
pub fn format_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => py_number(n),
        other => py_repr(other),
    }
}

/// Python's `json.dumps` with its defaults (`", "` and `": "` separators,
/// non-ASCII escaped, floats as `repr`): `${args_json}` and the file
/// `${args_json_file}` names hold exactly what W&B's agent writes.
pub fn py_json(v: &Value) -> String {
    fn string(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn go(v: &Value, out: &mut String) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&py_number(n)),
            Value::String(s) => string(s, out),
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    go(x, out);
                }
                out.push(']');
            }
            Value::Object(m) => {
                out.push('{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    string(k, out);
                    out.push_str(": ");
                    go(x, out);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    go(v, &mut out);
    out
}

/// Keys sorted at every level: W&B's backend hands the agent run configs
/// serialised by Go's `encoding/json`, which sorts map keys.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The parameters passed to the program, in the order W&B's agent passes
/// them (names sorted): the trial's values, plus the seed when the sweep
/// passes one ([`SweepSpec::passes_seed`]: `liandan.seeds`, a seed parameter,
/// or the built-in trainer).
pub fn program_params(spec: &SweepSpec, params: &Value, seed: i64) -> Vec<(String, Value)> {
    let mut obj = match params {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if spec.passes_seed() && !obj.contains_key(&spec.liandan.seed_param) {
        obj.insert(spec.liandan.seed_param.clone(), Value::Number(seed.into()));
    }
    match sorted(&Value::Object(obj)) {
        Value::Object(m) => m.into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The parameters as the JSON object `${args_json}` shows and the file
/// `${args_json_file}` holds, in W&B's formatting.
pub fn args_json(spec: &SweepSpec, params: &Value, seed: i64) -> String {
    py_json(&Value::Object(
        program_params(spec, params, seed).into_iter().collect(),
    ))
}

/// Builds the argv for one job as W&B's agent does: `${envvar:NAME}` is
/// replaced anywhere in an argument; an argument that is a whole `${...}`
/// macro becomes that macro's arguments (an unknown macro: none); any other
/// argument is passed as written.
pub fn build_argv(
    spec: &SweepSpec,
    params: &Value,
    seed: i64,
    ctx: &CommandContext,
) -> Result<Vec<String>, CommandError> {
    let kv = program_params(spec, params, seed);
    let mut argv = Vec::new();
    for token in &spec.command {
        let token = substitute_envvars(token, ctx)?;
        if !(token.starts_with("${") && token.ends_with('}')) {
            argv.push(token);
            continue;
        }
        let flag = |(k, v): &(String, Value)| format!("{k}={}", format_value(v));
        match &token[2..token.len() - 1] {
            "args" => argv.extend(kv.iter().map(|p| format!("--{}", flag(p)))),
            "args_no_hyphens" => argv.extend(kv.iter().map(flag)),
            "args_append_hydra" => argv.extend(kv.iter().map(|p| format!("+{}", flag(p)))),
            "args_override_hydra" => argv.extend(kv.iter().map(|p| format!("++{}", flag(p)))),
            "args_no_equals" => {
                for (k, v) in &kv {
                    argv.push(format!("--{k}"));
                    argv.push(format_value(v));
                }
            }
            "args_no_boolean_flags" => {
                for (k, v) in &kv {
                    match v {
                        Value::Bool(true) => argv.push(format!("--{k}")),
                        Value::Bool(false) => {}
                        v => argv.push(format!("--{k}={}", format_value(v))),
                    }
                }
            }
            "args_json" => argv.push(py_json(&Value::Object(kv.iter().cloned().collect()))),
            // W&B's agent extends the command with the dict itself: its keys.
            "args_dict" => argv.extend(kv.iter().map(|(k, _)| k.clone())),
            "args_json_file" => argv.push(ctx.args_json_file.to_string()),
            "env" => argv.push(ctx.env.to_string()),
            "interpreter" => argv.push(ctx.interpreter.to_string()),
            "program" => argv.push(
                ctx.program
                    .or(spec.program.as_deref())
                    .ok_or(CommandError::NoProgram)?
                    .to_string(),
            ),
            // As in W&B's agent, a macro it does not know expands to nothing.
            _ => {}
        }
    }
    if argv.is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(argv)
}

/// Replaces `${envvar:NAME}` (NAME in `[A-Z0-9_]*`, W&B's pattern) in one argument.
fn substitute_envvars(token: &str, ctx: &CommandContext) -> Result<String, CommandError> {
    expand_envvars(token, ctx.envvar)
}

/// Whether a variable of the worker's environment is kept from jobs: its
/// own settings and secrets (`LIANDAN_*`) and systemd's credentials.
pub fn private_var(name: &str) -> bool {
    name.starts_with("LIANDAN_") || name == "CREDENTIALS_DIRECTORY"
}

/// `${envvar:NAME}` as a job sees it: the environment without its private
/// variables (`${envvar:LIANDAN_TOKEN}` expands to nothing, not to a token).
pub fn job_envvar(name: &str) -> Option<String> {
    if private_var(name) {
        return None;
    }
    std::env::var(name).ok()
}

/// Replaces `${envvar:NAME}` in `text` with the variable's value. W&B's agent
/// leaves the bare name where a variable is missing, which turns a typo into a
/// wrong path; liandan refuses instead, naming the variable.
pub fn expand_envvars(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, CommandError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${envvar:") {
        let after = &rest[start..];
        let name_end = after["${envvar:".len()..]
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .map(|i| i + "${envvar:".len());
        match name_end {
            Some(e) if after[e..].starts_with('}') => {
                let name = &after["${envvar:".len()..e];
                out.push_str(&rest[..start]);
                out.push_str(
                    &lookup(name).ok_or_else(|| CommandError::MissingEnvVar(name.to_string()))?,
                );
                rest = &after[e + 1..];
            }
            _ => {
                out.push_str(&rest[..start + "${envvar:".len()]);
                rest = &after["${envvar:".len()..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The context used offline by `liandan expand`: macros shown as the worker
/// would resolve them by default, environment variables left as placeholders.
pub fn offline_context<'a>(envvar: &'a dyn Fn(&str) -> Option<String>) -> CommandContext<'a> {
    CommandContext {
        env: "/usr/bin/env",
        interpreter: "python",
        program: None,
        args_json_file: "<attempt-dir>/params.json",
        envvar,
    }
}
