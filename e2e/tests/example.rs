//! The example sweep (examples/demo.yaml, liandan-train jobs) on real workers:
//! `results -o json` agrees with every job's own metric records, and `plot`
//! draws it.

use liandan_e2e::{Cluster, Opts};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn the_example_sweep_runs_and_results_match_the_jobs_metrics() {
    assert!(
        liandan_e2e::has_bin("liandan-train"),
        "liandan-train is not built: run `make build` (it needs libtorch)"
    );
    let c = Cluster::start(2, Opts::default());
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.yaml");
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(180));
    assert_eq!(st["succeeded"], 12, "{st}");

    // Each job's final value is the last val_accuracy in its own metric records.
    let mut by_trial: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for j in c
        .cli_json(&["jobs", &sweep, "-o", "json"])
        .as_array()
        .unwrap()
    {
        let id = j["id"].as_str().unwrap();
        let m = c.cli_json(&["metrics", id, "-o", "json"]);
        let last = m
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find_map(|r| r["values"]["val_accuracy"].as_f64())
            .expect("val_accuracy reported");
        assert_eq!(j["final_metric"].as_f64(), Some(last), "{id}");
        by_trial
            .entry(j["trial_id"].as_str().unwrap().into())
            .or_default()
            .push((j["seed"].as_i64().unwrap(), last));
    }
    let results = c.cli_json(&["results", &sweep, "-o", "json"]);
    let trials = results["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    let mut last_mean = f64::INFINITY;
    for t in trials {
        let mut want = by_trial[t["trial_id"].as_str().unwrap()].clone();
        want.sort_by_key(|v| v.0);
        let got: Vec<(i64, f64)> = t["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["seed"].as_i64().unwrap(), s["value"].as_f64().unwrap()))
            .collect();
        assert_eq!(got, want);
        let mean = want.iter().map(|v| v.1).sum::<f64>() / want.len() as f64;
        assert!((t["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert!(mean <= last_mean, "ranked by mean, maximize");
        last_mean = mean;
        assert_eq!(t["n"], 3);
    }
    let shares = &results["variance_share"];
    assert!(
        (shares["hyperparameters"].as_f64().unwrap() + shares["seeds"].as_f64().unwrap() - 1.0)
            .abs()
            < 1e-9
    );
    assert!(matches!(results["within_seed_noise"], Value::Bool(_)));

    let png = c.dir.path().join("demo.png");
    let out = c.cli(&["plot", &sweep, "--file", png.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
    // `-o` is the format, as everywhere; a file name there is a usage error
    // (it was written as a .jpg-less failure, exit 74), as is a --param that
    // is not a numeric hyperparameter (it drew an empty panel, exit 0).
    let out = c.cli(&["plot", &sweep, "-o", "x.jpg"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("give the file as --file x.jpg"), "{err}");
    let out = c.cli(&["plot", &sweep, "--file", "x.jpg"]);
    assert_eq!(out.status.code(), Some(64));
    let out = c.cli(&["plot", &sweep, "--param", "depth"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("--param depth: the sweep has no such hyperparameter; its hyperparameters: "),
        "{err}"
    );
    let svg = c.dir.path().join("demo.svg");
    let out = c.cli(&["plot", &sweep, "-o", "svg", "--file", svg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&svg).unwrap().len();
    assert!((10_000..300_000).contains(&size), "an SVG of {size} bytes");
}
