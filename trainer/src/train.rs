//! The training loop, metrics, checkpoints and resume.
//!
//! Reproducibility: every random draw is a function of (seed, position):
//! initialisation from `manual_seed(seed)`, data order per epoch from the
//! project's portable generator keyed by (seed, epoch), and dropout from
//! libtorch's generator re-seeded at every step from (seed, step). So a resumed
//! run needs no generator state beyond the step it resumes at, and on CPU ends
//! bitwise equal to an uninterrupted one (same machine, same thread count).
//!
//! Checkpoint format (`step-N.ckpt`): the line `LIANDAN-CKPT 1`, a JSON header
//! line (step, parameter fingerprint, accumulators, tensor names and shapes),
//! then the tensors as little-endian f32 in header order. Published atomically:
//! written to a hidden temp file, fsynced, renamed, directory fsynced.

use crate::data::Dataset;
use crate::model::{
    clip_grad_norm, cross_entropy, gradients, Activation, Arch, Model, OptKind, OptSettings,
    Optimizer,
};
use crate::params::Params;
use liandan_common::rng::Rng;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// Set by SIGTERM / SIGINT: checkpoint at the next step boundary and exit.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// A training failure with a message for the user.
pub type TrainResult<T> = Result<T, String>;

/// Where metrics go: the metrics file when run by liandan, stdout otherwise.
pub struct Sink {
    file: Option<std::fs::File>,
}

impl Sink {
    pub fn from_env() -> TrainResult<Sink> {
        let file = match std::env::var_os("LIANDAN_METRICS_FILE") {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| {
                        format!(
                            "cannot open metrics file {}: {e}",
                            PathBuf::from(&p).display()
                        )
                    })?,
            ),
            None => None,
        };
        Ok(Sink { file })
    }

    pub fn emit(&mut self, v: Value) {
        let line = v.to_string();
        match &mut self.file {
            Some(f) => {
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
                // A human-readable echo for `liandan logs`.
                println!("{line}");
            }
            None => println!("{line}"),
        }
    }
}

fn mix(seed: i64, step: u64) -> i64 {
    let h = blake3::hash(&[seed.to_le_bytes(), step.to_le_bytes()].concat());
    i64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8])) & i64::MAX
}

/// Learning rate at `step` (0-based) of `total`.
pub fn learning_rate(p: &Params, step: u64, total: u64) -> TrainResult<f64> {
    let e = |x: Result<f64, crate::params::ParamError>| x.map_err(|e| e.to_string());
    let base = e(p.f64("lr"))?;
    let warm = p.usize("warmup_steps").map_err(|e| e.to_string())? as u64;
    if step < warm {
        return Ok(base * (step + 1) as f64 / warm as f64);
    }
    let s = (step - warm) as f64;
    let rest = (total.saturating_sub(warm)).max(1) as f64;
    let min_lr = e(p.f64("min_lr"))?;
    Ok(match p.str("schedule").as_str() {
        "step" => {
            let size = p.usize("step_size").map_err(|e| e.to_string())?.max(1) as f64;
            base * e(p.f64("gamma"))?.powi((s / size).floor() as i32)
        }
        "cosine" => {
            min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * s / rest).cos())
        }
        "sgdr" => {
            let mut period = p.usize("sgdr_period").map_err(|e| e.to_string())?.max(1) as f64;
            let mult = e(p.f64("sgdr_mult"))?.max(1.0);
            let mut t = s;
            while t >= period {
                t -= period;
                period *= mult;
            }
            min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t / period).cos())
        }
        "onecycle" => {
            let pct = e(p.f64("pct_start"))?.clamp(0.01, 0.99);
            let up = rest * pct;
            let (start, end) = (base / 25.0, base / 1e4);
            if s < up {
                start + (base - start) * 0.5 * (1.0 - (std::f64::consts::PI * s / up).cos())
            } else {
                end + (base - end)
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * (s - up) / (rest - up).max(1.0)).cos())
            }
        }
        _ => base,
    })
}

