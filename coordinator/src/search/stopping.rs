//! Early stopping rules over metric histories (one value per reported metric
//! record, lower is better; the caller negates maximised metrics). A history
//! belongs to a trial: with several seeds it is the seeds' combined value at
//! each index, so a trial is compared on its seeds together.
//!
//! - Hyperband, with W&B's semantics: at each band b the threshold is the
//!   value at index b of every history longer than b (finished runs included),
//!   sorted, taken at position ⌊len/eta⌋; a running history is stopped when,
//!   at the largest band it has passed, its best value so far (or, `strict`,
//!   its value at that band) is above the threshold.
//! - ASHA (asynchronous successive halving): rungs at the same bands; when a
//!   history first reaches a rung, it continues only if its value there is
//!   among the best ⌊n/eta⌋ (at least the best one) of the n histories that
//!   have reached the rung so far, itself included.

/// Hyperband's threshold at `band`, from all histories.
pub fn hyperband_threshold<'a>(
    band: u64,
    eta: f64,
    histories: impl Iterator<Item = &'a [f64]>,
) -> f64 {
    let b = band as usize;
    let mut vals: Vec<f64> = histories.filter(|h| h.len() > b).map(|h| h[b]).collect();
    if vals.is_empty() {
        return f64::INFINITY;
    }
    vals.sort_by(f64::total_cmp);
    // W&B's index: int((1 / eta) * len).
    let i = (((1.0 / eta) * vals.len() as f64) as usize).min(vals.len() - 1);
    vals[i]
}

/// Whether Hyperband stops a running `history`, judged at the largest band it
/// has passed against the threshold there (computed only for that band);
/// with the band it was judged at.
pub fn hyperband_stops<'a>(
    bands: &[u64],
    eta: f64,
    strict: bool,
    history: &[f64],
    all: impl Iterator<Item = &'a [f64]>,
) -> Option<(u64, bool)> {
    let band = *bands
        .iter()
        .take_while(|b| (**b as usize) < history.len())
        .last()?;
    let threshold = hyperband_threshold(band, eta, all);
    let value = if strict {
        history[band as usize]
    } else {
        history.iter().copied().fold(f64::INFINITY, f64::min)
    };
    Some((band, value > threshold))
}

/// W&B's `hyperband_stop_runs`: the indices of running histories to stop.
pub fn hyperband_stop_runs(
    bands: &[u64],
    eta: f64,
    strict: bool,
    runs: &[(&[f64], bool)],
) -> Vec<usize> {
    runs.iter()
        .enumerate()
        .filter(|(_, (h, running))| {
            *running
                && hyperband_stops(bands, eta, strict, h, runs.iter().map(|(h, _)| *h))
                    .is_some_and(|(_, s)| s)
        })
        .map(|(i, _)| i)
        .collect()
}

/// ASHA's decision for a history reaching a rung with `value`, given the
/// values of the histories that reached it before. `true`: it continues.
pub fn asha_promotes(earlier: &[f64], value: f64, eta: f64) -> bool {
    let mut all: Vec<f64> = earlier.to_vec();
    all.push(value);
    all.sort_by(f64::total_cmp);
    let k = ((all.len() as f64 / eta) as usize).max(1);
    value <= all[k - 1]
}

#[cfg(test)]
mod tests {
    //! The Hyperband cases are W&B's own engine tests (sweeps'
    //! test_hyperband_stopping), rewritten: same configurations and histories,
    //! same expected decisions.
    use super::*;

    fn stop(bands: &[u64], eta: f64, runs: &[(&[f64], bool)]) -> Vec<usize> {
        hyperband_stop_runs(bands, eta, false, runs)
    }

    #[test]
    fn wandb_min_iter_bands() {
        // min_iter 3, eta 3 → bands 3, 9, 27, ...; a flat run is stopped, an improving one kept.
        let bands = [3, 9, 27, 81];
        let flat = [10.0; 4];
        let improving: Vec<f64> = (0..10).map(|i| 10.0 - i as f64).collect();
        assert_eq!(
            stop(&bands, 3.0, &[(&flat, true), (&improving, true)]),
            vec![0]
        );
        // Maximised accuracy, negated by the caller, is the same case.
        let flat_max = [-10.0; 4];
        let improving_max: Vec<f64> = (0..10).map(|i| -(10.0 + i as f64)).collect();
        assert_eq!(
            stop(&bands, 3.0, &[(&flat_max, true), (&improving_max, true)]),
            vec![0]
        );
    }

