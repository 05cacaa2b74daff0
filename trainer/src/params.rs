//! The trainer's parameters: every knob with its documented default, parsed
//! from `--name=value` arguments (W&B's `${args}` form). An unknown name or a
//! bad value is an error that names it.

use std::collections::BTreeMap;

/// (name, default, description). `liandan-train help` prints this table.
pub const PARAMS: &[(&str, &str, &str)] = &[
    (
        "task",
        "spirals",
        "dataset: spirals | blobs | xor (generated), idx | csv (files)",
    ),
    (
        "data",
        "",
        "idx: images file (or a directory with train-images-idx3-ubyte); csv: the file",
    ),
    (
        "labels",
        "",
        "idx: labels file (default: train-labels-idx1-ubyte beside the images)",
    ),
    ("samples", "2000", "number of generated samples"),
    (
        "classes",
        "3",
        "classes of the generated datasets (spirals arms, blobs)",
    ),
    ("noise", "0.15", "noise of the generated datasets"),
    (
        "val_fraction",
        "0.2",
        "share of the data held out for validation",
    ),
    ("model", "mlp", "mlp | cnn (cnn needs image input: idx)"),
    ("depth", "2", "hidden layers of the MLP"),
    ("width", "64", "units per hidden layer"),
    ("activation", "relu", "relu | tanh | gelu | silu"),
    (
        "init",
        "default",
        "default (libtorch's) | kaiming_normal | xavier_normal",
    ),
    (
        "dropout",
        "0.0",
        "dropout probability after each hidden layer",
    ),
    ("lr", "0.01", "learning rate (peak rate for one-cycle)"),
    ("batch_size", "64", "samples per step"),
    (
        "epochs",
        "10",
        "passes over the training data (ignored when steps > 0)",
    ),
    (
        "steps",
        "0",
        "training steps; 0 means epochs x steps-per-epoch",
    ),
    ("optimizer", "adam", "sgd | adam | adamw"),
    ("momentum", "0.9", "SGD momentum"),
    ("nesterov", "false", "SGD with Nesterov momentum"),
    (
        "weight_decay",
        "0.0",
        "L2 penalty (sgd, adam) or decoupled decay (adamw)",
    ),
    ("beta1", "0.9", "Adam beta1"),
    ("beta2", "0.999", "Adam beta2"),
    ("eps", "1e-8", "Adam epsilon"),
    (
        "schedule",
        "constant",
        "constant | step | cosine | sgdr | onecycle",
    ),
    (
        "warmup_steps",
        "0",
        "linear warm-up steps before any schedule",
    ),
    ("step_size", "500", "step schedule: steps between decays"),
    ("gamma", "0.1", "step schedule: decay factor"),
    ("min_lr", "0.0", "cosine / sgdr: lowest rate"),
    ("sgdr_period", "200", "sgdr: steps of the first cycle"),
    ("sgdr_mult", "2", "sgdr: cycle length multiplier"),
    ("pct_start", "0.3", "one-cycle: share of steps spent rising"),
    (
        "grad_clip",
        "0.0",
        "clip the gradient norm to this (0: off)",
    ),
    (
        "label_smoothing",
        "0.0",
        "label smoothing of the cross-entropy loss",
    ),
    ("seed", "0", "seed of every source of randomness"),
    ("log_every", "50", "steps between metric lines"),
    (
        "checkpoint_every",
        "200",
        "steps between checkpoints (0: only on SIGTERM and at the end)",
    ),
    ("threads", "0", "CPU threads for libtorch (0: its default)"),
    ("device", "auto", "auto | cpu | cuda"),
    ("lr_min", "1e-6", "lr range test: first rate"),
    ("lr_max", "10.0", "lr range test: last rate"),
    ("range_steps", "100", "lr range test: steps"),
    ("overfit_samples", "16", "overfit check: samples"),
    ("overfit_steps", "300", "overfit check: steps"),
];

/// A parameter error, naming the parameter.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("unknown parameter `{0}`; run `liandan-train help` for the list")]
    Unknown(String),
    #[error("parameter `{name}`: expected {expected}, found {found:?}")]
    Bad {
        name: String,
        expected: &'static str,
        found: String,
    },
    #[error("argument {0:?} is not of the form --name=value")]
    Form(String),
}