/// Everything the loop accumulates between log lines and epochs.
#[derive(Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Acc {
    loss_sum: f64,
    correct: f64,
    count: f64,
}

impl Acc {
    fn add(&mut self, loss: f64, correct: f64, n: f64) {
        self.loss_sum += loss * n;
        self.correct += correct;
        self.count += n;
    }
}

pub struct Setup {
    pub model: Model,
    pub opt: Optimizer,
    pub train: (Tensor, Tensor, usize),
    pub val: (Tensor, Tensor, usize),
    pub device: Device,
}

pub fn device(p: &Params) -> TrainResult<Device> {
    Ok(match p.str("device").as_str() {
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                return Err("device=cuda but libtorch sees no CUDA device".into());
            }
            Device::Cuda(0)
        }
        _ => Device::cuda_if_available(),
    })
}

fn to_tensors(d: &Dataset, device: Device) -> (Tensor, Tensor, usize) {
    let mut shape = vec![d.len() as i64];
    shape.extend_from_slice(&d.shape);
    let x = Tensor::from_slice(&d.x)
        .reshape(shape.as_slice())
        .to_device(device);
    let y = Tensor::from_slice(&d.y).to_device(device);
    (x, y, d.len())
}

/// Seeds, loads the data and builds the model and optimizer.
pub fn setup(p: &Params, data: Dataset, overfit: Option<usize>) -> TrainResult<Setup> {
    let e = |x: Result<usize, crate::params::ParamError>| x.map_err(|e| e.to_string());
    let f = |x: Result<f64, crate::params::ParamError>| x.map_err(|e| e.to_string());
    let threads = e(p.usize("threads"))?;
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    let device = device(p)?;
    if device.is_cuda() {
        // Reproducibility over speed: no autotuned (nondeterministic) kernels.
        tch::Cuda::cudnn_set_benchmark(false);
    }
    let seed = p.i64("seed").map_err(|e| e.to_string())?;
    tch::manual_seed(seed);
    let classes = data.classes.max(2);
    let shape = data.shape.clone();
    let (train, val) = match overfit {
        Some(k) => {
            let d = data.sample_size();
            let k = k.min(data.len());
            let small = Dataset {
                x: data.x[..k * d].to_vec(),
                y: data.y[..k].to_vec(),
                shape: shape.clone(),
                classes,
            };
            let small2 = Dataset {
                x: small.x.clone(),
                y: small.y.clone(),
                shape: shape.clone(),
                classes,
            };
            (small, small2)
        }
        None => data.split(f(p.f64("val_fraction"))?),
    };
    if train.len() == 0 {
        return Err("no training samples (raise samples or lower val_fraction)".into());
    }
    let (dropout, wd) = if overfit.is_some() {
        (0.0, 0.0)
    } else {
        (f(p.f64("dropout"))?, f(p.f64("weight_decay"))?)
    };
    let (kind, init) = (p.str("model"), p.str("init"));
    let arch = Arch {
        kind: &kind,
        depth: e(p.usize("depth"))?,
        width: e(p.usize("width"))? as i64,
        act: Activation::parse(&p.str("activation")),
        init: &init,
        dropout,
    };
    let model = Model::new(&arch, &shape, classes, device)?;
    let kind = match p.str("optimizer").as_str() {
        "sgd" => OptKind::Sgd,
        "adamw" => OptKind::AdamW,
        _ => OptKind::Adam,
    };
    let settings = OptSettings {
        kind,
        momentum: f(p.f64("momentum"))?,
        nesterov: p.bool("nesterov").map_err(|e| e.to_string())?,
        weight_decay: wd,
        beta1: f(p.f64("beta1"))?,
        beta2: f(p.f64("beta2"))?,
        eps: f(p.f64("eps"))?,
    };
    let opt = Optimizer::new(settings, &model.params);
    Ok(Setup {
        model,
        opt,
        train: to_tensors(&train, device),
        val: to_tensors(&val, device),
        device,
    })
}

