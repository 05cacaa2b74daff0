//! `liandan results`: one row per trial aggregated over its seeds, ranked by
//! the sweep's goal, with what a one-seed report would hide: the interval,
//! whether the winner is within seed noise, Welch's one-sided p-value of the
//! winner against each trial, the variance shares, and each trial's seed luck.

use crate::output::{num, num_cell, Listing};
use liandan_common::stats::{self, Summary};
use liandan_proto::v1 as pb;
use serde_json::{json, Value};

/// One trial's aggregate.
pub struct TrialRow {
    pub trial_id: String,
    pub params: Value,
    pub values: Vec<(i64, f64)>,
    pub summary: Option<Summary>,
    /// How far the best seed sits above the mean, in the goal's direction.
    pub seed_luck: Option<f64>,
    /// Welch's one-sided p-value that the top trial is not better than this one.
    pub p_vs_top: Option<f64>,
}

/// The whole analysis.
pub struct Analysis {
    pub metric: String,
    pub goal: String,
    pub rows: Vec<TrialRow>,
    pub within_noise: Option<bool>,
    pub shares: Option<stats::VarianceShares>,
    pub jobs_without_value: u64,
    /// Trials in the sweep (rows may show fewer: `--limit`).
    pub trials_total: u64,
}

/// Builds the table's rows from the coordinator's ranking (best first, then
/// trials without a value): each trial's summary over its seeds, its seed
/// luck, Welch's p-value against the top trial, and whether the top two are
/// within seed noise.
pub fn analyze(r: &pb::GetTrialResultsResponse) -> Analysis {
    let sweep = r.sweep.clone().unwrap_or_default();
    let maximize = sweep.metric_goal == "maximize";
    let mut rows: Vec<TrialRow> = r
        .trials
        .iter()
        .map(|t| {
            let values: Vec<(i64, f64)> = t.values.iter().map(|v| (v.seed, v.value)).collect();
            let xs: Vec<f64> = values.iter().map(|v| v.1).collect();
            let summary = stats::summarize(&xs);
            let seed_luck = summary.as_ref().map(|s| {
                if maximize {
                    s.max - s.mean
                } else {
                    s.mean - s.min
                }
            });
            TrialRow {
                trial_id: t.trial_id.clone(),
                params: serde_json::from_str(&t.params_json).unwrap_or(Value::Null),
                values,
                summary,
                seed_luck,
                p_vs_top: None,
            }
        })
        .collect();
    // A trial without a value is never ranked among those with one, nor crowned.
    rows.sort_by_key(|r| r.values.is_empty());
    let top: Vec<f64> = rows
        .first()
        .map(|r| r.values.iter().map(|v| v.1).collect())
        .unwrap_or_default();
    for r in rows.iter_mut().skip(1) {
        let xs: Vec<f64> = r.values.iter().map(|v| v.1).collect();
        let w = if maximize {
            stats::welch(&top, &xs)
        } else {
            stats::welch(&xs, &top)
        };
        r.p_vs_top = w.map(|w| w.p_greater);
    }
    let within_noise = match (
        rows.first().and_then(|r| r.summary.as_ref()),
        rows.get(1).and_then(|r| r.summary.as_ref()),
    ) {
        (Some(a), Some(b)) => match (a.ci95, b.ci95) {
            (Some((alo, ahi)), Some((blo, bhi))) => Some(alo <= bhi && blo <= ahi),
            _ => None,
        },
        _ => None,
    };
    let shares = match (r.share_hyperparameters, r.share_seeds) {
        (Some(hyperparameters), Some(seeds)) => Some(stats::VarianceShares {
            hyperparameters,
            seeds,
        }),
        _ => None,
    };
    Analysis {
        metric: sweep.metric_name,
        goal: sweep.metric_goal,
        rows,
        within_noise,
        shares,
        jobs_without_value: r.jobs_without_value,
        trials_total: r.trials_total,
    }
}

