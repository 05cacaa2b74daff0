//! A sweep's search state: its trials (with coordinates for adaptive methods),
//! each job's metric history, and the early-stopping decisions over them. The
//! coordinator's core owns one per sweep that is adaptive or stops early, and
//! rebuilds it from the database at start (trials, jobs and metric rows), so a
//! restart continues the same search.

use super::space::Space;
use super::stopping;
use super::{combine, propose, Objectives, TrialData};
use liandan_common::ids::{JobId, TrialId};
use liandan_common::rng::Rng;
use liandan_common::sweep::spec::{EarlyTerminate, StopRule};
use liandan_common::sweep::{Goal, Method, SweepSpec};
use serde_json::Value;
use std::collections::HashMap;

/// One trial as the search tracks it.
pub struct TrialSearch {
    pub id: TrialId,
    /// Coordinates in the unit cube (adaptive methods only).
    pub x: Option<Vec<f64>>,
    /// Its jobs, one per seed, in seed order.
    pub jobs: Vec<JobId>,
    /// Per job: the sweep metric's values as (step, value), in step order.
    histories: Vec<Vec<(i64, f64)>>,
    /// The combined history ([`SweepSearch::trial_history`]), kept up to date by `record`.
    combined: Vec<f64>,
    /// ASHA rungs already judged.
    asha_judged: usize,
    /// Early stopping has pruned it.
    pub stopped: bool,
}

/// Why a trial is stopped, for the log.
#[derive(Debug, PartialEq)]
pub struct StopDecision {
    pub band: u64,
    pub value: f64,
    pub rule: StopRule,
}

/// The search state of one sweep.
pub struct SweepSearch {
    pub method: Method,
    /// Trials are proposed here as slots free (bayes, tpe, random without run_cap).
    lazy: bool,
    /// For lazy random search: the spec its points are drawn from.
    random: Option<std::sync::Arc<SweepSpec>>,
    pub space: Space,
    objectives: Option<Objectives>,
    early: Option<(EarlyTerminate, Vec<u64>)>,
    /// Most trials (run_cap ÷ seeds); `None`: until cancelled.
    pub max_trials: Option<usize>,
    /// Propose nothing more: a finished trial reached metric.target (or a
    /// proposal's id collided with an existing job's, which the log reports).
    pub closed: bool,
    pub trials: Vec<TrialSearch>,
    by_id: HashMap<TrialId, usize>,
    sweep_seed: u64,
}

impl SweepSearch {
    /// The search state for a spec, or `None` when the sweep neither adapts nor stops early.
    pub fn for_spec(spec: &SweepSpec) -> Option<SweepSearch> {
        if !spec.has_search() {
            return None;
        }
        let seeds = spec.liandan.seeds.len().max(1);
        Some(SweepSearch {
            method: spec.method,
            lazy: spec.is_lazy(),
            random: (spec.is_lazy() && spec.method == Method::Random)
                .then(|| std::sync::Arc::new(spec.clone())),
            space: Space::new(&spec.parameters),
            objectives: spec.metric.as_ref().map(|m| Objectives {
                goal: m.goal,
                impute: m.impute,
                impute_while_running: m.impute_while_running,
                combine: spec.liandan.objective,
            }),
            early: spec.early_terminate.clone().map(|e| {
                let b = e.brackets();
                (e, b)
            }),
            max_trials: spec.run_cap.map(|c| (c as usize / seeds).max(1)),
            closed: false,
            trials: Vec::new(),
            by_id: HashMap::new(),
            sweep_seed: spec.liandan.sweep_seed,
        })
    }

    /// Registers a trial (proposed, expanded or loaded) with its jobs in seed order.
    pub fn add_trial(&mut self, id: TrialId, params: &Value, jobs: Vec<JobId>) {
        let x = self.method.is_adaptive().then(|| {
            self.space.encode(params).unwrap_or_else(|| {
                // Only a database edited by hand gets here: the model sees the centre.
                tracing::warn!(trial = %id, params = %params, "stored trial parameters are outside the sweep's space");
                vec![0.5; self.space.len()]
            })
        });
        self.by_id.insert(id.clone(), self.trials.len());
        self.trials.push(TrialSearch {
            id,
            x,
            histories: vec![Vec::new(); jobs.len()],
            combined: Vec::new(),
            jobs,
            asha_judged: 0,
            stopped: false,
        });
    }

