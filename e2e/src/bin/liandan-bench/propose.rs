//! How long a proposal takes with many finished trials.

use super::*;

/// Time to propose the next trial of a `bayes` and a `tpe` sweep that has
/// `finished` finished trials (and 8 running), over a mixed space: two
/// continuous parameters (one log-scaled), an integer and a categorical.
pub(crate) fn propose(finished: usize) -> Res<()> {
    use liandan_coordinator::search::sweep::SweepSearch;
    use liandan_coordinator::search::{TrialData, TrialStatus};
    let spec_text = "method: bayes\nprogram: t.py\nmetric: {name: loss, goal: minimize}\nparameters:\n  lr: {distribution: log_uniform_values, min: 0.00001, max: 0.1}\n  dropout: {min: 0.0, max: 0.5}\n  layers: {min: 1, max: 8}\n  opt: {values: [sgd, adam, adamw]}\nliandan: {seeds: 3}\n";
    for method in ["bayes", "tpe"] {
        let text = spec_text.replace("method: bayes", &format!("method: {method}"));
        let spec = liandan_common::sweep::parse(&text, liandan_common::sweep::Format::Yaml)
            .map_err(|e| e.to_string())?
            .spec;
        let search = SweepSearch::for_spec(&spec).ok_or("not adaptive")?;
        let mut rng = liandan_common::rng::Rng::keyed("bench.propose", &[finished as u64]);
        let data: Vec<TrialData> = (0..finished + 8)
            .map(|i| {
                let x: Vec<f64> = (0..search.space.len()).map(|_| rng.uniform01()).collect();
                let base: f64 = x.iter().map(|v| (v - 0.3) * (v - 0.3)).sum();
                let seeds: Vec<f64> = (0..3).map(|_| base + 0.01 * rng.normal01()).collect();
                TrialData {
                    x,
                    status: if i < finished {
                        TrialStatus::Finished
                    } else {
                        TrialStatus::Running
                    },
                    seed_best: seeds.clone(),
                    seed_latest: seeds,
                }
            })
            .collect();
        let mut times = Vec::new();
        for _ in 0..9 {
            let t = Instant::now();
            let p = search.propose(&data);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if p.get("lr").is_none() {
                return Err("proposal without lr".into());
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "propose {method}: {finished} finished trials, median {:.1} ms (min {:.1}, max {:.1}) over {} proposals",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            times.len()
        );
    }
    Ok(())
}
