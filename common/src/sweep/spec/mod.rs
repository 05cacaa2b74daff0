//! The sweep spec: W&B's sweep format plus liandan's own section, parsed from
//! YAML or TOML and validated with errors that name the key path and line.
//!
//! Parsing goes text → `serde_json::Value` (by the YAML or TOML crate) → typed
//! [`SweepSpec`] by hand-written validation, so every error can say which key
//! was wrong, what was expected and what was found.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

mod extensions;
mod params;
mod read;

use extensions::parse_extensions;
pub use extensions::parse_size;
use params::{check_grid, parse_early_terminate, parse_params, seed_axis_from_parameters};
use read::{
    as_map, check_keys, check_macros, describe, first_recorded_since, get_f64, get_str, get_u64,
    is_int, join, req_f64,
};
pub use read::{locate_line, parse, MACROS};

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