    pub fn trial_index(&self, id: &TrialId) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Whether another trial may be proposed now.
    pub fn can_propose(&self) -> bool {
        self.lazy && !self.closed && self.max_trials.is_none_or(|m| self.trials.len() < m)
    }

    /// Whether proposals learn from the trials so far (random search does not).
    pub fn learns(&self) -> bool {
        self.random.is_none()
    }

    /// The params of the next trial, from the trials so far (`data`, in index order).
    pub fn propose(&self, data: &[TrialData]) -> Value {
        self.proposal(data.to_vec()).run()
    }

    /// Everything the next proposal depends on, owned, so the model can be
    /// fitted away from the core's lock ([`Proposal::run`]).
    pub fn proposal(&self, data: Vec<TrialData>) -> Proposal {
        Proposal {
            method: self.method,
            random: self.random.clone(),
            space: self.space.clone(),
            objectives: self.objectives,
            sweep_seed: self.sweep_seed,
            index: self.trials.len() as u64,
            data,
        }
    }
}

/// One proposal's inputs: a snapshot of the search (see [`SweepSearch::proposal`]).
pub struct Proposal {
    method: Method,
    random: Option<std::sync::Arc<SweepSpec>>,
    space: Space,
    objectives: Option<Objectives>,
    sweep_seed: u64,
    /// The trial index it proposes.
    pub index: u64,
    data: Vec<TrialData>,
}

impl Proposal {
    /// The proposed params: a pure function of the snapshot (the same inputs
    /// give the same trial, so a restarted search continues identically).
    pub fn run(&self) -> Value {
        if let Some(spec) = &self.random {
            // Unbounded random search: the index-th draw, as an up-front
            // expansion would have drawn it.
            return liandan_common::sweep::expand::random_params(spec, self.index);
        }
        let Some(o) = self.objectives else {
            return self.space.decode(&vec![0.5; self.space.len()]);
        };
        let mut rng = Rng::keyed("liandan.adaptive-trial", &[self.sweep_seed, self.index]);
        let u = propose(self.method, &self.space, &self.data, &o, &mut rng);
        self.space.decode(&u)
    }
}

impl SweepSearch {
    fn sign(&self) -> f64 {
        match self.objectives.map(|o| o.goal) {
            Some(Goal::Maximize) => -1.0,
            _ => 1.0,
        }
    }

    /// A trial's history as the stop rules see it: at each index, the seeds'
    /// combined value (lower is better), as long as every seed has reached it.
    pub fn trial_history(&self, t: usize) -> Vec<f64> {
        self.trials[t].combined.clone()
    }

    /// The step to file a value under when the record carries none: one past the job's last.
    pub fn next_step(&self, trial: &TrialId, job: &JobId) -> i64 {
        self.by_id
            .get(trial)
            .and_then(|&t| {
                let tr = &self.trials[t];
                let pos = tr.jobs.iter().position(|j| j == job)?;
                Some(tr.histories[pos].last().map_or(0, |(s, _)| s + 1))
            })
            .unwrap_or(0)
    }

