//! The adaptive-search glue: trials proposed off the lock and added under it,
//! early-stopping prunes, and a sweep's target.

use super::*;

impl Core {
    /// Stops every job of a trial that early stopping pruned: queued ones
    /// become pruned now, running ones are asked to stop (SIGTERM, so they
    /// checkpoint) and become pruned when their attempt ends.
    pub(super) fn prune_trial(&self, st: &mut State, sid: &SweepId, t: usize) -> Effects {
        let jobs: Vec<JobId> = st
            .sweeps
            .get(sid)
            .and_then(|s| s.search.as_ref())
            .and_then(|s| s.trials.get(t))
            .map(|t| t.jobs.clone())
            .unwrap_or_default();
        let mut fx = Effects::default();
        for jid in jobs {
            fx.absorb(self.stop_job_locked(st, &jid, StopRequest::Prune));
        }
        fx
    }

    /// The search's view of a sweep's trials, in index order.
    fn trial_data(st: &State, search: &SweepSearch) -> Vec<TrialData> {
        search
            .trials
            .iter()
            .map(|t| {
                let mut seed_best = Vec::new();
                let mut seed_latest = Vec::new();
                let mut all_done = true;
                let mut any_usable = false;
                for j in &t.jobs {
                    let Some(m) = st.jobs.get(j) else { continue };
                    if !m.state.is_terminal() {
                        all_done = false;
                    }
                    if matches!(m.state, JobState::Succeeded | JobState::Pruned) {
                        any_usable = true;
                    }
                    if let (Some(b), Some(l)) = (m.best_metric, m.final_metric) {
                        seed_best.push(b);
                        seed_latest.push(l);
                    }
                }
                TrialData {
                    x: t.x.clone().unwrap_or_default(),
                    status: if !all_done {
                        TrialStatus::Running
                    } else if any_usable {
                        TrialStatus::Finished
                    } else {
                        TrialStatus::Failed
                    },
                    seed_best,
                    seed_latest,
                }
            })
            .collect()
    }