/// Parsed parameter values (defaults filled in).
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    pub fn parse(args: &[String]) -> Result<Params, ParamError> {
        let mut values: BTreeMap<String, String> = PARAMS
            .iter()
            .map(|(n, d, _)| (n.to_string(), d.to_string()))
            .collect();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            let body = a
                .strip_prefix("--")
                .ok_or_else(|| ParamError::Form(a.clone()))?;
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    // `--flag` (W&B's args_no_boolean_flags) or `--name value`.
                    match args.get(i + 1).filter(|n| !n.starts_with("--")) {
                        Some(v) => {
                            i += 1;
                            (body.to_string(), v.clone())
                        }
                        None => (body.to_string(), "true".to_string()),
                    }
                }
            };
            let name = name.replace('-', "_");
            if !values.contains_key(&name) {
                return Err(ParamError::Unknown(name));
            }
            values.insert(name, value);
            i += 1;
        }
        let p = Params { values };
        p.check()?;
        Ok(p)
    }

    fn raw(&self, name: &str) -> &str {
        self.values.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn str(&self, name: &str) -> String {
        self.raw(name).to_string()
    }

    pub fn f64(&self, name: &str) -> Result<f64, ParamError> {
        self.raw(name)
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| ParamError::Bad {
                name: name.into(),
                expected: "a number",
                found: self.raw(name).into(),
            })
    }

    pub fn usize(&self, name: &str) -> Result<usize, ParamError> {
        // Accept 64.0 from a sweep that produced floats.
        let r = self.raw(name);
        r.parse::<usize>()
            .ok()
            .or_else(|| {
                r.parse::<f64>()
                    .ok()
                    .filter(|x| *x >= 0.0 && x.fract() == 0.0)
                    .map(|x| x as usize)
            })
            .ok_or_else(|| ParamError::Bad {
                name: name.into(),
                expected: "a non-negative integer",
                found: r.into(),
            })
    }

    pub fn i64(&self, name: &str) -> Result<i64, ParamError> {
        self.raw(name).parse::<i64>().map_err(|_| ParamError::Bad {
            name: name.into(),
            expected: "an integer",
            found: self.raw(name).into(),
        })
    }

    pub fn bool(&self, name: &str) -> Result<bool, ParamError> {
        match self.raw(name).to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(ParamError::Bad {
                name: name.into(),
                expected: "true or false",
                found: self.raw(name).into(),
            }),
        }
    }

    fn one_of(
        &self,
        name: &str,
        allowed: &'static [&'static str],
        expected: &'static str,
    ) -> Result<(), ParamError> {
        if allowed.contains(&self.raw(name)) {
            Ok(())
        } else {
            Err(ParamError::Bad {
                name: name.into(),
                expected,
                found: self.raw(name).into(),
            })
        }
    }

    /// Checks every value once, up front, so a bad one fails before training.
    fn check(&self) -> Result<(), ParamError> {
        self.one_of(
            "task",
            &["spirals", "blobs", "xor", "idx", "csv"],
            "spirals, blobs, xor, idx or csv",
        )?;
        self.one_of("model", &["mlp", "cnn"], "mlp or cnn")?;
        self.one_of(
            "activation",
            &["relu", "tanh", "gelu", "silu"],
            "relu, tanh, gelu or silu",
        )?;
        self.one_of(
            "init",
            &["default", "kaiming_normal", "xavier_normal"],
            "default, kaiming_normal or xavier_normal",
        )?;
        self.one_of("optimizer", &["sgd", "adam", "adamw"], "sgd, adam or adamw")?;
        self.one_of(
            "schedule",
            &["constant", "step", "cosine", "sgdr", "onecycle"],
            "constant, step, cosine, sgdr or onecycle",
        )?;
        self.one_of("device", &["auto", "cpu", "cuda"], "auto, cpu or cuda")?;
        for n in [
            "samples",
            "classes",
            "depth",
            "width",
            "batch_size",
            "epochs",
            "steps",
            "warmup_steps",
            "step_size",
            "sgdr_period",
            "log_every",
            "checkpoint_every",
            "threads",
            "range_steps",
            "overfit_samples",
            "overfit_steps",
        ] {
            self.usize(n)?;
        }
        for n in [
            "noise",
            "val_fraction",
            "dropout",
            "lr",
            "momentum",
            "weight_decay",
            "beta1",
            "beta2",
            "eps",
            "gamma",
            "min_lr",
            "sgdr_mult",
            "pct_start",
            "grad_clip",
            "label_smoothing",
            "lr_min",
            "lr_max",
        ] {
            self.f64(n)?;
        }
        self.i64("seed")?;
        self.bool("nesterov")?;
        let p = self.f64("dropout")?;
        if !(0.0..1.0).contains(&p) {
            return Err(ParamError::Bad {
                name: "dropout".into(),
                expected: "a probability in [0, 1)",
                found: self.raw("dropout").into(),
            });
        }
        let v = self.f64("val_fraction")?;
        if !(0.0..1.0).contains(&v) {
            return Err(ParamError::Bad {
                name: "val_fraction".into(),
                expected: "a fraction in [0, 1)",
                found: self.raw("val_fraction").into(),
            });
        }
        if self.usize("batch_size")? == 0 {
            return Err(ParamError::Bad {
                name: "batch_size".into(),
                expected: "an integer >= 1",
                found: "0".into(),
            });
        }
        if self.usize("classes")? < 2 {
            return Err(ParamError::Bad {
                name: "classes".into(),
                expected: "an integer >= 2",
                found: self.raw("classes").into(),
            });
        }
        Ok(())
    }

    /// A fingerprint of everything that shapes training (not logging or device),
    /// stored in checkpoints so a resume with other parameters is refused.
    pub fn fingerprint(&self) -> String {
        let skip = ["log_every", "checkpoint_every", "device", "threads"];
        let joined: Vec<String> = self
            .values
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        blake3::hash(joined.join("\n").as_bytes()).to_hex()[..16].to_string()
    }
}