    /// Records a metric value of a job; a resumed attempt that reports a step
    /// again replaces what followed it. Returns the trial's index when its
    /// combined history grew.
    pub fn record(&mut self, trial: &TrialId, job: &JobId, step: i64, value: f64) -> Option<usize> {
        // Histories exist for the stop rules only.
        self.early.as_ref()?;
        let t = *self.by_id.get(trial)?;
        let how = self.objectives.map(|o| o.combine).unwrap_or_default();
        let sign = self.sign();
        let tr = &mut self.trials[t];
        let pos = tr.jobs.iter().position(|j| j == job)?;
        let min_len = |tr: &TrialSearch| tr.histories.iter().map(|h| h.len()).min().unwrap_or(0);
        let before = min_len(tr);
        let h = &mut tr.histories[pos];
        // Steps are ascending: usually this appends; after a resume it cuts back first.
        let cut = h.partition_point(|(s, _)| *s < step);
        h.truncate(cut);
        h.push((step, value));
        let after = min_len(tr);
        // Combined values from index `cut` on may have changed; the rest stand.
        tr.combined.truncate(cut.min(tr.combined.len()));
        for i in tr.combined.len()..after {
            let vals: Vec<f64> = tr.histories.iter().map(|h| h[i].1).collect();
            tr.combined
                .push(combine(how, &vals).unwrap_or(f64::INFINITY) * sign);
        }
        (after > before).then_some(t)
    }

    /// Applies the early-stopping rule to trial `t`, which is running and
    /// whose history just grew. Marks and returns a decision to stop.
    pub fn judge(&mut self, t: usize) -> Option<StopDecision> {
        let (et, bands) = self.early.as_ref()?;
        if self.trials[t].stopped {
            return None;
        }
        let histories: Vec<&[f64]> = self
            .trials
            .iter()
            .map(|tr| tr.combined.as_slice())
            .collect();
        let mine = histories[t];
        let sign = self.sign();
        let mut judged = self.trials[t].asha_judged;
        let decision = match et.rule {
            StopRule::Hyperband => {
                match stopping::hyperband_stops(
                    bands,
                    et.eta,
                    et.strict,
                    mine,
                    histories.iter().copied(),
                ) {
                    Some((band, true)) => Some(StopDecision {
                        band,
                        value: mine.iter().copied().fold(f64::INFINITY, f64::min) * sign,
                        rule: StopRule::Hyperband,
                    }),
                    _ => None,
                }
            }
            StopRule::Asha => {
                let mut out = None;
                while judged < bands.len() {
                    let rung = bands[judged] as usize;
                    if rung == 0 || mine.len() < rung {
                        break;
                    }
                    judged += 1;
                    let value = mine[rung - 1];
                    let earlier: Vec<f64> = histories
                        .iter()
                        .enumerate()
                        .filter(|(i, h)| *i != t && h.len() >= rung)
                        .map(|(_, h)| h[rung - 1])
                        .collect();
                    if !stopping::asha_promotes(&earlier, value, et.eta) {
                        out = Some(StopDecision {
                            band: rung as u64,
                            value: value * sign,
                            rule: StopRule::Asha,
                        });
                        break;
                    }
                }
                out
            }
        };
        self.trials[t].asha_judged = judged;
        if decision.is_some() {
            self.trials[t].stopped = true;
        }
        decision
    }

    /// After a restart: marks ASHA rungs a trial had already passed as judged.
    pub fn settle_loaded(&mut self) {
        let Some((_, bands)) = self.early.clone() else {
            return;
        };
        for t in 0..self.trials.len() {
            let len = self.trial_history(t).len();
            self.trials[t].asha_judged = bands.iter().take_while(|b| (**b as usize) <= len).count();
        }
    }

