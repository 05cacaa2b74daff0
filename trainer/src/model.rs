//! Models over plain tensors (so their parameters have a fixed order for
//! checkpoints): an MLP and a small CNN; and the optimizers implemented here
//! over tensors, so their full state can be saved and restored bit for bit.

use tch::{Device, Kind, Tensor};

/// Hidden-layer activation.
#[derive(Clone, Copy, Debug)]
pub enum Activation {
    Relu,
    Tanh,
    Gelu,
    Silu,
}

impl Activation {
    pub fn parse(s: &str) -> Activation {
        match s {
            "tanh" => Activation::Tanh,
            "gelu" => Activation::Gelu,
            "silu" => Activation::Silu,
            _ => Activation::Relu,
        }
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => x.gelu("none"),
            Activation::Silu => x.silu(),
        }
    }
}

enum Layer {
    Linear { w: usize, b: usize },
    Conv { w: usize, b: usize },
}

/// A model: parameters (in a fixed order) and a forward function.
pub struct Model {
    pub params: Vec<Tensor>,
    pub names: Vec<String>,
    layers: Vec<Layer>,
    cnn: bool,
    act: Activation,
    dropout: f64,
}

fn init_weight(
    shape: &[i64],
    fan_in: i64,
    fan_out: i64,
    init: &str,
    device: Device,
) -> (Tensor, Tensor) {
    let out = shape[0];
    let (w, b) = match init {
        "kaiming_normal" => (
            Tensor::randn(shape, (Kind::Float, device)) * (2.0 / fan_in as f64).sqrt(),
            Tensor::zeros([out], (Kind::Float, device)),
        ),
        "xavier_normal" => (
            Tensor::randn(shape, (Kind::Float, device)) * (2.0 / (fan_in + fan_out) as f64).sqrt(),
            Tensor::zeros([out], (Kind::Float, device)),
        ),
        // libtorch's default for Linear and Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        _ => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (
                Tensor::rand(shape, (Kind::Float, device)) * (2.0 * bound) - bound,
                Tensor::rand([out], (Kind::Float, device)) * (2.0 * bound) - bound,
            )
        }
    };
    (w.set_requires_grad(true), b.set_requires_grad(true))
}

/// A model's shape and initialisation, from the run's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Arch<'a> {
    /// `mlp` or `cnn`.
    pub kind: &'a str,
    pub depth: usize,
    pub width: i64,
    pub act: Activation,
    pub init: &'a str,
    pub dropout: f64,
}

/// An optimiser's kind and hyperparameters.
#[derive(Clone, Copy, Debug)]
pub struct OptSettings {
    pub kind: OptKind,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Model {
    /// Builds an MLP or CNN of `arch` for samples of `shape` and `classes`
    /// outputs. The caller seeds libtorch's generator first.
    pub fn new(
        arch: &Arch<'_>,
        shape: &[i64],
        classes: i64,
        device: Device,
    ) -> Result<Model, String> {
        let Arch {
            kind,
            depth,
            width,
            act,
            init,
            dropout,
        } = *arch;
        let mut m = Model {
            params: Vec::new(),
            names: Vec::new(),
            layers: Vec::new(),
            cnn: kind == "cnn",
            act,
            dropout,
        };
        let push = |m: &mut Model, name: String, w: Tensor, b: Tensor, conv: bool| {
            let wi = m.params.len();
            m.params.push(w);
            m.names.push(format!("{name}.weight"));
            m.params.push(b);
            m.names.push(format!("{name}.bias"));
            m.layers.push(if conv {
                Layer::Conv { w: wi, b: wi + 1 }
            } else {
                Layer::Linear { w: wi, b: wi + 1 }
            });
        };
        let mut fan_in: i64 = shape.iter().product();
        if m.cnn {
            if shape.len() != 3 {
                return Err("model=cnn needs image input (task=idx)".into());
            }
            let (c, h, w) = (shape[0], shape[1], shape[2]);
            let (h1, w1) = ((h - 2) / 2, (w - 2) / 2);
            let (h2, w2) = ((h1 - 2) / 2, (w1 - 2) / 2);
            if h2 < 1 || w2 < 1 {
                return Err(format!(
                    "images of {h}x{w} are too small for the CNN (need at least 10x10)"
                ));
            }
            let (w0, b0) = init_weight(&[16, c, 3, 3], c * 9, 16 * 9, init, device);
            push(&mut m, "conv1".into(), w0, b0, true);
            let (w1_, b1) = init_weight(&[32, 16, 3, 3], 16 * 9, 32 * 9, init, device);
            push(&mut m, "conv2".into(), w1_, b1, true);
            fan_in = 32 * h2 * w2;
        }
        for i in 0..depth {
            let (w, b) = init_weight(&[width, fan_in], fan_in, width, init, device);
            push(&mut m, format!("hidden{i}"), w, b, false);
            fan_in = width;
        }
        let (w, b) = init_weight(&[classes, fan_in], fan_in, classes, init, device);
        push(&mut m, "out".into(), w, b, false);
        Ok(m)
    }

    /// Logits for a batch. Dropout uses libtorch's generator, which the
    /// training loop re-seeds at every step from (seed, step).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            match *l {
                Layer::Conv { w, b } => {
                    h = h
                        .conv2d(
                            &self.params[w],
                            Some(&self.params[b]),
                            [1, 1],
                            [0, 0],
                            [1, 1],
                            1,
                        )
                        .relu()
                        .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                }
                Layer::Linear { w, b } => {
                    if h.dim() > 2 {
                        h = h.flatten(1, -1);
                    }
                    h = h.linear(&self.params[w], Some(&self.params[b]));
                    if i + 1 < n {
                        h = self.act.apply(&h);
                        if self.dropout > 0.0 {
                            h = h.dropout(self.dropout, train);
                        }
                    }
                }
            }
        }
        h
    }
}