fn evaluate(model: &Model, data: &(Tensor, Tensor, usize), batch: usize) -> (f64, f64) {
    if data.2 == 0 {
        return (f64::NAN, f64::NAN);
    }
    tch::no_grad(|| {
        let (mut loss, mut correct) = (0.0, 0.0);
        let mut i = 0;
        while i < data.2 {
            let n = batch.min(data.2 - i);
            let x = data.0.narrow(0, i as i64, n as i64);
            let y = data.1.narrow(0, i as i64, n as i64);
            let logits = model.forward(&x, false);
            loss += cross_entropy(&logits, &y, 0.0).double_value(&[]) * n as f64;
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Double)
                .double_value(&[]);
            i += n;
        }
        (loss / data.2 as f64, correct / data.2 as f64)
    })
}

/// State saved in a checkpoint besides tensors.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: u32,
    fingerprint: String,
    step: u64,
    opt_t: i64,
    interval: Acc,
    epoch_acc: Acc,
    tensors: Vec<(String, Vec<i64>)>,
}

const MAGIC: &str = "LIANDAN-CKPT 1\n";

fn tensor_bytes(t: &Tensor) -> TrainResult<Vec<u8>> {
    let v: Vec<f32> = Vec::<f32>::try_from(&t.to_device(Device::Cpu).flatten(0, -1))
        .map_err(|e| e.to_string())?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn save(dir: &Path, s: &Setup, h: Header) -> TrainResult<PathBuf> {
    let mut all: Vec<&Tensor> = s.model.params.iter().collect();
    all.extend(s.opt.state.iter());
    let mut buf = Vec::new();
    buf.extend_from_slice(MAGIC.as_bytes());
    buf.extend_from_slice(
        serde_json::to_string(&h)
            .map_err(|e| e.to_string())?
            .as_bytes(),
    );
    buf.push(b'\n');
    for t in all {
        buf.extend(tensor_bytes(t)?);
    }
    let name = format!("step-{}.ckpt", h.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let fin = dir.join(&name);
    let io = |e: std::io::Error| format!("writing checkpoint {}: {e}", fin.display());
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&buf).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &fin).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(fin)
}