    /// Proposes the next trial of an adaptive sweep and queues its jobs (all
    /// seeds together, so they run side by side). None when it may not, or
    /// when the proposal is computed off the lock (it is added when ready).
    pub(super) fn propose_trial(&self, st: &mut State, sid: &SweepId) -> Option<Effects> {
        let (params, index) = {
            let s = st.sweeps.get(sid)?;
            let search = s.search.as_ref().filter(|x| x.can_propose())?;
            if s.proposing {
                return None;
            }
            if search.learns() {
                // Fitting a model takes milliseconds to tens of them: done on a
                // blocking thread from a snapshot, applied under the lock after
                // (heartbeats and records are not held up meanwhile).
                if let (Some(core), Ok(rt)) =
                    (self.me.upgrade(), tokio::runtime::Handle::try_current())
                {
                    let proposal = search.proposal(Self::trial_data(st, search));
                    if let Some(s) = st.sweeps.get_mut(sid) {
                        s.proposing = true;
                    }
                    self.proposals
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let sid = sid.clone();
                    rt.spawn(async move {
                        let t0 = std::time::Instant::now();
                        let index = proposal.index;
                        let gate = core.proposal_gate.clone();
                        let params = tokio::task::spawn_blocking(move || {
                            gate.wait_open();
                            proposal.run()
                        })
                        .await;
                        if params.is_err() {
                            // A fit that panics would panic again at once: not in a hot loop.
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        tracing::debug!(sweep = %sid, trial = index, ms = t0.elapsed().as_secs_f64() * 1e3, "proposed a trial");
                        core.apply_proposal(&sid, index, params.ok()).await;
                        core.proposals
                            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    });
                    return None;
                }
            }
            let data = if search.learns() {
                Self::trial_data(st, search)
            } else {
                Vec::new()
            };
            (search.propose(&data), search.trials.len())
        };
        self.add_proposed_trial(st, sid, index, params)
    }

    /// Applies a proposal computed off the lock: the trial is added if the
    /// search still wants trial `index` (not cancelled, paused or closed
    /// meanwhile), then the sweep is dispatched.
    async fn apply_proposal(&self, sid: &SweepId, index: u64, params: Option<serde_json::Value>) {
        let pending = {
            let mut st = self.lock();
            let mut fx = Effects::default();
            if let Some(s) = st.sweeps.get_mut(sid) {
                s.proposing = false;
                let wanted = s.state == SweepState::Active
                    && s.search
                        .as_ref()
                        .is_some_and(|x| x.can_propose() && x.trials.len() as u64 == index);
                match params {
                    Some(p) if wanted => {
                        if let Some(added) =
                            self.add_proposed_trial(&mut st, sid, index as usize, p)
                        {
                            fx.absorb(added);
                        }
                    }
                    Some(_) => {}
                    None => {
                        tracing::error!(sweep = %sid, trial = index, "the proposal failed; it is tried again")
                    }
                }
            }
            fx.absorb(self.dispatch(&mut st));
            self.enqueue(fx)
        };
        if let Err(e) = self.finish(pending).await {
            tracing::error!(sweep = %sid, error = %e, "storing a proposed trial failed");
        }
    }

    /// For tests: proposals wait, before fitting, until the guard drops.
    #[doc(hidden)]
    pub fn hold_proposals(&self) -> crate::gate::Hold {
        self.proposal_gate.hold()
    }

    /// For tests: a submit's batch waits, before it is built, until the guard drops.
    #[doc(hidden)]
    pub fn hold_builds(&self) -> crate::gate::Hold {
        self.build_gate.hold()
    }

    /// For tests: submits waiting at the build gate.
    #[doc(hidden)]
    pub fn builds_held(&self) -> usize {
        self.build_gate.waiting()
    }

    /// Resolves once no proposal is being computed or applied (tests).
    #[doc(hidden)]
    pub async fn proposals_settled(&self) {
        while self.proposals.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Adds trial `index` with `params` and its jobs (one per seed), queued.
    fn add_proposed_trial(
        &self,
        st: &mut State,
        sid: &SweepId,
        index: usize,
        params: serde_json::Value,
    ) -> Option<Effects> {
        let seeds = st.sweeps.get(sid).map(|s| s.spec.liandan.seeds.clone())?;
        let (trial, jobs) = sweep::adaptive_trial(sid, index, params, &seeds);
        if jobs.iter().any(|j| st.jobs.contains_key(&j.id)) {
            tracing::error!(sweep = %sid, trial = %trial.id, "a proposed job's id exists already (a hash collision); the search stops");
            if let Some(search) = st.sweeps.get_mut(sid).and_then(|s| s.search.as_mut()) {
                search.closed = true;
            }
            return None;
        }
        let pj: Arc<str> = trial.params.to_string().into();
        let mut fx = Effects::of(Op::InsertTrial {
            id: trial.id.to_string(),
            sweep_id: sid.to_string(),
            idx: index as i64,
            params_json: pj.to_string(),
        });
        let first_seq = st.next_seq;
        let s = st.sweeps.get_mut(sid)?;
        let base = s.jobs.len() as i64;
        let floor = s.attempt_floor;
        let mut ids = Vec::with_capacity(jobs.len());
        for (k, j) in jobs.iter().enumerate() {
            let mut mem = JobMem::queued(
                first_seq + k as i64,
                sid.clone(),
                trial.id.clone(),
                j.seed,
                pj.clone(),
            );
            mem.attempt = AttemptNo(floor);
            st.jobs.insert(j.id.clone(), mem);
            ids.push(j.id.clone());
        }
        st.next_seq += jobs.len() as i64;
        fx.op(Op::InsertJobs(NewJobs {
            sweep_id: sid.clone(),
            first_seq,
            first_ord: base,
            first_attempt: floor,
            jobs: jobs
                .iter()
                .map(|j| (j.id.clone(), trial.id.clone(), j.seed))
                .collect(),
        }));
        s.trials += 1;
        s.counts.add(JobState::Queued, ids.len() as u64);
        s.jobs.extend(ids.iter().cloned());
        s.ready.extend(ids.iter().cloned());
        if let Some(search) = s.search.as_mut() {
            search.add_trial(trial.id.clone(), &trial.params, ids);
        }
        tracing::info!(sweep = %sid, trial = %trial.id, index, params = %trial.params, "adaptive search proposed a trial");
        Some(fx)
    }

    /// After a job of an adaptive sweep ended: whether its trial, now finished,
    /// reached metric.target (then the search proposes nothing more).
    pub(super) fn check_target(&self, st: &mut State, jid: &JobId) {
        let Some(job) = st.jobs.get(jid) else { return };
        let (sid, tid) = (job.sweep.clone(), job.trial.clone());
        let Some(s) = st.sweeps.get(&sid) else { return };
        let Some(target) = s.spec.metric.as_ref().and_then(|m| m.target) else {
            return;
        };
        let Some(search) = s.search.as_ref() else {
            return;
        };
        let Some(t) = search.trial_index(&tid) else {
            return;
        };
        if reached_target(&st.jobs, search, t, target) {
            tracing::info!(sweep = %sid, trial = %tid, target, "the trial reached metric.target; no more trials are proposed");
            if let Some(search) = st.sweeps.get_mut(&sid).and_then(|s| s.search.as_mut()) {
                search.closed = true;
            }
        }
    }
}

/// Whether trial `t`, with every seed ended, reached metric.target on the
/// combined best value of its succeeded seeds.
pub(super) fn reached_target(
    jobs: &HashMap<JobId, JobMem>,
    search: &SweepSearch,
    t: usize,
    target: f64,
) -> bool {
    let trial = &search.trials[t].jobs;
    if !trial
        .iter()
        .all(|j| jobs.get(j).is_some_and(|m| m.state.is_terminal()))
    {
        return false;
    }
    let best: Vec<f64> = trial
        .iter()
        .filter_map(|j| jobs.get(j))
        .filter(|m| m.state == JobState::Succeeded)
        .filter_map(|m| m.best_metric)
        .collect();
    search.meets_target(target, &best)
}