/// The parameters that differ between trials (constants say nothing in a ranking).
fn params_short(v: &Value, varying: &std::collections::BTreeSet<String>) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| varying.is_empty() || varying.contains(*k))
            .map(|(k, v)| format!("{k}={}", liandan_common::sweep::command::format_value(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn varying_keys(rows: &[TrialRow]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    if let Some(Value::Object(first)) = rows.first().map(|r| &r.params) {
        for (k, v) in first {
            if rows.iter().any(|r| r.params.get(k) != Some(v)) {
                out.insert(k.clone());
            }
        }
    }
    out
}

/// The ranked trials; `exact` (CSV) gives numbers that read back exactly and
/// empty cells for missing values.
pub fn listing(a: &Analysis, exact: bool) -> Listing {
    let n = |x: Option<f64>| num_cell(x, exact);
    let varying = varying_keys(&a.rows);
    let columns = vec![
        "rank",
        "trial",
        "n",
        "mean",
        "std",
        "ci95",
        "median",
        "iqm",
        "min",
        "max",
        "seed_luck",
        "p_vs_top",
        "params",
    ];
    let rows = a
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = r.summary.as_ref();
            vec![
                if !r.values.is_empty() {
                    (i + 1).to_string()
                } else if exact {
                    String::new()
                } else {
                    "-".into()
                },
                r.trial_id.clone(),
                s.map(|s| s.n.to_string()).unwrap_or_else(|| "0".into()),
                n(s.map(|s| s.mean)),
                n(s.and_then(|s| s.std)),
                s.and_then(|s| s.ci95)
                    .map(|(lo, hi)| {
                        if exact {
                            format!("[{lo}, {hi}]")
                        } else {
                            format!("[{}, {}]", num(lo), num(hi))
                        }
                    })
                    .unwrap_or_else(|| {
                        if exact {
                            String::new()
                        } else if s.is_some() {
                            "n=1: none".into()
                        } else {
                            "-".into()
                        }
                    }),
                n(s.map(|s| s.median)),
                n(s.map(|s| s.iqm)),
                n(s.map(|s| s.min)),
                n(s.map(|s| s.max)),
                n(r.seed_luck),
                if i == 0 && !r.values.is_empty() {
                    "top".into()
                } else if r.values.is_empty() {
                    "no value".into()
                } else {
                    match (r.p_vs_top, exact) {
                        (Some(p), true) => p.to_string(),
                        (Some(p), false) => format!("{p:.3}"),
                        (None, true) => String::new(),
                        (None, false) => "-".into(),
                    }
                },
                params_short(&r.params, &varying),
            ]
        })
        .collect();
    let json = json!({
        "metric": a.metric,
        "goal": a.goal,
        "within_seed_noise": a.within_noise,
        "variance_share": a.shares.as_ref().map(|s| json!({"hyperparameters": s.hyperparameters, "seeds": s.seeds})),
        "test": "welch_one_sided",
        "jobs_without_value": a.jobs_without_value,
        "trials_total": a.trials_total,
        "trials": a.rows.iter().enumerate().map(|(i, r)| json!({
            "rank": (!r.values.is_empty()).then_some(i + 1),
            "trial_id": r.trial_id,
            "params": r.params,
            "n": r.summary.as_ref().map(|s| s.n).unwrap_or(0),
            "mean": r.summary.as_ref().map(|s| s.mean),
            "std": r.summary.as_ref().and_then(|s| s.std),
            "ci95": r.summary.as_ref().and_then(|s| s.ci95).map(|(a, b)| vec![a, b]),
            "median": r.summary.as_ref().map(|s| s.median),
            "iqm": r.summary.as_ref().map(|s| s.iqm),
            "min": r.summary.as_ref().map(|s| s.min),
            "max": r.summary.as_ref().map(|s| s.max),
            "seed_luck": r.seed_luck,
            "p_vs_top": r.p_vs_top,
            "seeds": r.values.iter().map(|(s, v)| json!({"seed": s, "value": v})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    Listing {
        columns,
        rows,
        json,
        params: a.rows.iter().map(|r| r.params.clone()).collect(),
    }
}

/// The lines printed under the table.
pub fn footer(a: &Analysis) -> String {
    let mut out = String::new();
    if a.metric.is_empty() {
        out.push_str("note: the sweep names no metric (metric.name); there is nothing to rank\n");
        return out;
    }
    if a.rows.iter().all(|r| r.values.is_empty()) {
        out.push_str(&format!(
            "warning: no trial has a value for the metric {:?}: nothing is ranked. Did the jobs report it? liandan.metric_pattern needs a group named {:?}, or the job writes it to LIANDAN_METRICS_FILE (see `liandan describe JOB`)\n",
            a.metric, a.metric
        ));
        return out;
    }
    out.push_str(&format!(
        "metric: {} ({}); per trial over seeds; ci95 = Student-t 95% interval of the mean\n",
        a.metric, a.goal
    ));
    match a.within_noise {
        Some(true) => out.push_str("top vs runner-up: WITHIN SEED NOISE (their 95% intervals overlap); more seeds are needed to call a winner\n"),
        Some(false) => out.push_str("top vs runner-up: separated (their 95% intervals do not overlap)\n"),
        None => out.push_str("top vs runner-up: cannot tell (needs at least two seeds in each)\n"),
    }
    out.push_str("p_vs_top: Welch's t-test, one-sided p-value that the top trial is not better than this one\n");
    if let Some(s) = &a.shares {
        out.push_str(&format!("variance explained: hyperparameters {:.1}%, seeds {:.1}% (one-way decomposition over trials)\n", 100.0 * s.hyperparameters, 100.0 * s.seeds));
    }
    out.push_str("seed_luck: how far the best seed sits beyond its trial's mean: what a one-seed report would overstate\n");
    if (a.rows.len() as u64) < a.trials_total {
        out.push_str(&format!(
            "showing {} of {} trials (--limit N shows more, --limit 0 all)\n",
            a.rows.len(),
            a.trials_total
        ));
    }
    if a.jobs_without_value > 0 {
        out.push_str(&format!(
            "{} job(s) have no value yet (not finished, failed, or never reported the metric)\n",
            a.jobs_without_value
        ));
    }
    out
}

use crate::client::*;
use crate::complete;
use crate::output::{render, Format};
use clap_complete::engine::ArgValueCompleter;
use liandan_common::exit;

/// The arguments of `liandan results`.
#[derive(clap::Args, Debug)]
pub struct ResultsArgs {
    #[arg(add = ArgValueCompleter::new(complete::sweep))]
    pub sweep: String,
    /// Use the best value over training instead of the final one.
    #[arg(long)]
    pub best: bool,
    /// Show the best N trials (0: all); the coordinator ranks every trial.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `liandan results`.
pub async fn results(url: &Target, args: ResultsArgs) -> R<i32> {
    let ResultsArgs {
        sweep,
        best,
        limit,
        output,
    } = args;
    let mut c = connect(url).await?;
    let r = fetch_trial_results(&mut c, &sweep, best, limit).await?;
    let a = analyze(&r);
    print(render(&listing(&a, output == Format::Csv), output));
    if matches!(output, Format::Table | Format::Wide) {
        print(footer(&a));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{render, Format};

    fn snapshot(name: &str, actual: &str) {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "no snapshot {}; run with UPDATE_SNAPSHOTS=1",
                path.display()
            )
        });
        assert_eq!(actual, expected, "output differs from {}", path.display());
    }

    /// What the coordinator sends for three trials of three seeds (ranked),
    /// one failed job without a value, and a fourth trial with no value yet.
    fn response() -> pb::GetTrialResultsResponse {
        let trials = [
            ("tr-aaa", r#"{"lr":0.1,"depth":2}"#, vec![0.90, 0.92, 0.91]),
            ("tr-bbb", r#"{"lr":0.01,"depth":2}"#, vec![0.93, 0.85, 0.89]),
            (
                "tr-ccc",
                r#"{"lr":0.001,"depth":2}"#,
                vec![0.70, 0.72, 0.71],
            ),
            ("tr-ddd", r#"{"lr":0.0001,"depth":2}"#, vec![]),
        ];
        let sweep = pb::Sweep {
            id: "sw-test".into(),
            name: "t".into(),
            metric_name: "val_accuracy".into(),
            metric_goal: "maximize".into(),
            ..Default::default()
        };
        let groups: Vec<Vec<f64>> = trials.iter().map(|t| t.2.clone()).collect();
        let shares = stats::variance_shares(&groups).unwrap();
        pb::GetTrialResultsResponse {
            sweep: Some(sweep),
            trials: trials
                .iter()
                .map(|(t, p, vals)| pb::TrialResult {
                    trial_id: t.to_string(),
                    params_json: p.to_string(),
                    values: vals
                        .iter()
                        .enumerate()
                        .map(|(seed, v)| pb::SeedValue {
                            seed: seed as i64,
                            value: *v,
                        })
                        .collect(),
                })
                .collect(),
            trials_total: 4,
            trials_ranked: 3,
            jobs_without_value: 4,
            share_hyperparameters: Some(shares.hyperparameters),
            share_seeds: Some(shares.seeds),
        }
    }

    #[test]
    fn statistics_over_seeds_in_the_coordinators_order() {
        let a = analyze(&response());
        let order: Vec<&str> = a.rows.iter().map(|r| r.trial_id.as_str()).collect();
        assert_eq!(order, ["tr-aaa", "tr-bbb", "tr-ccc", "tr-ddd"]);
        assert_eq!(a.jobs_without_value, 4);
        assert_eq!(a.within_noise, Some(true), "0.91±0.01 vs 0.89±0.04 overlap");
        // Seed luck: best seed minus mean, for maximize.
        assert!((a.rows[1].seed_luck.unwrap() - (0.93 - 0.89)).abs() < 1e-12);
        assert!(
            a.rows[2].p_vs_top.unwrap() < 0.001,
            "tr-ccc is clearly worse"
        );
        assert!(a.rows[3].summary.is_none() && a.rows[3].p_vs_top.is_none());
        assert!(a.shares.unwrap().hyperparameters > 0.9);
    }

    #[test]
    fn a_limited_listing_says_how_many_trials_it_leaves_out() {
        let mut r = response();
        r.trials.truncate(2);
        r.trials_total = 100_000;
        let a = analyze(&r);
        assert!(
            footer(&a).contains("showing 2 of 100000 trials"),
            "{}",
            footer(&a)
        );
        assert!(!footer(&analyze(&response())).contains("showing"));
    }

    #[test]
    fn table_json_and_csv_snapshots() {
        let a = analyze(&response());
        let l = listing(&a, false);
        snapshot(
            "results-table.txt",
            &format!("{}{}", render(&l, Format::Table), footer(&a)),
        );
        snapshot("results-json.txt", &render(&l, Format::Json));
        snapshot("results-csv.txt", &render(&listing(&a, true), Format::Csv));
    }

    #[test]
    fn one_seed_says_there_is_no_interval() {
        let mut r = response();
        for t in &mut r.trials {
            t.values.retain(|v| v.seed == 0);
        }
        let a = analyze(&r);
        let text = format!(
            "{}{}",
            render(&listing(&a, false), Format::Table),
            footer(&a)
        );
        assert!(text.contains("n=1: none"), "{text}");
        assert!(
            text.contains("cannot tell (needs at least two seeds in each)"),
            "{text}"
        );
    }
}
