//! The sweep spec: W&B's sweep format plus liandan's own section, parsed from
//! YAML or TOML and validated with errors that name the key path and line.
//!
//! Parsing goes text → `serde_json::Value` (by the YAML or TOML crate) → typed
//! [`SweepSpec`] by hand-written validation, so every error can say which key
//! was wrong, what was expected and what was found.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Input format of a spec file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    /// Picks the format from a file name (`.toml` → TOML, else YAML).
    pub fn from_path(path: &str) -> Self {
        if path.ends_with(".toml") {
            Format::Toml
        } else {
            Format::Yaml
        }
    }

    /// Parses the wire form ("yaml", "toml", or empty for YAML).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecError {
    /// Key path such as `parameters.lr.min`; empty for the whole document.
    pub path: String,
    /// 1-based line in the source, when it could be found.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (true, Some(l)) => write!(f, "line {l}: {}", self.message),
            (true, None) => write!(f, "{}", self.message),
            (false, Some(l)) => write!(f, "{} (line {l}): {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for SpecError {}

/// Everything wrong with a spec, in file order (never empty): a file is
/// checked whole, so one run of `validate` names every mistake. Derefs to the
/// first error.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    pub errors: Vec<SpecError>,
}

impl Invalid {
    fn new(mut errors: Vec<SpecError>) -> Invalid {
        // File order: errors with a line by line, the others (whole-file
        // ones, TOML) where they were found, after them.
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        errors.dedup();
        Invalid { errors }
    }
}

impl std::ops::Deref for Invalid {
    type Target = SpecError;
    fn deref(&self) -> &SpecError {
        &self.errors[0]
    }
}

impl From<SpecError> for Invalid {
    fn from(e: SpecError) -> Invalid {
        Invalid { errors: vec![e] }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "{one}"),
            all => {
                write!(f, "{} problems:", all.len())?;
                for e in all {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Invalid {}

/// ` (did you mean `x`?)` when `word` is close to one of `known` (a typo),
/// else nothing.
pub fn did_you_mean(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Search method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Grid,
    Random,
    Bayes,
    /// Tree-structured Parzen Estimator (liandan's extension; Optuna's default).
    Tpe,
}

impl Method {
    /// Whether trials are proposed one by one as results arrive (not expanded up front).
    pub fn is_adaptive(self) -> bool {
        matches!(self, Method::Bayes | Method::Tpe)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::Random => "random",
            Method::Bayes => "bayes",
            Method::Tpe => "tpe",
        }
    }
}

/// Whether a smaller or larger metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    Minimize,
    Maximize,
}

impl Goal {
    pub fn as_str(self) -> &'static str {
        match self {
            Goal::Minimize => "minimize",
            Goal::Maximize => "maximize",
        }
    }

    /// True when `a` is better than `b` under this goal.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::Minimize => a < b,
            Goal::Maximize => a > b,
        }
    }
}

/// W&B's `metric.impute`: the value an adaptive search assumes for a run
/// without a usable result (failed, or running with `impute_while_running`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impute {
    /// The worst value any finished run reached.
    #[default]
    Worst,
    /// The run's own best value so far.
    Best,
    /// The run's last reported value.
    Latest,
}

impl Impute {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "worst" => Impute::Worst,
            "best" => Impute::Best,
            "latest" => Impute::Latest,
            _ => return None,
        })
    }
}

/// The metric a sweep optimises and reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub goal: Goal,
    pub target: Option<f64>,
    /// Value given to failed runs by adaptive search.
    #[serde(default)]
    pub impute: Impute,
    /// Value given to running runs (`None`: W&B's `false`, they count as pending points).
    #[serde(default)]
    pub impute_while_running: Option<Impute>,
}

