//! The search space as the models see it: every searchable leaf parameter is
//! one coordinate in [0, 1], through its distribution's cumulative distribution
//! function (as W&B's bayes search normalises). A uniform coordinate becomes a
//! uniform draw of the parameter, so random proposals in the unit cube sample
//! the declared distributions, and a model's proposal decodes through the
//! inverse CDF, then W&B's quantisation and integer rounding.

use liandan_common::sweep::expand::{leaf_params, pick_weighted, quantized, set_param_path};
use liandan_common::sweep::Param;
use serde_json::{Map, Number, Value};
use statrs::distribution::{Beta, ContinuousCDF, Normal};

/// Keeps coordinates off 0 and 1, where inverse CDFs of unbounded laws diverge.
const EDGE: f64 = 1e-6;

/// How a model should treat a coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Continuous,
    /// A categorical with this many values (TPE models it with category weights).
    Categorical(usize),
}

/// One searchable coordinate.
#[derive(Clone, Debug)]
pub struct Dim {
    pub path: Vec<String>,
    pub param: Param,
    pub kind: Kind,
}

/// The space of a sweep's parameters.
#[derive(Clone, Debug)]
pub struct Space {
    pub dims: Vec<Dim>,
    /// Every leaf in declaration order: a dimension, or a constant set on every point.
    slots: Vec<Slot>,
}

#[derive(Clone, Debug)]
enum Slot {
    Dim(usize),
    Const(Vec<String>, Value),
}

fn std_normal() -> Normal {
    // Unit normal: the parameters are valid constants.
    Normal::standard()
}

fn float(x: f64) -> Value {
    Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn quantize(x: f64, q: f64) -> f64 {
    (x / q).round_ties_even() * q
}

fn lerp_inv(x: f64, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        (x - lo) / (hi - lo)
    } else {
        0.5
    }
}

fn category_index(values: &[Value], v: &Value) -> Option<usize> {
    values.iter().position(|c| c == v)
}

impl Space {
    pub fn new(parameters: &[(String, Param)]) -> Space {
        let mut dims = Vec::new();
        let mut slots = Vec::new();
        for (path, param) in leaf_params(parameters) {
            if !matches!(param, Param::Constant { .. }) {
                slots.push(Slot::Dim(dims.len()));
            }
            match &param {
                Param::Constant { value } => slots.push(Slot::Const(path, value.clone())),
                Param::Categorical { values } | Param::CategoricalWProbabilities { values, .. } => {
                    let n = values.len();
                    dims.push(Dim {
                        path,
                        param,
                        kind: Kind::Categorical(n),
                    })
                }
                _ => dims.push(Dim {
                    path,
                    param,
                    kind: Kind::Continuous,
                }),
            }
        }
        Space { dims, slots }
    }

    pub fn len(&self) -> usize {
        self.dims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }

    /// The coordinates of a params object; `None` when a value is missing or
    /// outside its distribution's support.
    pub fn encode(&self, params: &Value) -> Option<Vec<f64>> {
        self.dims
            .iter()
            .map(|d| {
                let mut v = params;
                for k in &d.path {
                    v = v.get(k)?;
                }
                encode_one(&d.param, v).map(|u| u.clamp(0.0, 1.0))
            })
            .collect()
    }

    /// The params object at coordinates `u` (one per dimension), keys in
    /// declaration order as grid and random trials have them.
    pub fn decode(&self, u: &[f64]) -> Value {
        let mut obj = Map::new();
        for slot in &self.slots {
            match slot {
                Slot::Const(path, v) => set_param_path(&mut obj, path, v.clone()),
                Slot::Dim(i) => {
                    let d = &self.dims[*i];
                    let x = u.get(*i).copied().unwrap_or(0.5).clamp(0.0, 1.0);
                    set_param_path(&mut obj, &d.path, decode_one(&d.param, x));
                }
            }
        }
        Value::Object(obj)
    }
}