fn load(path: &Path, s: &mut Setup, fingerprint: &str) -> TrainResult<Header> {
    let b = std::fs::read(path)
        .map_err(|e| format!("cannot read checkpoint {}: {e}", path.display()))?;
    let bad = |m: &str| format!("checkpoint {}: {m}", path.display());
    let rest = b
        .strip_prefix(MAGIC.as_bytes())
        .ok_or_else(|| bad("not a liandan-train checkpoint"))?;
    let nl = rest
        .iter()
        .position(|c| *c == b'\n')
        .ok_or_else(|| bad("truncated header"))?;
    let h: Header =
        serde_json::from_slice(&rest[..nl]).map_err(|e| bad(&format!("bad header: {e}")))?;
    if h.fingerprint != fingerprint {
        return Err(bad(
            "it was written with different training parameters; resume with the same parameters",
        ));
    }
    let mut data = &rest[nl + 1..];
    let mut all: Vec<&mut Tensor> = s.model.params.iter_mut().collect();
    all.extend(s.opt.state.iter_mut());
    if all.len() != h.tensors.len() {
        return Err(bad("tensor count does not match the model"));
    }
    tch::no_grad(|| -> TrainResult<()> {
        for (t, (_, shape)) in all.into_iter().zip(&h.tensors) {
            if t.size() != *shape {
                return Err(bad("tensor shapes do not match the model"));
            }
            let n = shape.iter().product::<i64>() as usize * 4;
            if data.len() < n {
                return Err(bad("truncated tensor data"));
            }
            let vals: Vec<f32> = data[..n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            t.copy_(
                &Tensor::from_slice(&vals)
                    .reshape(shape.as_slice())
                    .to_device(t.device()),
            );
            data = &data[n..];
        }
        Ok(())
    })?;
    s.opt.t = h.opt_t;
    Ok(h)
}

/// Trains; returns the process exit code (0, or 143 after a SIGTERM checkpoint).
pub fn train(p: &Params, data: Dataset) -> TrainResult<i32> {
    let e = |x: Result<usize, crate::params::ParamError>| x.map_err(|e| e.to_string());
    let mut s = setup(p, data, None)?;
    let seed = p.i64("seed").map_err(|e| e.to_string())?;
    let batch = e(p.usize("batch_size"))?;
    let n_train = s.train.2;
    let spe = n_train.div_ceil(batch) as u64;
    let total = match e(p.usize("steps"))? {
        0 => e(p.usize("epochs"))? as u64 * spe,
        k => k as u64,
    };
    let log_every = e(p.usize("log_every"))?.max(1) as u64;
    let ckpt_every = e(p.usize("checkpoint_every"))? as u64;
    let clip = p.f64("grad_clip").map_err(|e| e.to_string())?;
    let smoothing = p.f64("label_smoothing").map_err(|e| e.to_string())?;
    let ckpt_dir = std::env::var_os("LIANDAN_CHECKPOINT_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    // Made (or found unusable) before training, not at the first checkpoint
    // after minutes of work.
    if let Some(dir) = &ckpt_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "LIANDAN_CHECKPOINT_DIR {}: cannot create it: {e}",
                dir.display()
            )
        })?;
    }
    let fingerprint = p.fingerprint();
    let mut sink = Sink::from_env()?;
    let mut step = 0u64;
    let mut interval = Acc::default();
    let mut epoch_acc = Acc::default();
    if let Some(path) = std::env::var_os("LIANDAN_RESUME_FROM").filter(|v| !v.is_empty()) {
        let h = load(Path::new(&path), &mut s, &fingerprint)?;
        step = h.step;
        interval = h.interval;
        epoch_acc = h.epoch_acc;
        eprintln!(
            "liandan-train: resumed from {} at step {step}",
            PathBuf::from(&path).display()
        );
    }
    let save_now = |s: &Setup, step: u64, interval: Acc, epoch_acc: Acc| -> TrainResult<()> {
        if let Some(dir) = &ckpt_dir {
            let mut tensors: Vec<(String, Vec<i64>)> = s
                .model
                .names
                .iter()
                .cloned()
                .zip(s.model.params.iter().map(|t| t.size()))
                .collect();
            tensors.extend(
                s.opt
                    .state
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("opt.{i}"), t.size())),
            );
            let h = Header {
                format: 1,
                fingerprint: fingerprint.clone(),
                step,
                opt_t: s.opt.t,
                interval,
                epoch_acc,
                tensors,
            };
            save(dir, s, h)?;
        }
        Ok(())
    };
    let mut perm_epoch = u64::MAX;
    let mut perm: Vec<i64> = Vec::new();
    let mut timer = std::time::Instant::now();
    let mut timed_samples = 0usize;
    while step < total {
        let epoch = step / spe;
        if epoch != perm_epoch {
            perm = Rng::keyed("liandan-train.data-order", &[seed as u64, epoch])
                .permutation(n_train)
                .into_iter()
                .map(|i| i as i64)
                .collect();
            perm_epoch = epoch;
        }
        let k = (step % spe) as usize;
        let idx = &perm[k * batch..((k + 1) * batch).min(n_train)];
        let idx_t = Tensor::from_slice(idx).to_device(s.device);
        let x = s.train.0.index_select(0, &idx_t);
        let y = s.train.1.index_select(0, &idx_t);
        tch::manual_seed(mix(seed, step));
        let logits = s.model.forward(&x, true);
        let loss = cross_entropy(&logits, &y, smoothing);
        let mut grads = gradients(&loss, &s.model.params);
        if clip > 0.0 {
            clip_grad_norm(&mut grads, clip);
        }
        let lr = learning_rate(p, step, total)?;
        s.opt.step(&mut s.model.params, &grads, lr);
        let lv = loss.double_value(&[]);
        let correct = tch::no_grad(|| {
            logits
                .argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Double)
                .double_value(&[])
        });
        interval.add(lv, correct, idx.len() as f64);
        epoch_acc.add(lv, correct, idx.len() as f64);
        timed_samples += idx.len();
        step += 1;
        if step.is_multiple_of(log_every) || step == total {
            let secs = timer.elapsed().as_secs_f64().max(1e-9);
            sink.emit(json!({"step": step, "epoch": epoch + 1, "loss": interval.loss_sum / interval.count, "accuracy": interval.correct / interval.count, "lr": lr, "samples_per_sec": timed_samples as f64 / secs}));
            interval = Acc::default();
            timer = std::time::Instant::now();
            timed_samples = 0;
        }
        if step.is_multiple_of(spe) || step == total {
            let (vl, va) = evaluate(&s.model, &s.val, 1024);
            sink.emit(json!({"step": step, "epoch": epoch + 1, "train_loss": epoch_acc.loss_sum / epoch_acc.count, "train_accuracy": epoch_acc.correct / epoch_acc.count, "val_loss": vl, "val_accuracy": va}));
            epoch_acc = Acc::default();
        }
        if ckpt_every > 0 && step.is_multiple_of(ckpt_every) && step < total {
            save_now(&s, step, interval, epoch_acc)?;
        }
        if STOP.load(Ordering::SeqCst) && step < total {
            save_now(&s, step, interval, epoch_acc)?;
            eprintln!(
                "liandan-train: stopped at step {step} after a checkpoint; it resumes from there"
            );
            return Ok(143);
        }
    }
    let (vl, va) = evaluate(&s.model, &s.val, 1024);
    let (tl, ta) = evaluate(&s.model, &s.train, 1024);
    sink.emit(json!({"final": true, "step": step, "train_loss": tl, "train_accuracy": ta, "val_loss": vl, "val_accuracy": va}));
    save_now(&s, step, interval, epoch_acc)?;
    Ok(0)
}