/// One parameter's distribution, with W&B's names and semantics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case")]
pub enum Param {
    Constant {
        value: Value,
    },
    Categorical {
        values: Vec<Value>,
    },
    CategoricalWProbabilities {
        values: Vec<Value>,
        probabilities: Vec<f64>,
    },
    IntUniform {
        min: i64,
        max: i64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    QUniform {
        min: f64,
        max: f64,
        q: f64,
        /// `q` was written as an integer: W&B's samples are then integers.
        integer: bool,
        /// `min` and `max` were written as integers too (a grid is then
        /// integers, as numpy's arange of three integers is).
        #[serde(default)]
        int_bounds: bool,
    },
    /// Bounds are exponents: X = exp(U(min, max)). Deprecated in W&B.
    LogUniform {
        min: f64,
        max: f64,
    },
    LogUniformValues {
        min: f64,
        max: f64,
    },
    QLogUniform {
        min: f64,
        max: f64,
        q: f64,
        /// `q` was written as an integer: W&B's samples are integers.
        #[serde(default)]
        integer: bool,
    },
    QLogUniformValues {
        min: f64,
        max: f64,
        q: f64,
        /// `q` was written as an integer: W&B's samples are integers.
        #[serde(default)]
        integer: bool,
    },
    InvLogUniform {
        min: f64,
        max: f64,
    },
    InvLogUniformValues {
        min: f64,
        max: f64,
    },
    Normal {
        mu: f64,
        sigma: f64,
    },
    QNormal {
        mu: f64,
        sigma: f64,
        q: f64,
        /// `q` was written as an integer: W&B's samples are integers.
        #[serde(default)]
        integer: bool,
    },
    LogNormal {
        mu: f64,
        sigma: f64,
    },
    QLogNormal {
        mu: f64,
        sigma: f64,
        q: f64,
        /// `q` was written as an integer: W&B's samples are integers.
        #[serde(default)]
        integer: bool,
    },
    Beta {
        a: f64,
        b: f64,
    },
    QBeta {
        a: f64,
        b: f64,
        q: f64,
        /// `q` was written as an integer: W&B's samples are integers.
        #[serde(default)]
        integer: bool,
    },
    /// A parameter with its own `parameters:` (a dict-valued parameter).
    Nested {
        parameters: Vec<(String, Param)>,
    },
}

impl Param {
    /// W&B's name of the distribution.
    pub fn name(&self) -> &'static str {
        match self {
            Param::Constant { .. } => "constant",
            Param::Categorical { .. } => "categorical",
            Param::CategoricalWProbabilities { .. } => "categorical_w_probabilities",
            Param::IntUniform { .. } => "int_uniform",
            Param::Uniform { .. } => "uniform",
            Param::QUniform { .. } => "q_uniform",
            Param::LogUniform { .. } => "log_uniform",
            Param::LogUniformValues { .. } => "log_uniform_values",
            Param::QLogUniform { .. } => "q_log_uniform",
            Param::QLogUniformValues { .. } => "q_log_uniform_values",
            Param::InvLogUniform { .. } => "inv_log_uniform",
            Param::InvLogUniformValues { .. } => "inv_log_uniform_values",
            Param::Normal { .. } => "normal",
            Param::QNormal { .. } => "q_normal",
            Param::LogNormal { .. } => "log_normal",
            Param::QLogNormal { .. } => "q_log_normal",
            Param::Beta { .. } => "beta",
            Param::QBeta { .. } => "q_beta",
            Param::Nested { .. } => "nested",
        }
    }
}

/// Which early-stopping rule `early_terminate` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopRule {
    /// W&B's Hyperband stop rule (thresholds at fixed bands over all runs).
    #[default]
    Hyperband,
    /// Asynchronous successive halving (liandan's extension).
    Asha,
}

/// W&B's `early_terminate`: the coordinator applies it on every reported metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyTerminate {
    #[serde(default, rename = "type")]
    pub rule: StopRule,
    pub min_iter: Option<u64>,
    pub max_iter: Option<u64>,
    pub s: Option<u64>,
    pub eta: f64,
    pub strict: bool,
}