    #[test]
    fn wandb_max_iter_bands() {
        // max_iter 81, s 3, eta 3 → bands 3, 9, 27; max_iter 18, s 2 → 2, 6. Same two runs.
        let flat = [10.0; 4];
        let improving: Vec<f64> = (0..10).map(|i| 10.0 - i as f64).collect();
        assert_eq!(
            stop(&[3, 9, 27], 3.0, &[(&flat, true), (&improving, true)]),
            vec![0]
        );
        assert_eq!(
            stop(&[2, 6], 3.0, &[(&flat, true), (&improving, true)]),
            vec![0]
        );
    }

    #[test]
    fn wandb_single_run_is_never_stopped() {
        let improving: Vec<f64> = (0..10).map(|i| 10.0 - i as f64).collect();
        assert!(stop(&[2, 6], 3.0, &[(&improving, true)]).is_empty());
    }

    #[test]
    fn wandb_two_runs_band1_pass() {
        let a = [10.0, 10.0, 6.0];
        let b: Vec<f64> = (0..10).map(|i| 10.0 - i as f64).collect();
        assert!(stop(&[2, 6], 3.0, &[(&a, true), (&b, true)]).is_empty());
    }

    #[test]
    fn wandb_five_runs_band1_stop_two() {
        // max_iter 5, eta 2, s 2 → bands 1, 2. Finished runs set thresholds but are not stopped.
        let runs: [(&[f64], bool); 5] = [
            (&[10.0, 9.0], false),
            (&[10.0, 10.0], true),
            (&[10.0, 8.0, 8.0], true),
            (&[10.0, 7.0, 7.0], true),
            (&[10.0, 6.0, 6.0], false),
        ];
        assert_eq!(stop(&[1, 2], 2.0, &runs), vec![1, 2]);
        // The first run with no value at band 1 changes nothing.
        let mut runs2 = runs;
        runs2[0] = (&[10.0], false);
        assert_eq!(stop(&[1, 2], 2.0, &runs2), vec![1, 2]);
    }

    #[test]
    fn wandb_eta_3() {
        // max_iter 9, eta 3, s 2 → bands 1, 3; thresholds 7 and 4.
        let runs: [(&[f64], bool); 5] = [
            (&[10.0, 9.0], false),
            (&[10.0, 10.0], true),
            (&[10.0, 8.0, 8.0, 3.0], true),
            (&[10.0, 7.0, 7.0, 4.0], true),
            (&[10.0, 6.0, 6.0, 6.0], true),
        ];
        let th: Vec<f64> = [1, 3]
            .iter()
            .map(|b| hyperband_threshold(*b, 3.0, runs.iter().map(|(h, _)| *h)))
            .collect();
        assert_eq!(th, vec![7.0, 4.0]);
        assert_eq!(stop(&[1, 3], 3.0, &runs), vec![1, 4]);
    }

    #[test]
    fn wandb_nan_free_histories_only() {
        // W&B drops invalid values before deciding; callers pass finite values only,
        // so a run whose later values were NaN has a history of one value and no band.
        let c = [19.69];
        let d = [6.2, 6.05, 5.5, 5.1];
        assert!(stop(&[1, 3], 3.0, &[(&c, true), (&d, false)]).is_empty());
    }

    #[test]
    fn strict_judges_the_value_at_the_band_not_the_best_so_far() {
        // Band 1 threshold (eta 2) is 8; the run dipped to 5 before the band but is 9 at it.
        let runs: [(&[f64], bool); 3] = [
            (&[5.0, 9.0], true),
            (&[10.0, 8.0], false),
            (&[10.0, 7.0], false),
        ];
        assert!(hyperband_stop_runs(&[1], 2.0, false, &runs).is_empty());
        assert_eq!(hyperband_stop_runs(&[1], 2.0, true, &runs), vec![0]);
    }

    #[test]
    fn asha_promotes_the_top_fraction_at_each_rung() {
        // The first arrival at a rung is promoted (it is the best so far).
        assert!(asha_promotes(&[], 5.0, 3.0));
        // With fewer than eta arrivals, only the best one continues.
        assert!(!asha_promotes(&[4.0], 5.0, 3.0));
        assert!(asha_promotes(&[4.0], 3.0, 3.0));
        // With 6 arrivals and eta 3, the best 2 continue.
        let earlier = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(asha_promotes(&earlier, 1.5, 3.0));
        assert!(!asha_promotes(&earlier, 2.5, 3.0));
        // Ties with the cut continue.
        assert!(asha_promotes(&earlier, 2.0, 3.0));
    }
}