/// The learning-rate range test: the rate grows exponentially from lr_min to
/// lr_max; prints loss against rate and suggests the rate where the smoothed
/// loss falls fastest.
pub fn lr_range(p: &Params, data: Dataset) -> TrainResult<i32> {
    let e = |x: Result<usize, crate::params::ParamError>| x.map_err(|e| e.to_string());
    let mut s = setup(p, data, None)?;
    let seed = p.i64("seed").map_err(|e| e.to_string())?;
    let (lo, hi) = (
        p.f64("lr_min").map_err(|e| e.to_string())?,
        p.f64("lr_max").map_err(|e| e.to_string())?,
    );
    if !(lo > 0.0 && hi > lo) {
        return Err("lr range test needs 0 < lr_min < lr_max".into());
    }
    let steps = e(p.usize("range_steps"))?.max(10);
    let batch = e(p.usize("batch_size"))?;
    let n = s.train.2;
    let mut sink = Sink::from_env()?;
    let (mut avg, beta) = (0.0, 0.9);
    let mut best = f64::INFINITY;
    let mut curve: Vec<(f64, f64)> = Vec::new();
    for i in 0..steps {
        let lr = lo * (hi / lo).powf(i as f64 / (steps - 1) as f64);
        let perm = Rng::keyed("liandan-train.lr-range", &[seed as u64, i as u64]).permutation(n);
        let idx: Vec<i64> = perm.iter().take(batch.min(n)).map(|&v| v as i64).collect();
        let it = Tensor::from_slice(&idx).to_device(s.device);
        let (x, y) = (
            s.train.0.index_select(0, &it),
            s.train.1.index_select(0, &it),
        );
        tch::manual_seed(mix(seed, i as u64));
        let loss = cross_entropy(&s.model.forward(&x, true), &y, 0.0);
        let grads = gradients(&loss, &s.model.params);
        s.opt.step(&mut s.model.params, &grads, lr);
        let lv = loss.double_value(&[]);
        avg = beta * avg + (1.0 - beta) * lv;
        let smooth = avg / (1.0 - beta.powi(i as i32 + 1));
        sink.emit(json!({"step": i + 1, "lr": lr, "loss": lv, "smoothed_loss": smooth}));
        curve.push((lr, smooth));
        best = best.min(smooth);
        if !smooth.is_finite() || (i > 10 && smooth > 4.0 * best) {
            break;
        }
    }
    // Steepest descent of the smoothed loss against log(lr), skipping the noisy start.
    let mut suggestion = None;
    let mut steepest = 0.0;
    for w in curve.windows(3).skip(curve.len() / 10) {
        let slope = (w[2].1 - w[0].1) / (w[2].0.ln() - w[0].0.ln());
        if slope < steepest {
            steepest = slope;
            suggestion = Some(w[1].0);
        }
    }
    match suggestion {
        Some(lr) => {
            sink.emit(json!({"suggested_lr": lr, "min_smoothed_loss": best}));
            eprintln!(
                "liandan-train: suggested learning rate {lr:.3e} (where the loss falls fastest)"
            );
            Ok(0)
        }
        None => {
            Err("the loss never fell over the range; widen lr_min..lr_max or check the data".into())
        }
    }
}