impl EarlyTerminate {
    /// The iterations at which runs are compared, ascending, as W&B computes
    /// them: from `max_iter`, max_iter/eta^k for k = 1..=s, dropping values
    /// below 1; from `min_iter`, min_iter·eta^k for k = 0, 1, ... (W&B makes
    /// 100 and ignores `s`; here they stop at 2^53, beyond any run's length).
    /// ASHA's rungs are the same numbers.
    pub fn brackets(&self) -> Vec<u64> {
        let eta = self.eta;
        if let Some(max_iter) = self.max_iter {
            let s = self.s.unwrap_or(0);
            let mut band = max_iter as f64;
            let mut out = Vec::new();
            for _ in 0..s {
                band /= eta;
                if band < 1.0 {
                    break;
                }
                out.push(band as u64);
            }
            out.sort_unstable();
            out
        } else if let Some(min_iter) = self.min_iter {
            let mut band = min_iter as f64;
            let mut out = Vec::new();
            while out.len() < 100 && band < MAX_BAND {
                out.push(band as u64);
                band *= eta;
            }
            out
        } else {
            Vec::new()
        }
    }
}

/// Bands beyond this are never reached by any run (2^53: exact in an f64).
const MAX_BAND: f64 = 9_007_199_254_740_992.0;

/// How a trial's seeds combine into the one value adaptive search optimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    #[default]
    Mean,
    Median,
    /// Interquartile mean (the mean of the middle half).
    Iqm,
}

/// Resources one job needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub gpus: u32,
    pub cpus: u32,
    pub memory_bytes: Option<u64>,
    pub labels: Vec<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            gpus: 0,
            cpus: 1,
            memory_bytes: None,
            labels: Vec::new(),
        }
    }
}

/// Which checkpoints the coordinator keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    /// Newest checkpoints kept per job; `None` uses the coordinator's default.
    pub keep_last: Option<u32>,
    /// Also keep the checkpoint with the best value of the sweep metric.
    pub keep_best: bool,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            keep_last: None,
            keep_best: true,
        }
    }
}

/// Where a sweep's seeds come from, which decides whether the program is
/// given the seed as an argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedSource {
    /// Neither `liandan.seeds` nor a seed parameter: one seed, 0, in
    /// `LIANDAN_SEED` only; the command line is W&B's, with nothing added.
    None,
    /// `liandan.seeds`: passed as `--<seed_param>=N`.
    #[default]
    Liandan,
    /// A parameter named `seed_param` with `values`: W&B passes it like any parameter.
    Parameter,
}

/// liandan's own section (`liandan:`), so a W&B file stays a valid W&B file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extensions {
    /// Every trial runs once per seed.
    pub seeds: Vec<i64>,
    /// The name under which the seed is passed to the program (`--seed=N`).
    pub seed_param: String,
    /// Where the seeds came from. Specs stored before this field existed
    /// passed the seed always, as `Liandan` does.
    #[serde(default)]
    pub seed_source: SeedSource,
    /// Extra environment of every job (`${envvar:NAME}` expanded on the worker).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The job's working directory on the worker: absolute, or relative to the
    /// worker's base directory; a relative `program` resolves against it.
    #[serde(default)]
    pub workdir: Option<String>,
    pub resources: Resources,
    /// Most jobs of this sweep running at once.
    pub concurrency: Option<u32>,
    /// Retries after a failed attempt (lost workers and drains do not count).
    pub retries: u32,
    /// Seed of random sampling.
    pub sweep_seed: u64,
    pub priority: i32,
    pub checkpoint: CheckpointPolicy,
    /// Regex with named groups that picks metrics out of stdout lines.
    pub metric_pattern: Option<String>,
    /// Run the built-in trainer `liandan-train` with the parameters as flags.
    pub trainer: bool,
    /// How adaptive search and early stopping combine a trial's seeds.
    #[serde(default)]
    pub objective: Objective,
    /// A job that exits 0 without ever reporting `metric.name` fails
    /// (outcome `no_metric`, not retried) instead of succeeding silently.
    /// Left out of the stored form when false, so older specs keep their hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_metric: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            seeds: vec![0],
            seed_param: "seed".into(),
            seed_source: SeedSource::None,
            env: Vec::new(),
            workdir: None,
            resources: Resources::default(),
            concurrency: None,
            retries: 1,
            sweep_seed: 0,
            priority: 0,
            checkpoint: CheckpointPolicy::default(),
            metric_pattern: None,
            trainer: false,
            objective: Objective::default(),
            require_metric: false,
        }
    }
}

