//! Per-trial results through the core: kept as jobs succeed, ranked by the
//! seed mean, limited without changing the order, and rebuilt identically by
//! a restarted coordinator from its database.

mod support;

use liandan_common::ids::SweepId;
use liandan_proto::v1 as pb;
use support::*;

const GRID: &str = "name: g\nprogram: t.py\nmethod: grid\nmetric: {name: loss, goal: minimize}\nparameters:\n  x: {values: [1, 2, 3, 4]}\nliandan: {seeds: [1, 2, 3], retries: 0}\n";

fn x_of(a: &pb::Assignment) -> i64 {
    let p: serde_json::Value = serde_json::from_str(&a.params_json).expect("params");
    p["x"].as_i64().expect("x")
}

/// Each job's loss: x = 3 is best, x = 2 second; seeds add a little.
fn loss(a: &pb::Assignment) -> f64 {
    (x_of(a) as f64 - 3.0).abs() + 0.01 * a.seed as f64
}

fn ranked(chunks: &[pb::GetTrialResultsResponse]) -> Vec<(i64, Vec<(i64, f64)>)> {
    chunks
        .iter()
        .flat_map(|c| &c.trials)
        .map(|t| {
            let p: serde_json::Value = serde_json::from_str(&t.params_json).expect("params");
            (
                p["x"].as_i64().expect("x"),
                t.values.iter().map(|v| (v.seed, v.value)).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn results_rank_trials_by_seed_mean_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (sweep, _, _) = c.submit(GRID, "yaml", "").await.expect("submit");
    let sid = SweepId::parse(&sweep.id).expect("id");
    let mut w = hello(&c, 12, Vec::new(), 0).await;
    let jobs = drain(&mut w).assigned;
    assert_eq!(jobs.len(), 12);
    for a in &jobs {
        // x = 4 seed 3 fails before reporting; x = 1 seed 2 succeeds silently.
        match (x_of(a), a.seed) {
            (4, 3) => exit(&c, &mut w, a, "failed").await,
            (1, 2) => exit(&c, &mut w, a, "succeeded").await,
            _ => {
                metric(&c, &mut w, a, 1, loss(a)).await;
                exit(&c, &mut w, a, "succeeded").await;
            }
        }
    }
    let all = c.trial_results(&sid, false, 0, 2).expect("results");
    assert_eq!(all.len(), 2, "four trials in chunks of two");
    let want = vec![
        (3, vec![(1, 0.01), (2, 0.02), (3, 0.03)]),
        // Mean 1.015: its third seed failed, so it ranks on two.
        (4, vec![(1, 1.01), (2, 1.02)]),
        (2, vec![(1, 1.01), (2, 1.02), (3, 1.03)]),
        (1, vec![(1, 2.01), (3, 2.03)]),
    ];
    let got = ranked(&all);
    assert_eq!(got.len(), want.len());
    for ((gx, gv), (wx, wv)) in got.iter().zip(&want) {
        assert_eq!(gx, wx);
        assert_eq!(gv.len(), wv.len(), "x={gx}");
        for (g, w) in gv.iter().zip(wv) {
            assert!(g.0 == w.0 && (g.1 - w.1).abs() < 1e-9, "x={gx}: {gv:?}");
        }
    }
    let first = &all[0];
    assert_eq!(first.trials_total, 4);
    assert_eq!(first.trials_ranked, 4);
    assert_eq!(
        first.jobs_without_value, 2,
        "the failed job and the silent one"
    );
    assert!(first.share_hyperparameters.expect("shares") > 0.99);
    assert!(first.sweep.is_some() && all[1].sweep.is_none());
    // A limit keeps the order; maximizing would reverse it, minimizing is asked.
    let top = c.trial_results(&sid, false, 2, 10_000).expect("top 2");
    assert_eq!(ranked(&top), got[..2].to_vec());
    assert_eq!(top[0].trials_total, 4);
    // The restarted coordinator rebuilds the same results from its database.
    drop(w);
    drop(c);
    let c = core(dir.path());
    let again = c
        .trial_results(&sid, false, 0, 2)
        .expect("results after restart");
    assert_eq!(ranked(&again), got);
    assert_eq!(again[0].jobs_without_value, 2);
    // Same values, summed in another order (restart reads them in job order).
    let (a, b) = (
        again[0].share_seeds.expect("shares"),
        first.share_seeds.expect("shares"),
    );
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
}

#[tokio::test]
async fn trials_without_a_value_follow_in_submission_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (sweep, _, _) = c.submit(GRID, "yaml", "").await.expect("submit");
    let sid = SweepId::parse(&sweep.id).expect("id");
    let none = c.trial_results(&sid, false, 3, 10_000).expect("results");
    let xs: Vec<i64> = ranked(&none).iter().map(|t| t.0).collect();
    assert_eq!(
        xs,
        [1, 2, 3],
        "nothing ran: the first three trials, as submitted"
    );
    assert_eq!(none[0].trials_ranked, 0);
    assert_eq!(none[0].jobs_without_value, 12);
    assert!(none[0].share_hyperparameters.is_none());
    let e = c
        .trial_results(&SweepId::parse("sw-nope").expect("id"), false, 0, 10)
        .expect_err("unknown sweep");
    assert!(e.to_string().contains("sw-nope"), "{e}");
}