/// The overfit check: a handful of samples, regularisation off; a healthy
/// model drives the loss to near zero. Exit 0 when it does, 1 when not.
pub fn overfit(p: &Params, data: Dataset) -> TrainResult<i32> {
    let e = |x: Result<usize, crate::params::ParamError>| x.map_err(|e| e.to_string());
    let k = e(p.usize("overfit_samples"))?.max(1);
    let mut s = setup(p, data, Some(k))?;
    let steps = e(p.usize("overfit_steps"))?.max(1);
    let lr = p.f64("lr").map_err(|e| e.to_string())?;
    let mut sink = Sink::from_env()?;
    let mut last = f64::NAN;
    let first;
    {
        let logits = s.model.forward(&s.train.0, true);
        first = cross_entropy(&logits, &s.train.1, 0.0).double_value(&[]);
    }
    for i in 0..steps {
        let loss = cross_entropy(&s.model.forward(&s.train.0, true), &s.train.1, 0.0);
        let grads = gradients(&loss, &s.model.params);
        s.opt.step(&mut s.model.params, &grads, lr);
        last = loss.double_value(&[]);
        if (i + 1) % 50 == 0 {
            sink.emit(json!({"step": i + 1, "loss": last}));
        }
    }
    let passed = last < 0.05;
    sink.emit(json!({"overfit_check": if passed { "passed" } else { "failed" }, "initial_loss": first, "final_loss": last, "samples": k, "steps": steps}));
    if passed {
        eprintln!(
            "liandan-train: overfit check passed: loss {first:.4} -> {last:.4} on {k} samples"
        );
        Ok(0)
    } else {
        eprintln!("liandan-train: overfit check FAILED: loss {first:.4} -> {last:.4} on {k} samples; a healthy model memorises a handful of samples, so something is wrong (learning rate {lr}? labels? model too small?)");
        Ok(1)
    }
}

/// Time per training step (for the PyTorch comparison benchmark).
pub fn bench(p: &Params, data: Dataset) -> TrainResult<i32> {
    let e = |x: Result<usize, crate::params::ParamError>| x.map_err(|e| e.to_string());
    let mut s = setup(p, data, None)?;
    let batch = e(p.usize("batch_size"))?;
    let steps = e(p.usize("steps"))?.max(20);
    let n = s.train.2;
    let lr = p.f64("lr").map_err(|e| e.to_string())?;
    let idx: Vec<i64> = (0..batch.min(n) as i64).collect();
    let it = Tensor::from_slice(&idx).to_device(s.device);
    let (x, y) = (
        s.train.0.index_select(0, &it),
        s.train.1.index_select(0, &it),
    );
    let mut times = Vec::new();
    for i in 0..steps + 10 {
        let t = std::time::Instant::now();
        let loss = cross_entropy(&s.model.forward(&x, true), &y, 0.0);
        let grads = gradients(&loss, &s.model.params);
        s.opt.step(&mut s.model.params, &grads, lr);
        let _ = loss.double_value(&[]);
        if i >= 10 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        json!({"ms_per_step_median": median * 1e3, "steps": steps, "threads": tch::get_num_threads(), "batch_size": batch})
    );
    Ok(0)
}
