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

/// A parameter value as it appears in an argument.
pub fn format_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => {
            if n.is_f64() {
                py_float(n.as_f64().unwrap_or(f64::NAN))
            } else {
                n.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// The parameters passed to the program: the trial's values plus the seed.
pub fn program_params(spec: &SweepSpec, params: &Value, seed: i64) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = match params {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => Vec::new(),
    };
    out.push((spec.liandan.seed_param.clone(), Value::Number(seed.into())));
    out
}

/// Builds the argv for one job.
pub fn build_argv(
    spec: &SweepSpec,
    params: &Value,
    seed: i64,
    ctx: &CommandContext,
) -> Result<Vec<String>, CommandError> {
    let kv = program_params(spec, params, seed);
    let mut argv = Vec::new();
    for token in &spec.command {
        match token.as_str() {
            "${args}" => argv.extend(kv.iter().map(|(k, v)| format!("--{k}={}", format_value(v)))),
            "${args_no_hyphens}" => {
                argv.extend(kv.iter().map(|(k, v)| format!("{k}={}", format_value(v))))
            }
            "${args_no_boolean_flags}" => {
                for (k, v) in &kv {
                    match v {
                        Value::Bool(true) => argv.push(format!("--{k}")),
                        Value::Bool(false) => {}
                        v => argv.push(format!("--{k}={}", format_value(v))),
                    }
                }
            }
            "${args_json}" => {
                let obj: serde_json::Map<String, Value> = kv.iter().cloned().collect();
                argv.push(Value::Object(obj).to_string());
            }
            "${args_json_file}" => argv.push(ctx.args_json_file.to_string()),
            other => argv.push(substitute(other, spec, ctx)?),
        }
    }
    if argv.is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(argv)
}

fn substitute(token: &str, spec: &SweepSpec, ctx: &CommandContext) -> Result<String, CommandError> {
    let mut out = String::new();
    let mut rest = token;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            out.push_str(after);
            return Ok(out);
        };
        let mac = &after[..=end];
        match mac {
            "${env}" => out.push_str(ctx.env),
            "${interpreter}" => out.push_str(ctx.interpreter),
            "${program}" => out.push_str(
                ctx.program
                    .or(spec.program.as_deref())
                    .ok_or(CommandError::NoProgram)?,
            ),
            m if m.starts_with("${envvar:") => {
                let name = &m["${envvar:".len()..m.len() - 1];
                out.push_str(
                    &(ctx.envvar)(name)
                        .ok_or_else(|| CommandError::MissingEnvVar(name.to_string()))?,
                );
            }
            other => out.push_str(other),
        }
        rest = &after[end + 1..];
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
