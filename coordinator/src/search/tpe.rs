//! The Tree-structured Parzen Estimator (Bergstra et al. 2011; Optuna's default
//! sampler), over the unit cube of [`super::space`]. Finished trials are split
//! into the best γ(n) = min(⌈n/10⌉, 25) and the rest; each group gets a Parzen
//! density per coordinate (truncated Gaussians with neighbour-distance
//! bandwidths for numbers, smoothed frequencies for categoricals, each with a
//! uniform prior component); candidates drawn from the good density are scored
//! by the ratio l(x)/g(x) and the best one is proposed. Coordinates are modelled
//! independently, so nested parameters (which are leaves with longer paths)
//! need nothing special.

use super::space::{Kind, Space};
use liandan_common::rng::Rng;

/// Candidates drawn from l(x) per proposal (Optuna's n_ei_candidates).
pub const CANDIDATES: usize = 24;
/// Weight of the uniform prior component in each density.
const PRIOR_WEIGHT: f64 = 1.0;

/// A finished trial: coordinates and value (lower is better).
#[derive(Clone, Debug)]
pub struct Obs {
    pub x: Vec<f64>,
    pub y: f64,
}

/// The number of trials counted as good out of `n`.
pub fn gamma(n: usize) -> usize {
    n.div_ceil(10).clamp(1, 25)
}

enum Density {
    Numeric {
        mus: Vec<f64>,
        sigmas: Vec<f64>,
        weights: Vec<f64>,
    },
    Categorical {
        probs: Vec<f64>,
    },
}

fn norm_cdf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2)
}

impl Density {
    fn build(kind: Kind, values: &[f64]) -> Density {
        match kind {
            Kind::Categorical(k) => {
                let mut probs = vec![PRIOR_WEIGHT / k as f64; k];
                for v in values {
                    let c = ((v * k as f64) as usize).min(k - 1);
                    probs[c] += 1.0;
                }
                let total: f64 = probs.iter().sum();
                probs.iter_mut().for_each(|p| *p /= total);
                Density::Categorical { probs }
            }
            Kind::Continuous => {
                // Components at the observations plus the prior (centre, wide).
                let mut mus: Vec<f64> = values.to_vec();
                mus.push(0.5);
                let n = values.len();
                let prior_index = n;
                let mut order: Vec<usize> = (0..mus.len()).collect();
                order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
                let sigma_max = 1.0;
                let sigma_min = 1.0 / (100f64.min(1.0 + mus.len() as f64));
                let mut sigmas = vec![0.0; mus.len()];
                for (pos, &i) in order.iter().enumerate() {
                    let left = if pos == 0 { 0.0 } else { mus[order[pos - 1]] };
                    let right = if pos + 1 == order.len() {
                        1.0
                    } else {
                        mus[order[pos + 1]]
                    };
                    let s = (mus[i] - left).max(right - mus[i]);
                    sigmas[i] = s.clamp(sigma_min, sigma_max);
                }
                sigmas[prior_index] = sigma_max;
                let mut weights = vec![1.0; mus.len()];
                weights[prior_index] = PRIOR_WEIGHT;
                let total: f64 = weights.iter().sum();
                weights.iter_mut().for_each(|w| *w /= total);
                Density::Numeric {
                    mus,
                    sigmas,
                    weights,
                }
            }
        }
    }

    fn log_pdf(&self, x: f64) -> f64 {
        match self {
            Density::Categorical { probs } => {
                let k = probs.len();
                let c = ((x * k as f64) as usize).min(k - 1);
                probs[c].ln()
            }
            Density::Numeric {
                mus,
                sigmas,
                weights,
            } => {
                let mut p = 0.0;
                for ((m, s), w) in mus.iter().zip(sigmas).zip(weights) {
                    let z = (x - m) / s;
                    let mass = norm_cdf((1.0 - m) / s) - norm_cdf(-m / s);
                    let pdf = (-0.5 * z * z).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
                    p += w * pdf / mass.max(1e-12);
                }
                p.max(1e-300).ln()
            }
        }
    }

    fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            Density::Categorical { probs } => {
                let u = rng.uniform01();
                let mut acc = 0.0;
                for (c, p) in probs.iter().enumerate() {
                    acc += p;
                    if u < acc {
                        return (c as f64 + 0.5) / probs.len() as f64;
                    }
                }
                (probs.len() as f64 - 0.5) / probs.len() as f64
            }
            Density::Numeric {
                mus,
                sigmas,
                weights,
            } => {
                let u = rng.uniform01();
                let mut acc = 0.0;
                let mut i = weights.len() - 1;
                for (j, w) in weights.iter().enumerate() {
                    acc += w;
                    if u < acc {
                        i = j;
                        break;
                    }
                }
                // Truncated to [0, 1] by rejection; the last draw is clamped.
                let mut x = mus[i];
                for _ in 0..64 {
                    x = mus[i] + sigmas[i] * rng.normal01();
                    if (0.0..=1.0).contains(&x) {
                        return x;
                    }
                }
                x.clamp(0.0, 1.0)
            }
        }
    }
}

/// Proposes coordinates from finished trials (at least one).
pub fn propose(space: &Space, obs: &[Obs], rng: &mut Rng) -> Vec<f64> {
    let mut sorted: Vec<&Obs> = obs.iter().collect();
    sorted.sort_by(|a, b| a.y.total_cmp(&b.y));
    let n_good = gamma(sorted.len()).min(sorted.len());
    let (good, bad) = sorted.split_at(n_good);
    let mut best = Vec::new();
    let mut best_score = f64::NEG_INFINITY;
    let models: Vec<(Density, Density)> = space
        .dims
        .iter()
        .enumerate()
        .map(|(d, dim)| {
            let g: Vec<f64> = good.iter().map(|o| o.x[d]).collect();
            let b: Vec<f64> = bad.iter().map(|o| o.x[d]).collect();
            (Density::build(dim.kind, &g), Density::build(dim.kind, &b))
        })
        .collect();
    for _ in 0..CANDIDATES {
        let x: Vec<f64> = models.iter().map(|(l, _)| l.sample(rng)).collect();
        let score: f64 = models
            .iter()
            .zip(&x)
            .map(|((l, g), &xi)| l.log_pdf(xi) - g.log_pdf(xi))
            .sum();
        if score > best_score {
            best_score = score;
            best = x;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_follows_optuna() {
        assert_eq!(gamma(1), 1);
        assert_eq!(gamma(10), 1);
        assert_eq!(gamma(11), 2);
        assert_eq!(gamma(1000), 25);
    }

    #[test]
    fn truncated_densities_integrate_to_one() {
        let d = Density::build(Kind::Continuous, &[0.02, 0.4, 0.41, 0.97]);
        let n = 20_000;
        let integral: f64 = (0..n)
            .map(|i| d.log_pdf((i as f64 + 0.5) / n as f64).exp() / n as f64)
            .sum();
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        let c = Density::build(Kind::Categorical(3), &[0.1, 0.2, 0.9]);
        let total: f64 = [0.1, 0.5, 0.9].iter().map(|x| c.log_pdf(*x).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