fn encode_one(p: &Param, v: &Value) -> Option<f64> {
    let x = v.as_f64();
    Some(match p {
        Param::Constant { .. } | Param::Nested { .. } => 0.5,
        Param::Categorical { values } => {
            let i = category_index(values, v)?;
            (i as f64 + 0.5) / values.len() as f64
        }
        Param::CategoricalWProbabilities {
            values,
            probabilities,
        } => {
            let i = category_index(values, v)?;
            let lo: f64 = probabilities[..i].iter().sum();
            lo + probabilities[i] / 2.0
        }
        Param::IntUniform { min, max } => {
            let span = (*max - *min) as f64 + 1.0;
            (x? - *min as f64 + 0.5) / span
        }
        Param::Uniform { min, max } | Param::QUniform { min, max, .. } => lerp_inv(x?, *min, *max),
        Param::LogUniform { min, max } | Param::QLogUniform { min, max, .. } => {
            lerp_inv(x?.ln(), *min, *max)
        }
        Param::LogUniformValues { min, max } | Param::QLogUniformValues { min, max, .. } => {
            lerp_inv(x?.ln(), min.ln(), max.ln())
        }
        Param::InvLogUniform { min, max } => lerp_inv(-x?.ln(), *min, *max),
        Param::InvLogUniformValues { min, max } => {
            lerp_inv(-x?.ln(), (1.0 / max).ln(), (1.0 / min).ln())
        }
        Param::Normal { mu, sigma } | Param::QNormal { mu, sigma, .. } => {
            std_normal().cdf((x? - mu) / sigma)
        }
        Param::LogNormal { mu, sigma } | Param::QLogNormal { mu, sigma, .. } => {
            std_normal().cdf((x?.ln() - mu) / sigma)
        }
        Param::Beta { a, b } | Param::QBeta { a, b, .. } => Beta::new(*a, *b).ok()?.cdf(x?),
    })
    .filter(|u| u.is_finite())
}

