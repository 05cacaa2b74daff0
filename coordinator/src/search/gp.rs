//! A Gaussian process over the unit cube, as W&B's `bayes` fits one: a Matérn
//! kernel with ν = 3/2 and one length scale (chosen by the marginal
//! likelihood), targets normalised to mean 0 and standard deviation 1, and a
//! small nugget. liandan adds a per-point noise term: the variance of a
//! trial's mean over its seeds, so the model treats the seed spread as noise
//! instead of as signal. Linear algebra is nalgebra's Cholesky.

use nalgebra::{DMatrix, DVector};

/// Added to the diagonal for numerical stability (W&B uses 1e-7).
const NUGGET: f64 = 1e-7;

/// Length scales tried; the one with the highest log marginal likelihood wins.
const LENGTH_SCALES: [f64; 7] = [0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5];

fn matern32(r: f64, ls: f64) -> f64 {
    let a = 3f64.sqrt() * r / ls;
    (1.0 + a) * (-a).exp()
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// A fitted process.
pub struct Gp {
    x: Vec<Vec<f64>>,
    chol_l: DMatrix<f64>,
    alpha: DVector<f64>,
    pub length_scale: f64,
    /// The likelihood preferred the shortest or longest length scale tried:
    /// the fit is poor (W&B then proposes a random point instead).
    pub at_bound: bool,
    y_mean: f64,
    y_std: f64,
}

/// One noisy observation: coordinates, value (lower is better), noise variance.
#[derive(Clone, Debug)]
pub struct Point {
    pub x: Vec<f64>,
    pub y: f64,
    pub noise: f64,
}

struct Fit {
    chol_l: DMatrix<f64>,
    alpha: DVector<f64>,
    lml: f64,
}

fn fit_with(x: &[Vec<f64>], y: &DVector<f64>, noise: &[f64], ls: f64) -> Option<Fit> {
    let n = x.len();
    let mut k = DMatrix::<f64>::zeros(n, n);
    for i in 0..n {
        for j in 0..i {
            let v = matern32(dist(&x[i], &x[j]), ls);
            k[(i, j)] = v;
            k[(j, i)] = v;
        }
        k[(i, i)] = 1.0 + NUGGET + noise[i];
    }
    let chol = k.cholesky()?;
    let alpha = chol.solve(y);
    let l = chol.unpack();
    let log_det: f64 = (0..n).map(|i| l[(i, i)].ln()).sum::<f64>() * 2.0;
    let lml = -0.5 * y.dot(&alpha) - 0.5 * log_det;
    Some(Fit {
        chol_l: l,
        alpha,
        lml,
    })
}

impl Gp {
    /// Fits to `points` (at least one). `None` only when every length scale
    /// gives a matrix that is not positive definite (duplicate points without noise).
    pub fn fit(points: &[Point]) -> Option<Gp> {
        if points.is_empty() {
            return None;
        }
        let ys: Vec<f64> = points.iter().map(|p| p.y).collect();
        let n = ys.len() as f64;
        let y_mean = ys.iter().sum::<f64>() / n;
        let y_std = if ys.len() < 2 {
            1.0
        } else {
            (ys.iter().map(|y| (y - y_mean).powi(2)).sum::<f64>() / n).sqrt() + 1e-6
        };
        let y = DVector::from_iterator(ys.len(), ys.iter().map(|v| (v - y_mean) / y_std));
        let noise: Vec<f64> = points.iter().map(|p| p.noise / (y_std * y_std)).collect();
        let x: Vec<Vec<f64>> = points.iter().map(|p| p.x.clone()).collect();
        let mut best: Option<(f64, Fit)> = None;
        for &ls in &LENGTH_SCALES {
            if let Some(f) = fit_with(&x, &y, &noise, ls) {
                if best.as_ref().is_none_or(|(_, b)| f.lml > b.lml) {
                    best = Some((ls, f));
                }
            }
        }
        let (length_scale, f) = best?;
        let at_bound = length_scale == LENGTH_SCALES[0]
            || length_scale == LENGTH_SCALES[LENGTH_SCALES.len() - 1];
        Some(Gp {
            x,
            chol_l: f.chol_l,
            alpha: f.alpha,
            length_scale,
            at_bound,
            y_mean,
            y_std,
        })
    }

    /// Posterior mean and standard deviation at `q`, in the caller's units.
    pub fn predict(&self, q: &[f64]) -> (f64, f64) {
        let n = self.x.len();
        let ks = DVector::from_iterator(
            n,
            self.x
                .iter()
                .map(|xi| matern32(dist(xi, q), self.length_scale)),
        );
        let mean = ks.dot(&self.alpha);
        let v = self
            .chol_l
            .solve_lower_triangular(&ks)
            .unwrap_or_else(|| DVector::zeros(n));
        let var = (1.0 - v.dot(&v)).max(1e-12);
        (mean * self.y_std + self.y_mean, var.sqrt() * self.y_std)
    }

    /// The normalised target of a value in the caller's units.
    pub fn normalise(&self, y: f64) -> f64 {
        (y - self.y_mean) / self.y_std
    }

    pub fn y_std(&self) -> f64 {
        self.y_std
    }
}

fn std_normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn std_normal_cdf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2)
}

/// Expected improvement below `best` (lower is better) of a prediction.
pub fn expected_improvement(mean: f64, std: f64, best: f64) -> f64 {
    if std <= 0.0 {
        return (best - mean).max(0.0);
    }
    let z = (best - mean) / std;
    (best - mean) * std_normal_cdf(z) + std * std_normal_pdf(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_smooth_data_and_is_uncertain_away_from_it() {
        let f = |x: f64| (6.0 * x).sin();
        let points: Vec<Point> = (0..12)
            .map(|i| {
                let x = i as f64 / 11.0;
                Point {
                    x: vec![x],
                    y: f(x),
                    noise: 0.0,
                }
            })
            .collect();
        let gp = Gp::fit(&points).expect("fits");
        for q in [0.05, 0.31, 0.62, 0.97] {
            let (m, s) = gp.predict(&[q]);
            assert!((m - f(q)).abs() < 0.05, "at {q}: {m} vs {}", f(q));
            assert!(s < 0.1);
        }
        // Far outside the data, the posterior goes back to the prior.
        let (_, s) = gp.predict(&[3.0]);
        assert!(s > 0.5 * gp.y_std(), "{s}");
    }

    #[test]
    fn noise_lets_the_fit_pass_between_disagreeing_points() {
        let pts = vec![
            Point {
                x: vec![0.5],
                y: 0.0,
                noise: 1.0,
            },
            Point {
                x: vec![0.5],
                y: 2.0,
                noise: 1.0,
            },
            Point {
                x: vec![0.0],
                y: 1.0,
                noise: 1.0,
            },
        ];
        let gp = Gp::fit(&pts).expect("duplicates with noise fit");
        let (m, _) = gp.predict(&[0.5]);
        assert!((0.5..1.5).contains(&m), "{m}");
    }

    #[test]
    fn expected_improvement_matches_its_closed_form() {
        // z = 1: (1)(Φ(1)) + 1·φ(1) = 0.841345 + 0.241971 = 1.083315.
        assert!((expected_improvement(0.0, 1.0, 1.0) - 1.083315).abs() < 1e-5);
        assert_eq!(expected_improvement(2.0, 0.0, 1.0), 0.0);
        assert!(expected_improvement(0.0, 1.0, -5.0) < 1e-5);
    }
}
