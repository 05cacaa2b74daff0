//! Adaptive search and early stopping through the coordinator's core, with
//! simulated workers: trials proposed as results arrive, stored so a restart
//! continues the same search, run_cap and metric.target respected, and trials
//! pruned through the normal stop path.

mod support;

use liandan_proto::v1 as pb;
use std::time::Duration;
use support::*;

fn x_of(a: &pb::Assignment) -> f64 {
    let p: serde_json::Value = serde_json::from_str(&a.params_json).expect("params");
    p["x"].as_f64().expect("x")
}

fn objective(a: &pb::Assignment) -> f64 {
    (x_of(a) - 0.3).powi(2) + 0.001 * a.seed as f64
}

const BAYES: &str = "name: b\nprogram: t.py\nmethod: bayes\nmetric: {name: loss, goal: minimize}\nrun_cap: 16\nparameters:\n  x: {min: 0.0, max: 1.0}\nliandan: {seeds: [1, 2], sweep_seed: 11}\n";

/// Runs the bayes sweep to its end, one trial (two seeds) at a time, and
/// returns the trials' parameters in index order. With `restart_after`, the
/// coordinator is dropped and reopened from its database after that many trials.
async fn run_bayes(restart_after: Option<usize>) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = core(dir.path());
    let (sweep, created, warnings) = c.submit(BAYES, "yaml", "").await.expect("submit");
    assert!(created);
    assert!(
        warnings.iter().any(|w| w.contains("up to 8 trials")),
        "{warnings:?}"
    );
    assert_eq!(sweep.jobs, 0, "nothing is expanded up front");
    let mut w = hello(&c, 2, vec![], 0).await;
    let mut finished_trials = 0;
    let mut restarted = false;
    loop {
        let inbox = settled_inbox(&c, &mut w).await;
        if inbox.assigned.is_empty() {
            break;
        }
        // Both seeds of one trial run side by side.
        assert_eq!(
            inbox.assigned.len(),
            2,
            "a trial's seeds are scheduled together"
        );
        assert_eq!(inbox.assigned[0].trial_id, inbox.assigned[1].trial_id);
        if restart_after == Some(finished_trials) && !restarted {
            // Crash with the trial assigned, and come back.
            restarted = true;
            let held = held(&inbox.assigned);
            drop(w);
            drop(c);
            c = core(dir.path());
            let seq = 1_000;
            w = hello(&c, 2, held, seq).await;
            assert!(
                settled_inbox(&c, &mut w).await.assigned.is_empty(),
                "nothing new while the held trial runs"
            );
        }
        for a in &inbox.assigned {
            metric(&c, &mut w, a, 1, objective(a) + 1.0).await;
            metric(&c, &mut w, a, 2, objective(a)).await;
        }
        for a in &inbox.assigned {
            exit(&c, &mut w, a, "succeeded").await;
        }
        finished_trials += 1;
    }
    let s = c.get_sweep(&sweep.id).expect("sweep");
    assert_eq!(s.state, "finished");
    assert_eq!((s.trials, s.jobs), (8, 16));
    assert_eq!(s.counts.expect("counts").succeeded, 16);
    let jobs = c.list_jobs(&sweep.id, "").expect("jobs");
    let mut trials: Vec<String> = Vec::new();
    for pair in jobs.chunks(2) {
        assert_eq!(pair[0].trial_id, pair[1].trial_id);
        trials.push(pair[0].params_json.clone());
    }
    trials
}

#[tokio::test]
async fn bayes_proposes_trials_as_results_arrive_and_a_restart_continues_the_same_search() {
    let reference = run_bayes(None).await;
    assert_eq!(reference.len(), 8);
    let again = run_bayes(None).await;
    assert_eq!(
        again, reference,
        "same sweep seed, same results → same trials"
    );
    let restarted = run_bayes(Some(4)).await;
    assert_eq!(
        restarted, reference,
        "a restart neither repeats nor skips a trial"
    );
    // The search learned: the last trials sit nearer the optimum (0.3) than the first two random ones.
    let xs: Vec<f64> = reference
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p).expect("json")["x"]
                .as_f64()
                .expect("x")
        })
        .collect();
    let best_late = xs[2..]
        .iter()
        .map(|x| (x - 0.3).abs())
        .fold(f64::INFINITY, f64::min);
    assert!(best_late < 0.05, "{xs:?}");
}

