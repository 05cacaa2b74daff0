//! The statistics behind `liandan results`: per-trial summaries over seeds
//! (Student-t intervals, median, interquartile mean), Welch's t-test between
//! trials, and the one-way decomposition of the metric's variance into the part
//! the hyperparameters explain and the part the seed explains.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// A summary of one trial's values over its seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); `None` for n = 1.
    pub std: Option<f64>,
    /// 95% Student-t confidence interval of the mean; `None` for n = 1.
    pub ci95: Option<(f64, f64)>,
    pub median: f64,
    /// Mean of the middle half (25% trimmed from each end, as scipy's trim_mean(x, 0.25)).
    pub iqm: f64,
    pub min: f64,
    pub max: f64,
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn sample_var(xs: &[f64]) -> f64 {
    let m = mean(xs);
    xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() as f64 - 1.0)
}

/// Two-sided Student-t quantile for a 95% interval.
pub fn t_quantile_975(df: f64) -> Option<f64> {
    StudentsT::new(0.0, 1.0, df)
        .ok()
        .map(|t| t.inverse_cdf(0.975))
}

/// Summarises values; `None` when there are none (non-finite values are dropped).
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut xs: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let m = mean(&xs);
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    let cut = n / 4;
    let iqm = mean(&xs[cut..n - cut]);
    let (std, ci95) = if n >= 2 {
        let s = sample_var(&xs).sqrt();
        let half = t_quantile_975((n - 1) as f64).map(|t| t * s / (n as f64).sqrt());
        (Some(s), half.map(|h| (m - h, m + h)))
    } else {
        (None, None)
    };
    Some(Summary {
        n,
        mean: m,
        std,
        ci95,
        median,
        iqm,
        min: xs[0],
        max: xs[n - 1],
    })
}

/// Welch's unequal-variance t-test of mean(a) against mean(b).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Welch {
    pub t: f64,
    pub df: f64,
    /// Two-sided p-value.
    pub p_two_sided: f64,
    /// One-sided p-value for the alternative mean(a) > mean(b).
    pub p_greater: f64,
}

/// Welch's test; `None` when either side has fewer than two values or both have
/// zero variance (the test is undefined there).
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (va, vb) = (sample_var(a) / na, sample_var(b) / nb);
    let se2 = va + vb;
    if se2 <= 0.0 {
        return None;
    }
    let t = (mean(a) - mean(b)) / se2.sqrt();
    let df = se2.powi(2) / (va.powi(2) / (na - 1.0) + vb.powi(2) / (nb - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let p_greater = 1.0 - dist.cdf(t);
    let p_two_sided = 2.0 * (1.0 - dist.cdf(t.abs()));
    Some(Welch {
        t,
        df,
        p_two_sided,
        p_greater,
    })
}

/// How the metric's total variance splits between trials (hyperparameters) and
/// seeds within a trial: one-way ANOVA sums of squares over groups.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VarianceShares {
    /// SS_between / SS_total: the share the hyperparameters explain.
    pub hyperparameters: f64,
    /// SS_within / SS_total: the share the seed explains.
    pub seeds: f64,
}

/// One group's size, mean and sum of squared deviations from its mean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    pub n: usize,
    pub mean: f64,
    pub ss: f64,
}

impl Moments {
    /// The moments of `xs` (n = 0 for an empty slice).
    pub fn of(xs: impl Iterator<Item = f64> + Clone) -> Moments {
        let (n, sum) = xs.clone().fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
        if n == 0 {
            return Moments {
                n: 0,
                mean: 0.0,
                ss: 0.0,
            };
        }
        let mean = sum / n as f64;
        let ss = xs.map(|x| (x - mean).powi(2)).sum();
        Moments { n, mean, ss }
    }
}

/// `None` when there are no values or the total variance is zero.
pub fn variance_shares(groups: &[Vec<f64>]) -> Option<VarianceShares> {
    let moments: Vec<Moments> = groups
        .iter()
        .map(|g| Moments::of(g.iter().copied()))
        .collect();
    variance_shares_of(&moments)
}