/// Cross-entropy with label smoothing, averaged over the batch (libtorch's
/// fused `cross_entropy_loss`, the op behind PyTorch's `F.cross_entropy`).
pub fn cross_entropy(logits: &Tensor, y: &Tensor, smoothing: f64) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, smoothing)
}

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptKind {
    Sgd,
    Adam,
    AdamW,
}

/// An optimizer whose whole state is tensors plus a step count.
pub struct Optimizer {
    pub kind: OptKind,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// SGD: momentum buffers; Adam: first then second moments.
    pub state: Vec<Tensor>,
    pub t: i64,
    /// Scratch buffers, one per parameter, reused every step (no allocation
    /// and page faults on the hot path). Not state: never checkpointed.
    scratch: Vec<Tensor>,
}

impl Optimizer {
    pub fn new(settings: OptSettings, params: &[Tensor]) -> Optimizer {
        let OptSettings {
            kind,
            momentum,
            nesterov,
            weight_decay,
            beta1,
            beta2,
            eps,
        } = settings;
        let n = match kind {
            OptKind::Sgd => 1,
            _ => 2,
        };
        let state = (0..n)
            .flat_map(|_| params.iter().map(|p| p.zeros_like()))
            .collect();
        Optimizer {
            kind,
            momentum,
            nesterov,
            weight_decay,
            beta1,
            beta2,
            eps,
            state,
            t: 0,
            scratch: params.iter().map(|p| p.zeros_like()).collect(),
        }
    }