#[tokio::test]
async fn metric_target_stops_the_search_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let spec = "name: t\nprogram: t.py\nmethod: tpe\nmetric: {name: loss, goal: minimize, target: 100.0}\nrun_cap: 10\nparameters:\n  x: {min: 0.0, max: 1.0}\n";
    let (sweep, _, _) = c.submit(spec, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 1, vec![], 0).await;
    let a = settled_inbox(&c, &mut w)
        .await
        .assigned
        .pop()
        .expect("a first trial");
    metric(&c, &mut w, &a, 1, 5.0).await;
    exit(&c, &mut w, &a, "succeeded").await;
    assert!(
        settled_inbox(&c, &mut w).await.assigned.is_empty(),
        "the target was met: nothing more is proposed"
    );
    let s = c.get_sweep(&sweep.id).expect("sweep");
    assert_eq!((s.state.as_str(), s.trials), ("finished", 1));
}

const HYPERBAND: &str = "name: h\nprogram: t.py\nmethod: grid\nmetric: {name: loss, goal: minimize}\nearly_terminate: {type: hyperband, min_iter: 1, eta: 2}\nparameters:\n  x: {values: [1, 2, 3]}\n";

#[tokio::test]
async fn hyperband_prunes_a_trial_through_the_stop_path_and_the_decision_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (sweep, _, _) = c.submit(HYPERBAND, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 3, vec![], 0).await;
    let jobs = settled_inbox(&c, &mut w).await.assigned;
    assert_eq!(jobs.len(), 3);
    // Band 1 (index 1, eta 2): the threshold is the middle of three values.
    let losses = |x: f64| if x == 3.0 { [9.0, 9.0] } else { [9.0, 1.0 / x] };
    for step in 0..2 {
        for a in &jobs {
            metric(&c, &mut w, a, step, losses(x_of(a))[step as usize]).await;
        }
    }
    let inbox = settled_inbox(&c, &mut w).await;
    assert_eq!(
        inbox.stops.len(),
        1,
        "one trial is below the band's threshold"
    );
    let bad = jobs.iter().find(|a| x_of(a) == 3.0).expect("x=3");
    assert_eq!(
        (
            inbox.stops[0].job_id.as_str(),
            inbox.stops[0].legacy_reason.as_str()
        ),
        (bad.job_id.as_str(), "pruned")
    );
    // The worker stops it with SIGTERM; it ends as the worker reports a stop.
    exit(&c, &mut w, bad, "cancelled").await;
    for a in jobs.iter().filter(|a| a.job_id != bad.job_id) {
        exit(&c, &mut w, a, "succeeded").await;
    }
    let s = c.get_sweep(&sweep.id).expect("sweep");
    let k = s.counts.expect("counts");
    assert_eq!(
        (
            s.state.as_str(),
            k.succeeded,
            k.pruned,
            k.failed,
            k.cancelled
        ),
        ("finished", 2, 1, 0, 0)
    );
    assert_eq!(c.list_jobs(&sweep.id, "pruned").expect("jobs").len(), 1);
    drop(w);
    drop(c);
    let c = core(dir.path());
    let s = c.get_sweep(&sweep.id).expect("sweep");
    assert_eq!(s.counts.expect("counts").pruned, 1);
    assert_eq!(
        c.list_jobs(&sweep.id, "pruned").expect("jobs")[0].id,
        bad.job_id
    );
}