/// A validated sweep spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub name: Option<String>,
    pub description: Option<String>,
    pub program: Option<String>,
    /// The command template; W&B's default when the file gives none.
    pub command: Vec<String>,
    pub method: Method,
    pub metric: Option<Metric>,
    /// Parameters in declaration order.
    pub parameters: Vec<(String, Param)>,
    pub run_cap: Option<u64>,
    pub early_terminate: Option<EarlyTerminate>,
    pub liandan: Extensions,
}

impl SweepSpec {
    /// Trials are proposed one at a time while the sweep runs instead of
    /// expanded at submission: bayes and tpe, and random search without run_cap.
    pub fn is_lazy(&self) -> bool {
        self.method.is_adaptive() || (self.method == Method::Random && self.run_cap.is_none())
    }

    /// The coordinator keeps search state for this sweep (lazy proposals or early stopping).
    pub fn has_search(&self) -> bool {
        self.is_lazy() || self.early_terminate.is_some()
    }

    /// Why `liandan retry` cannot run this sweep's jobs again, if it cannot:
    /// its search has judged their trials (early stopping) or decides what
    /// runs next (trials proposed as it runs).
    pub fn why_no_retry(&self) -> Option<&'static str> {
        if self.early_terminate.is_some() {
            Some("it stops trials early (early_terminate), and its search has already judged the trials of those jobs")
        } else if self.is_lazy() {
            Some("its search proposes trials as it runs (bayes, tpe, or random without run_cap) and decides itself what runs next")
        } else {
            None
        }
    }

    /// Whether the program is given the seed as an argument.
    pub fn passes_seed(&self) -> bool {
        self.liandan.seed_source != SeedSource::None || self.liandan.trainer
    }
}

/// W&B's default command.
pub fn default_command() -> Vec<String> {
    ["${env}", "${interpreter}", "${program}", "${args}"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The built-in trainer's program name, resolved by the worker.
pub const TRAINER_PROGRAM: &str = "liandan-train";

/// A parsed spec with the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub spec: SweepSpec,
    pub warnings: Vec<String>,
}

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

struct Ctx<'a> {
    text: &'a str,
    format: Format,
    warnings: std::cell::RefCell<Vec<String>>,
    /// Errors found so far; checking goes on past each to find the others.
    errors: std::cell::RefCell<Vec<SpecError>>,
}

impl Ctx<'_> {
    fn warn(&self, w: String) {
        self.warnings.borrow_mut().push(w);
    }

    /// Records an error to report with the others.
    fn record(&self, e: SpecError) {
        self.errors.borrow_mut().push(e);
    }

    /// The value, or None with its error recorded: the independent parts of
    /// a spec are checked on past one another's errors.
    fn keep<T>(&self, r: Result<T, SpecError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.record(e);
                None
            }
        }
    }

    fn err(&self, path: &str, message: impl Into<String>) -> SpecError {
        let line = if self.format == Format::Yaml {
            locate_line(self.text, path)
        } else {
            None
        };
        SpecError {
            path: path.to_string(),
            line,
            message: message.into(),
        }
    }
}

