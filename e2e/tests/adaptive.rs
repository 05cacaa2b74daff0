//! A `bayes` sweep with Hyperband early stopping over liandan-train jobs with
//! three seeds, on real workers: it proposes trials up to run_cap, prunes the
//! trial that cannot learn (SIGTERM, so it checkpoints), and `results` ranks
//! trials by their seed mean. The sweep is examples/adaptive.yaml.

use liandan_e2e::{Cluster, Opts};
use std::time::Duration;

#[test]
fn a_bayes_sweep_with_hyperband_runs_to_run_cap_prunes_and_ranks_by_seed_mean() {
    assert!(
        liandan_e2e::has_bin("liandan-train"),
        "liandan-train is not built: run `make build` (it needs libtorch)"
    );
    let c = Cluster::start(2, Opts::default());
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/adaptive.yaml");
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(240));
    assert_eq!(
        (st["trials"].as_u64(), st["jobs"].as_u64()),
        (Some(6), Some(18)),
        "{st}"
    );
    assert_eq!(st["failed"], 0, "{st}");
    eprintln!("status: {st}");
    let pruned = st["pruned"].as_u64().unwrap_or(0);
    assert!(pruned >= 1, "nothing was pruned: {st}");
    assert_eq!(st["succeeded"].as_u64().unwrap_or(0) + pruned, 18, "{st}");
    // The pruned jobs were stopped by SIGTERM and checkpointed on the way out.
    let ckpts = c.query_i64(
        "SELECT COUNT(*) FROM checkpoints WHERE job_id IN (SELECT id FROM jobs WHERE state = 'pruned')",
    );
    assert!(ckpts >= 1, "pruned jobs left no checkpoint");
    let stopped = c.query_i64(
        "SELECT COUNT(*) FROM attempts a JOIN jobs j ON a.job_id = j.id WHERE j.state = 'pruned' AND a.state = 'cancelled'",
    );
    assert!(
        stopped >= 1,
        "pruned jobs were not stopped through the stop path"
    );

    let results = c.cli_json(&["results", &sweep, "-o", "json"]);
    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 6);
    let means: Vec<f64> = trials.iter().filter_map(|t| t["mean"].as_f64()).collect();
    eprintln!("trial means: {means:?}");
    assert!(!means.is_empty());
    assert!(
        means.windows(2).all(|w| w[0] >= w[1]),
        "ranked by seed mean: {means:?}"
    );
    assert_eq!(trials[0]["params"]["lr"], 0.05, "{}", trials[0]);
    // Pruned trials (no succeeded seed) rank last.
    let first_without = trials
        .iter()
        .position(|t| t["mean"].is_null())
        .unwrap_or(trials.len());
    assert!(trials[first_without..].iter().all(|t| t["mean"].is_null()));
}