/// [`variance_shares`] from each group's moments (what a server that keeps
/// per-group results computes without gathering every value).
pub fn variance_shares_of(groups: &[Moments]) -> Option<VarianceShares> {
    let n: usize = groups.iter().map(|g| g.n).sum();
    if n < 2 {
        return None;
    }
    let grand = groups.iter().map(|g| g.n as f64 * g.mean).sum::<f64>() / n as f64;
    let within: f64 = groups.iter().map(|g| g.ss).sum();
    let between: f64 = groups
        .iter()
        .map(|g| g.n as f64 * (g.mean - grand).powi(2))
        .sum();
    let total = within + between;
    if total <= 0.0 {
        return None;
    }
    Some(VarianceShares {
        hyperparameters: between / total,
        seeds: within / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    // Reference values computed with SciPy 1.17.1 / NumPy 2.4.6 (Python 3.11):
    //   x = [0.81, 0.84, 0.79, 0.88, 0.83]
    //   scipy.stats.t.interval(0.95, 4, loc=np.mean(x), scale=scipy.stats.sem(x))
    //   scipy.stats.trim_mean(x, 0.25); np.median(x); np.std(x, ddof=1)
    #[test]
    fn summary_matches_scipy() {
        let s = summarize(&[0.81, 0.84, 0.79, 0.88, 0.83]).unwrap();
        assert_eq!(s.n, 5);
        assert!(close(s.mean, REF_MEAN, 1e-12));
        assert!(close(s.std.unwrap(), REF_STD, 1e-9), "{:?}", s.std);
        let (lo, hi) = s.ci95.unwrap();
        assert!(
            close(lo, REF_CI.0, 1e-9) && close(hi, REF_CI.1, 1e-9),
            "{lo} {hi}"
        );
        assert!(close(s.iqm, REF_IQM, 1e-12), "{}", s.iqm);
        assert_eq!(s.median, 0.83);
        assert_eq!((s.min, s.max), (0.79, 0.88));
    }

    const REF_MEAN: f64 = 0.8299999999999998;
    const REF_STD: f64 = 0.03391164991562632;
    const REF_CI: (f64, f64) = (0.7878931251800769, 0.8721068748199228);
    const REF_IQM: f64 = 0.8266666666666667;

    #[test]
    fn n_equals_one_has_no_interval_and_zero_variance_is_handled() {
        let s = summarize(&[0.5]).unwrap();
        assert_eq!((s.std, s.ci95), (None, None));
        let z = summarize(&[0.5, 0.5, 0.5]).unwrap();
        assert_eq!(z.std, Some(0.0));
        assert_eq!(z.ci95, Some((0.5, 0.5)));
        assert!(welch(&[1.0, 1.0], &[1.0, 1.0]).is_none());
        assert!(variance_shares(&[vec![1.0, 1.0], vec![1.0]]).is_none());
        assert!(summarize(&[]).is_none());
    }

    // scipy.stats.ttest_ind(a, b, equal_var=False) and alternative="greater".
    #[test]
    fn welch_matches_scipy() {
        let a = [0.81, 0.84, 0.79, 0.88, 0.83];
        let b = [0.78, 0.80, 0.75, 0.79];
        let w = welch(&a, &b).unwrap();
        assert!(close(w.t, REF_WELCH.0, 1e-9), "{w:?}");
        assert!(close(w.df, REF_WELCH.1, 1e-9), "{w:?}");
        assert!(close(w.p_two_sided, REF_WELCH.2, 1e-7), "{w:?}");
        assert!(close(w.p_greater, REF_WELCH.3, 1e-7), "{w:?}");
    }

    const REF_WELCH: (f64, f64, f64, f64) = (
        2.685430777647864,
        6.765990720950845,
        0.03230960907587662,
        0.01615480453793831,
    );

    // One-way ANOVA sums of squares computed by hand in NumPy:
    //   groups = [[1,2,3],[4,5,6],[10,11]]; ss_between/ss_total
    #[test]
    fn variance_shares_match_anova() {
        let v =
            variance_shares(&[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0], vec![10.0, 11.0]]).unwrap();
        assert!(close(v.hyperparameters, REF_SHARE, 1e-12), "{v:?}");
        assert!(close(v.hyperparameters + v.seeds, 1.0, 1e-12));
    }

    const REF_SHARE: f64 = 0.9508196721311475;
}