    /// Whether a finished trial's combined best value meets metric.target.
    pub fn meets_target(&self, target: f64, seed_best: &[f64]) -> bool {
        let Some(o) = self.objectives else {
            return false;
        };
        match combine(o.combine, seed_best) {
            Some(v) => match o.goal {
                Goal::Minimize => v <= target,
                Goal::Maximize => v >= target,
            },
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liandan_common::ids::SweepId;
    use liandan_common::sweep::{adaptive_trial, parse, Format};

    fn search(extra: &str) -> (SweepSearch, SweepId) {
        let text = format!("method: tpe\nprogram: t.py\nmetric: {{name: loss}}\nrun_cap: 30\nparameters:\n  a: {{min: 0.0, max: 1.0}}\n{extra}");
        let spec = parse(&text, Format::Yaml).expect("spec").spec;
        (
            SweepSearch::for_spec(&spec).expect("adaptive"),
            SweepId::for_name("t"),
        )
    }

    fn add(s: &mut SweepSearch, sid: &SweepId, seeds: &[i64]) -> (TrialId, Vec<JobId>) {
        let (t, jobs) = adaptive_trial(sid, s.trials.len(), serde_json::json!({"a": 0.5}), seeds);
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        s.add_trial(t.id.clone(), &t.params, ids.clone());
        (t.id, ids)
    }

    #[test]
    fn a_trial_is_judged_on_its_seeds_mean_once_every_seed_reached_the_rung() {
        let (mut s, sid) = search(
            "liandan: {seeds: [1, 2]}\nearly_terminate: {type: asha, min_iter: 2, eta: 2}\n",
        );
        let (ta, ja) = add(&mut s, &sid, &[1, 2]);
        let (tb, jb) = add(&mut s, &sid, &[1, 2]);
        // Trial a: seeds at 1.0 and 3.0 → mean 2.0 at rung 2 (the first arrival: promoted).
        for (step, v) in [(1, 5.0), (2, 1.0)] {
            s.record(&ta, &ja[0], step, v);
        }
        assert_eq!(s.trial_history(0), Vec::<f64>::new());
        for (step, v) in [(1, 5.0), (2, 3.0)] {
            if let Some(t) = s.record(&ta, &ja[1], step, v) {
                assert_eq!(s.judge(t), None);
            }
        }
        assert_eq!(s.trial_history(0), vec![5.0, 2.0]);
        // Trial b: one seed great (0.5), the other bad (5.5): mean 3.0 > 2.0 → stopped at rung 2.
        s.record(&tb, &jb[0], 1, 5.0);
        s.record(&tb, &jb[0], 2, 0.5);
        s.record(&tb, &jb[1], 1, 5.0);
        let t = s.record(&tb, &jb[1], 2, 5.5).expect("grew");
        let d = s.judge(t).expect("stopped");
        assert_eq!((d.band, d.value), (2, 3.0));
        assert!(s.trials[1].stopped);
    }

    #[test]
    fn a_resumed_attempt_replaces_the_steps_it_reports_again() {
        let (mut s, sid) =
            search("liandan: {seeds: [1, 2]}\nearly_terminate: {type: hyperband, min_iter: 1}\n");
        let (t, j) = add(&mut s, &sid, &[1, 2]);
        for step in 1..=5 {
            s.record(&t, &j[0], step, step as f64);
            s.record(&t, &j[1], step, 3.0 * step as f64);
        }
        assert_eq!(s.trial_history(0), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
        // Seed 1 resumed from its checkpoint at step 3: steps 4 and 5 come again.
        assert_eq!(
            s.record(&t, &j[0], 4, 40.0),
            None,
            "the combined history did not grow"
        );
        assert_eq!(s.trial_history(0), vec![2.0, 4.0, 6.0, 26.0]);
        assert_eq!(s.record(&t, &j[0], 5, 5.0), Some(0));
        assert_eq!(s.trial_history(0), vec![2.0, 4.0, 6.0, 26.0, 10.0]);
    }

    #[test]
    fn without_early_stopping_no_history_is_kept() {
        let (mut s, sid) = search("");
        let (t, j) = add(&mut s, &sid, &[0]);
        assert_eq!(s.record(&t, &j[0], 1, 1.0), None);
        assert!(s.trial_history(0).is_empty());
    }

    #[test]
    fn run_cap_and_target_bound_the_search() {
        let (mut s, sid) = search("liandan: {seeds: 3}\n");
        assert_eq!(s.max_trials, Some(10));
        for _ in 0..10 {
            assert!(s.can_propose());
            add(&mut s, &sid, &[0, 1, 2]);
        }
        assert!(!s.can_propose());
        assert!(s.meets_target(0.5, &[0.4, 0.6]));
        assert!(!s.meets_target(0.5, &[0.4, 0.7]));
    }
}