    /// One update with learning rate `lr` from `grads` (one per parameter),
    /// following PyTorch's definitions.
    pub fn step(&mut self, params: &mut [Tensor], grads: &[Tensor], lr: f64) {
        self.t += 1;
        let n = params.len();
        tch::no_grad(|| {
            for (i, p) in params.iter_mut().enumerate() {
                let mut g = grads[i].shallow_clone();
                match self.kind {
                    OptKind::Sgd => {
                        if self.weight_decay != 0.0 {
                            g = &g + &*p * self.weight_decay;
                        }
                        if self.momentum != 0.0 {
                            let buf = &mut self.state[i];
                            if self.t == 1 {
                                buf.copy_(&g);
                            } else {
                                let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                            }
                            g = if self.nesterov {
                                &g + &*buf * self.momentum
                            } else {
                                buf.shallow_clone()
                            };
                        }
                        let _ = p.g_sub_(&(g * lr));
                    }
                    OptKind::Adam | OptKind::AdamW => {
                        let (b1, b2) = (self.beta1, self.beta2);
                        let bc1 = 1.0 - b1.powi(self.t as i32);
                        let bc2 = 1.0 - b2.powi(self.t as i32);
                        let (ms, vs) = self.state.split_at_mut(n);
                        let (m, v) = (&mut ms[i], &mut vs[i]);
                        let c = AdamConsts {
                            lr,
                            b1,
                            b2,
                            eps: self.eps,
                            bc1,
                            bc2,
                            l2: if self.kind == OptKind::Adam {
                                self.weight_decay
                            } else {
                                0.0
                            },
                            decoupled: if self.kind == OptKind::AdamW {
                                self.weight_decay
                            } else {
                                0.0
                            },
                        };
                        if adam_fused_cpu(p, &g, m, v, &c) {
                            continue;
                        }
                        if self.kind == OptKind::AdamW {
                            if self.weight_decay != 0.0 {
                                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                            }
                        } else if self.weight_decay != 0.0 {
                            g = &g + &*p * self.weight_decay;
                        }
                        // In place, with as few passes over memory as PyTorch's foreach Adam:
                        // m.lerp_(g, 1-b1); v.lerp_(g*g, 1-b2);
                        // p += m / (-(sqrt(v)/sqrt(bc2) + eps) * bc1/lr)   (one addcdiv_).
                        let _ = self.state[i].lerp_(&g, 1.0 - b1);
                        let tmp = &mut self.scratch[i];
                        let _ = g.mul_out(tmp, &g);
                        let _ = self.state[n + i].lerp_(tmp, 1.0 - b2);
                        let _ = self.state[n + i].sqrt_out(tmp);
                        let _ = tmp.g_div_scalar_(bc2.sqrt());
                        let _ = tmp.g_add_scalar_(self.eps);
                        let _ = tmp.g_mul_scalar_(-bc1 / lr);
                        let _ = p.addcdiv_(&self.state[i], tmp);
                    }
                }
            }
        });
    }
}

/// The scalars of one Adam step.
struct AdamConsts {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    /// Bias corrections 1 - beta^t.
    bc1: f64,
    bc2: f64,
    /// Adam's weight decay (added to the gradient).
    l2: f64,
    /// AdamW's weight decay (applied to the parameter before the update).
    decoupled: f64,
}

/// Whether `t` is a contiguous f32 tensor in CPU memory (its data can be
/// walked as a slice).
fn cpu_f32(t: &Tensor) -> bool {
    t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
}

/// One Adam/AdamW step for one parameter in a single pass over memory, on the
/// CPU: per element, the same formulas as the tensor path below (and as
/// PyTorch's Adam) in f32, but reading p, g, m, v once and writing p, m, v
/// once, where the tensor ops pass over memory eight times. False (nothing
/// done) unless all four are distinct contiguous f32 CPU tensors of one size;
/// the caller then takes the tensor path (CUDA, other dtypes).
fn adam_fused_cpu(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    c: &AdamConsts,
) -> bool {
    let len = p.numel();
    let all = [&*p, g, &*m, &*v];
    if !all.iter().all(|t| cpu_f32(t) && t.numel() == len) {
        return false;
    }
    let ptrs = all.map(|t| t.data_ptr() as usize);
    if (0..4).any(|a| (a + 1..4).any(|b| ptrs[a] == ptrs[b])) || len == 0 {
        return len == 0;
    }
    // SAFETY: the four tensors are contiguous f32 CPU tensors of `len`
    // elements, so each data pointer is valid for `len` f32s; their pointers
    // differ and none is a view of another (the optimizer allocated m and v,
    // autograd allocated g, p is a leaf), so the slices do not overlap. No other
    // thread touches them during the step (we are inside `no_grad` on the
    // training thread), and the tensors outlive the slices.
    let (ps, gs, ms, vs) = unsafe {
        (
            std::slice::from_raw_parts_mut(ptrs[0] as *mut f32, len),
            std::slice::from_raw_parts(ptrs[1] as *const f32, len),
            std::slice::from_raw_parts_mut(ptrs[2] as *mut f32, len),
            std::slice::from_raw_parts_mut(ptrs[3] as *mut f32, len),
        )
    };
    let (w1, w2) = ((1.0 - c.b1) as f32, (1.0 - c.b2) as f32);
    let inv_sqrt_bc2 = (1.0 / c.bc2.sqrt()) as f32;
    let eps = c.eps as f32;
    let step = (c.lr / c.bc1) as f32;
    let l2 = c.l2 as f32;
    let keep = (1.0 - c.lr * c.decoupled) as f32;
    for (((p, &g), m), v) in ps.iter_mut().zip(gs).zip(ms.iter_mut()).zip(vs.iter_mut()) {
        let g = g + l2 * *p;
        let p0 = *p * keep;
        *m += w1 * (g - *m);
        *v += w2 * (g * g - *v);
        *p = p0 - step * *m / (v.sqrt() * inv_sqrt_bc2 + eps);
    }
    true
}