fn decode_one(p: &Param, u: f64) -> Value {
    let inner = u.clamp(EDGE, 1.0 - EDGE);
    match p {
        Param::Constant { value } => value.clone(),
        Param::Nested { .. } => Value::Null,
        Param::Categorical { values } => {
            let i = ((u * values.len() as f64) as usize).min(values.len() - 1);
            values[i].clone()
        }
        Param::CategoricalWProbabilities {
            values,
            probabilities,
        } => pick_weighted(values, probabilities, u),
        Param::IntUniform { min, max } => {
            let span = (*max - *min) as f64 + 1.0;
            let k = ((u * span) as i64).min(*max - *min);
            Value::Number((min + k).into())
        }
        Param::Uniform { min, max } => float(min + u * (max - min)),
        Param::QUniform {
            min,
            max,
            q,
            integer,
            ..
        } => {
            let x = quantize(min + u * (max - min), *q);
            if *integer {
                Value::Number((x.round() as i64).into())
            } else {
                float(x)
            }
        }
        Param::LogUniform { min, max } => float((min + u * (max - min)).exp()),
        Param::QLogUniform {
            min,
            max,
            q,
            integer,
        } => quantized((min + u * (max - min)).exp(), *q, *integer),
        Param::LogUniformValues { min, max } => float((min.ln() + u * (max.ln() - min.ln())).exp()),
        Param::QLogUniformValues {
            min,
            max,
            q,
            integer,
        } => quantized((min.ln() + u * (max.ln() - min.ln())).exp(), *q, *integer),
        Param::InvLogUniform { min, max } => float((-(min + u * (max - min))).exp()),
        Param::InvLogUniformValues { min, max } => {
            let (lo, hi) = ((1.0 / max).ln(), (1.0 / min).ln());
            float((-(lo + u * (hi - lo))).exp())
        }
        Param::Normal { mu, sigma } => float(mu + sigma * std_normal().inverse_cdf(inner)),
        Param::QNormal {
            mu,
            sigma,
            q,
            integer,
        } => quantized(mu + sigma * std_normal().inverse_cdf(inner), *q, *integer),
        Param::LogNormal { mu, sigma } => {
            float((mu + sigma * std_normal().inverse_cdf(inner)).exp())
        }
        Param::QLogNormal {
            mu,
            sigma,
            q,
            integer,
        } => quantized(
            (mu + sigma * std_normal().inverse_cdf(inner)).exp(),
            *q,
            *integer,
        ),
        Param::Beta { a, b } => match Beta::new(*a, *b) {
            Ok(d) => float(d.inverse_cdf(inner)),
            Err(_) => Value::Null,
        },
        Param::QBeta { a, b, q, integer } => match Beta::new(*a, *b) {
            Ok(d) => quantized(d.inverse_cdf(inner), *q, *integer),
            Err(_) => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liandan_common::sweep::{parse, Format};

    fn space(params_yaml: &str) -> Space {
        let text = format!(
            "method: bayes\nprogram: t.py\nmetric: {{name: loss}}\nparameters:\n{params_yaml}"
        );
        let spec = parse(&text, Format::Yaml).expect("spec").spec;
        Space::new(&spec.parameters)
    }

    fn close(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                (x - y).abs() <= 1e-8 * x.abs().max(y.abs()).max(1.0)
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((k1, v1), (k2, v2))| k1 == k2 && close(v1, v2))
            }
            _ => a == b,
        }
    }

    #[test]
    fn every_distribution_round_trips_through_the_unit_cube() {
        let s = space(concat!(
            "  a: {min: 0.5, max: 2.5}\n",
            "  b: {min: 1, max: 6}\n",
            "  c: {values: [x, y, z]}\n",
            "  d: {distribution: log_uniform_values, min: 0.0001, max: 0.1}\n",
            "  e: {distribution: normal, mu: 3.0, sigma: 2.0}\n",
            "  f: {distribution: q_uniform, min: 0, max: 10, q: 2}\n",
            "  g: {distribution: beta, a: 2.0, b: 5.0}\n",
            "  h: {distribution: inv_log_uniform_values, min: 0.01, max: 1.0}\n",
            "  k: {distribution: log_normal, mu: 0.0, sigma: 1.0}\n",
            "  n: {parameters: {inner: {values: [1, 2]}, fixed: {value: 7}}}\n",
        ));
        assert_eq!(s.len(), 10);
        for &u in &[0.03, 0.26, 0.5, 0.77, 0.98] {
            let point = vec![u; s.len()];
            let v = s.decode(&point);
            assert_eq!(v["n"]["fixed"], 7, "{v}");
            let back = s.encode(&v).expect("encodes");
            // Decoding the re-encoded point gives the same parameters (quantised
            // and categorical coordinates land inside the same cell), up to the
            // rounding of the CDF and its inverse.
            assert!(
                close(&s.decode(&back), &v),
                "u = {u}: {} vs {v}",
                s.decode(&back)
            );
            for (d, (a, b)) in s.dims.iter().zip(point.iter().zip(&back)) {
                if d.kind == Kind::Continuous
                    && !matches!(d.param, Param::IntUniform { .. } | Param::QUniform { .. })
                {
                    assert!((a - b).abs() < 1e-6, "{:?}: {a} vs {b}", d.path);
                }
            }
        }
        let lo = s.decode(&vec![0.0; s.len()]);
        assert_eq!(lo["a"], 0.5);
        assert_eq!(lo["b"], 1);
        assert_eq!(lo["c"], "x");
        let hi = s.decode(&vec![1.0; s.len()]);
        assert_eq!(hi["b"], 6);
        assert_eq!(hi["c"], "z");
        assert!((hi["d"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn values_outside_the_space_do_not_encode() {
        let s = space("  c: {values: [x, y]}\n");
        assert!(s.encode(&serde_json::json!({"c": "w"})).is_none());
        assert!(s.encode(&serde_json::json!({})).is_none());
    }
}