/// Parses and validates a spec.
pub fn parse(text: &str, format: Format) -> Result<Parsed, Invalid> {
    let root: Value = match format {
        Format::Yaml => super::yaml11::load(text).map_err(|e| SpecError {
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

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", s.chars().take(60).collect::<String>()),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn as_map<'v>(ctx: &Ctx, path: &str, v: &'v Value) -> Result<&'v Map<String, Value>, SpecError> {
    v.as_object()
        .ok_or_else(|| ctx.err(path, format!("expected a mapping, found {}", describe(v))))
}

fn check_keys(
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

fn get_f64(
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

fn req_f64(
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

fn is_int(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Number(n)) if n.is_i64() || n.is_u64())
}

fn get_u64(
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

fn get_str(
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

/// The first error recorded after the `before`th, taken out of the record
/// (to be returned in its place).
fn first_recorded_since(ctx: &Ctx, before: usize) -> SpecError {
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
                        super::command::format_value(v)
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
fn check_macros(ctx: &Ctx, path: &str, s: &str) -> Result<(), SpecError> {
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

fn parse_params(ctx: &Ctx, path: &str, v: &Value) -> Result<Vec<(String, Param)>, SpecError> {
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

fn parse_early_terminate(ctx: &Ctx, v: &Value) -> Result<EarlyTerminate, SpecError> {
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
fn check_grid(ctx: &Ctx, path: &str, params: &[(String, Param)]) {
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
fn seed_axis_from_parameters(
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

fn parse_extensions(ctx: &Ctx, v: &Value) -> Result<(Extensions, Option<bool>), SpecError> {
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
    match m.get("seeds") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c) if (1..=10_000).contains(&c) => {
                ext.seeds = (0..c as i64).collect();
                ext.seed_source = SeedSource::Liandan;
            }
            _ => {
                return Err(ctx.err(
                    "liandan.seeds",
                    format!("expected a count from 1 to 10000 or a list of integers, found {n}"),
                ))
            }
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
            ext.seeds = seeds;
            ext.seed_source = SeedSource::Liandan;
        }
        Some(v) => {
            return Err(ctx.err(
                "liandan.seeds",
                format!(
                    "expected a count or a list of integers, found {}",
                    describe(v)
                ),
            ))
        }
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
        let rp = "liandan.resources";
        let rm = as_map(ctx, rp, r)?;
        check_keys(ctx, rp, rm, &["gpus", "cpus", "memory", "labels"])?;
        let small = |k: &str| -> Result<Option<u32>, SpecError> {
            get_u64(ctx, rp, rm, k)?
                .map(|x| u32::try_from(x).map_err(|_| ctx.err(&join(rp, k), "too large")))
                .transpose()
        };
        if let Some(g) = small("gpus")? {
            ext.resources.gpus = g;
        }
        if let Some(c) = small("cpus")? {
            ext.resources.cpus = c;
        }
        if ext.resources.gpus == 0 && ext.resources.cpus == 0 {
            return Err(ctx.err(
                "liandan.resources.cpus",
                "a job needs at least one GPU or one CPU slot",
            ));
        }
        ext.resources.memory_bytes = match rm.get("memory") {
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
                crate::names::validate("label", s).map_err(|e| {
                    ctx.err(&format!("liandan.resources.labels[{i}]"), e.to_string())
                })?;
                ext.resources.labels.push(s.to_string());
            }
        }
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
        let cp = "liandan.checkpoint";
        let cm = as_map(ctx, cp, c)?;
        check_keys(ctx, cp, cm, &["keep_last", "keep_best"])?;
        if let Some(k) = get_u64(ctx, cp, cm, "keep_last")? {
            if k == 0 {
                return Err(ctx.err("liandan.checkpoint.keep_last", "expected an integer >= 1"));
            }
            ext.checkpoint.keep_last = Some(k.min(1000) as u32);
        }
        match cm.get("keep_best") {
            None => {}
            Some(Value::Bool(b)) => ext.checkpoint.keep_best = *b,
            Some(v) => {
                return Err(ctx.err(
                    "liandan.checkpoint.keep_best",
                    format!("expected true or false, found {}", describe(v)),
                ))
            }
        }
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