/// Scales gradients so their global norm is at most `max`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max: f64) -> f64 {
    tch::no_grad(|| {
        let total: f64 = grads
            .iter()
            .map(|g| g.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]))
            .sum();
        let norm = total.sqrt();
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for g in grads.iter_mut() {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        norm
    })
}

/// Gradients of `loss` with respect to `params`, in fresh buffers (like
/// PyTorch's `zero_grad(set_to_none=True)`: nothing to zero, nothing to accumulate).
pub fn gradients(loss: &Tensor, params: &[Tensor]) -> Vec<Tensor> {
    Tensor::run_backward(&[loss], params, false, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps `kind` five times on f32 (the fused CPU pass) and on f64 (the
    /// tensor path, as on CUDA) from the same start; returns the parameters.
    fn both_paths(kind: OptKind, weight_decay: f64) -> (Tensor, Tensor) {
        tch::manual_seed(7);
        let p0 = Tensor::randn([64, 33], (Kind::Float, tch::Device::Cpu));
        let grads: Vec<Tensor> = (0..5)
            .map(|_| Tensor::randn([64, 33], (Kind::Float, tch::Device::Cpu)))
            .collect();
        let run = |k: Kind| {
            // A copy: to_kind to the same kind would alias p0.
            let mut params = vec![p0.to_kind(k).copy()];
            let settings = OptSettings {
                kind,
                momentum: 0.0,
                nesterov: false,
                weight_decay,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            };
            let mut opt = Optimizer::new(settings, &params);
            for g in &grads {
                opt.step(&mut params, &[g.to_kind(k)], 0.01);
            }
            params.remove(0)
        };
        (run(Kind::Float), run(Kind::Double))
    }

    #[test]
    fn fused_cpu_adam_and_adamw_match_the_tensor_path() {
        for (kind, wd) in [
            (OptKind::Adam, 0.0),
            (OptKind::Adam, 0.1),
            (OptKind::AdamW, 0.1),
        ] {
            let (fused, tensors) = both_paths(kind, wd);
            let diff = (fused.to_kind(Kind::Double) - &tensors)
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "max difference {diff}");
            let moved = (fused.to_kind(Kind::Double) - both_paths(OptKind::Sgd, 0.0).1)
                .abs()
                .max()
                .double_value(&[]);
            assert!(moved > 1e-3, "the test must see an update");
        }
    }

    #[test]
    fn the_fused_pass_declines_what_it_cannot_walk() {
        let p = Tensor::zeros([4, 4], (Kind::Float, tch::Device::Cpu));
        let c = AdamConsts {
            lr: 0.1,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            bc1: 0.1,
            bc2: 0.001,
            l2: 0.0,
            decoupled: 0.0,
        };
        let g = Tensor::ones([4, 4], (Kind::Float, tch::Device::Cpu));
        let (mut m, mut v) = (p.zeros_like(), p.zeros_like());
        // A transposed (non-contiguous) gradient, a double moment, an alias.
        assert!(!adam_fused_cpu(
            &mut p.shallow_clone(),
            &g.tr(),
            &mut m,
            &mut v,
            &c
        ));
        assert!(!adam_fused_cpu(
            &mut p.shallow_clone(),
            &g,
            &mut m.to_kind(Kind::Double),
            &mut v,
            &c
        ));
        assert!(!adam_fused_cpu(
            &mut p.shallow_clone(),
            &g,
            &mut m.shallow_clone(),
            &mut m,
            &c
        ));
        assert!(adam_fused_cpu(
            &mut p.shallow_clone(),
            &g,
            &mut m,
            &mut v,
            &c
        ));
        // p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) with m = 0.1, v = 0.001.
        let want = -(0.1 / 0.1) * 0.1 / ((0.001f64).sqrt() / (0.001f64).sqrt() + 1e-8);
        assert!(
            (p.double_value(&[0, 0]) - want).abs() < 1e-6,
            "{}",
            p.double_value(&[0, 0])
        );
    }
}