#[tokio::test]
async fn asha_judges_a_trial_on_its_seeds_mean_once_every_seed_reached_the_rung() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let spec = "name: a\nprogram: t.py\nmethod: grid\nmetric: {name: acc, goal: maximize}\nearly_terminate: {type: asha, min_iter: 2, eta: 2}\nparameters:\n  x: {values: [1, 2]}\nliandan: {seeds: [1, 2]}\n";
    c.submit(spec, "yaml", "").await.expect("submit");
    // Three slots: trial 1's two seeds and trial 2's first seed run; its second seed waits.
    let mut w = hello(&c, 3, vec![], 0).await;
    let jobs = settled_inbox(&c, &mut w).await.assigned;
    assert_eq!(jobs.len(), 3);
    let send_acc = |a: &pb::Assignment, step: i64, acc: f64| {
        (
            a.clone(),
            step,
            serde_json::json!({ "acc": acc }).to_string(),
        )
    };
    let mut reports = Vec::new();
    for a in &jobs {
        let good = x_of(a) == 1.0;
        for step in 1..=2 {
            reports.push(send_acc(a, step, if good { 0.9 } else { 0.1 }));
        }
    }
    for (a, step, json) in reports {
        send(
            &c,
            &mut w,
            &a,
            pb::record::Body::Metric(pb::MetricReport {
                step: Some(step),
                ts: 0.0,
                json,
            }),
        )
        .await;
    }
    // Trial 2 has one seed with a history: its seeds' mean is not known yet, so no decision.
    assert!(settled_inbox(&c, &mut w).await.stops.is_empty());
    // Trial 1 finishes; trial 2's second seed starts and reaches rung 2 below trial 1: pruned.
    for a in jobs.iter().filter(|a| x_of(a) == 1.0) {
        exit(&c, &mut w, a, "succeeded").await;
    }
    let second = settled_inbox(&c, &mut w).await.assigned;
    assert_eq!(second.len(), 1);
    for step in 1..=2 {
        send(
            &c,
            &mut w,
            &second[0],
            pb::record::Body::Metric(pb::MetricReport {
                step: Some(step),
                ts: 0.0,
                json: serde_json::json!({"acc": 0.2}).to_string(),
            }),
        )
        .await;
    }
    let stops = settled_inbox(&c, &mut w).await.stops;
    assert_eq!(
        stops.len(),
        2,
        "both running seeds of the trial are stopped"
    );
    assert!(stops.iter().all(|s| s.legacy_reason == "pruned"));
}

#[tokio::test]
async fn a_restarted_coordinator_judges_with_the_histories_it_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let (sweep, _, _) = c.submit(HYPERBAND, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 3, vec![], 0).await;
    let jobs = settled_inbox(&c, &mut w).await.assigned;
    // The two good trials report past band 1 before the crash; the bad one only its first value.
    let bad = jobs.iter().find(|a| x_of(a) == 3.0).expect("x=3").clone();
    for a in jobs.iter().filter(|a| a.job_id != bad.job_id) {
        metric(&c, &mut w, a, 0, 9.0).await;
        metric(&c, &mut w, a, 1, 1.0 / x_of(a)).await;
    }
    metric(&c, &mut w, &bad, 0, 9.0).await;
    assert!(settled_inbox(&c, &mut w).await.stops.is_empty());
    let held = held(&jobs);
    let seq = w.seq;
    drop(w);
    drop(c);
    let c = core(dir.path());
    let mut w = hello(&c, 3, held, seq).await;
    settled_inbox(&c, &mut w).await;
    // Its second value is judged against the thresholds of the stored histories.
    metric(&c, &mut w, &bad, 1, 9.0).await;
    let stops = settled_inbox(&c, &mut w).await.stops;
    assert_eq!(
        stops.len(),
        1,
        "the stored histories set the band's threshold"
    );
    assert_eq!(
        (stops[0].job_id.as_str(), stops[0].legacy_reason.as_str()),
        (bad.job_id.as_str(), "pruned")
    );
    let _ = sweep;
}

/// The model is fitted away from the core's lock: while a proposal is held
/// before its fit, the core goes on (other sweeps are scheduled, reads
/// answer), and the trial arrives once the fit is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_is_fitted_off_the_cores_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let hold = c.hold_proposals();
    let spec = "name: b1\nprogram: t.py\nmethod: bayes\nmetric: {name: loss, goal: minimize}\nrun_cap: 4\nparameters:\n  x: {min: 0.0, max: 1.0}\n";
    let (bayes, _, _) = c.submit(spec, "yaml", "").await.expect("submit");
    let mut w = hello(&c, 2, vec![], 0).await;
    assert!(
        drain(&mut w).assigned.is_empty(),
        "the trial is not proposed while its fit is held"
    );
    let grid = "name: g\nprogram: t.py\nmethod: grid\nparameters:\n  x: {value: 1}\n";
    let (g, _, _) = tokio::time::timeout(Duration::from_secs(10), c.submit(grid, "yaml", ""))
        .await
        .expect("a submit is not held up by a pending fit")
        .expect("submit");
    let got = drain(&mut w).assigned;
    assert_eq!(got.len(), 1, "the other sweep is scheduled meanwhile");
    assert_eq!(got[0].sweep_id, g.id);
    assert_eq!(c.list_workers().len(), 1);
    drop(hold);
    let got = settled_inbox(&c, &mut w).await.assigned;
    assert_eq!(got.len(), 1, "the proposed trial arrives after the fit");
    assert_eq!(got[0].sweep_id, bayes.id);
}
