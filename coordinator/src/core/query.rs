//! Reads for callers: sweeps, jobs, workers and results as the wire shows them,
//! ids resolved from unique prefixes, and the memory-to-proto conversions.

use super::*;

impl Core {
    /// A job by its id or a unique prefix of it (as git and docker take
    /// short ids): `job-44abe2` is the job whose id starts so, if only one does.
    pub fn resolve_job(&self, s: &str) -> Result<String, CoreError> {
        // Not even the shape of an id (`job-../x`): refused as such.
        let jid = JobId::parse(s).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        if st.jobs.contains_key(&jid) {
            return Ok(s.to_string());
        }
        unique_prefix("job", s, st.jobs.keys().map(|k| k.as_str()), "jobs SWEEP")
    }

    /// A worker by its id or a unique prefix of it.
    pub fn resolve_worker(&self, s: &str) -> Result<String, CoreError> {
        let wid = WorkerId::parse(s).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        if st.workers.contains_key(&wid) {
            return Ok(s.to_string());
        }
        unique_prefix(
            "worker",
            s,
            st.workers.keys().map(|k| k.as_str()),
            "workers",
        )
    }

    /// Who owns a job: its sweep's owner.
    pub fn job_owner(&self, id: &str) -> Result<String, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        st.jobs
            .get(&jid)
            .and_then(|j| st.sweeps.get(&j.sweep))
            .map(|s| s.owner.clone())
            .ok_or_else(|| CoreError::NotFound {
                kind: "job",
                id: jid.to_string(),
                hint: "jobs SWEEP",
            })
    }

    pub fn get_sweep(&self, id: &str) -> Result<pb::Sweep, CoreError> {
        let st = self.lock();
        let sid = self.sweep_id(&st, id)?;
        Ok(sweep_info(&st, &sid))
    }

    /// One page of sweeps in submission order, without their specs, and the
    /// token of the next page ("" after the last).
    pub fn list_sweeps_page(
        &self,
        page_size: u32,
        token: &str,
    ) -> Result<(Vec<pb::Sweep>, String), CoreError> {
        let after = match token {
            "" => None,
            t => Some(
                t.split_once('|')
                    .and_then(|(c, id)| Some((c.parse::<f64>().ok()?, id.to_string())))
                    .ok_or_else(|| bad_token(t))?,
            ),
        };
        let size = page_len(page_size, SWEEPS_PAGE);
        let max_bytes = self.page_bytes();
        let st = self.lock();
        let mut keys: Vec<(f64, &SweepId)> =
            st.sweeps.iter().map(|(k, s)| (s.created_at, k)).collect();
        keys.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.as_str().cmp(b.1.as_str())));
        let start = match &after {
            None => 0,
            Some((c, id)) => keys.partition_point(|(t, k)| {
                t.total_cmp(c).then(k.as_str().cmp(id.as_str())) != std::cmp::Ordering::Greater
            }),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (t, k) in &keys[start..] {
            if out.len() >= size || bytes >= max_bytes {
                let last: &pb::Sweep = out.last().expect("a page holds one sweep at least");
                return Ok((out.clone(), format!("{}|{}", last.created_at, last.id)));
            }
            let mut info = sweep_info(&st, k);
            debug_assert_eq!(info.created_at, *t);
            info.spec_json.clear();
            bytes += prost::Message::encoded_len(&info);
            out.push(info);
        }
        Ok((out, String::new()))
    }

    /// One page of a sweep's jobs (in order, optionally of one state) and the
    /// next page's token. A page scans at most [`JOBS_SCAN`] jobs, so a
    /// filtered page may be short and still not the last.
    pub fn list_jobs_page(
        &self,
        sweep: &str,
        state: &str,
        page_size: u32,
        token: &str,
    ) -> Result<(Vec<pb::Job>, String), CoreError> {
        let filter = job_state_filter(state)?;
        let from: usize = match token {
            "" => 0,
            t => t.parse().map_err(|_| bad_token(t))?,
        };
        let size = page_len(page_size, JOBS_PAGE);
        let max_bytes = self.page_bytes();
        let st = self.lock();
        let sid = self.sweep_id(&st, sweep)?;
        let jobs = &st.sweeps[&sid].jobs;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = from.min(jobs.len());
        let end = jobs.len().min(i.saturating_add(JOBS_SCAN));
        while i < end && out.len() < size && bytes < max_bytes {
            if let Some(m) = st.jobs.get(&jobs[i]) {
                if filter.is_none_or(|f| m.state == f) {
                    let info = job_info(&jobs[i], m);
                    bytes += prost::Message::encoded_len(&info);
                    if m.attempt.0 > 0 {
                        bytes += LAST_ATTEMPT_BYTES;
                    }
                    out.push(info);
                }
            }
            i += 1;
        }
        let next = if i < jobs.len() {
            i.to_string()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// Fills in the `last_attempt` of each job that has had one, from the
    /// store: the worker it ran on, since when and how it ended (for a queued
    /// job, the attempt it is retried after), which `liandan jobs` shows (one
    /// indexed lookup per job, off the lock).
    pub async fn fill_last_attempts(&self, jobs: &mut [pb::Job]) -> Result<(), CoreError> {
        let keys: Vec<(usize, String, u64)> = jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| j.attempt > 0)
            .map(|(i, j)| (i, j.id.clone(), j.attempt))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let found = self
            .store
            .read(move |c| {
                let mut out = Vec::with_capacity(keys.len());
                for (i, job, attempt) in keys {
                    if let Some(r) = c.attempt(&job, attempt)? {
                        let mut a = attempt_info(r);
                        // Cut by bytes (on a character boundary): the page reserved them.
                        let mut cut = a.message.len().min(LISTED_MESSAGE_BYTES);
                        while !a.message.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        a.message.truncate(cut);
                        out.push((i, a));
                    }
                }
                Ok(out)
            })
            .await?;
        for (i, a) in found {
            jobs[i].last_attempt = Some(a);
        }
        Ok(())
    }

    /// Bytes of items one listing page holds at most: a quarter of the
    /// message limit, at most [`PAGE_BYTES`].
    pub fn page_bytes(&self) -> usize {
        (self.cfg.max_message_bytes / 4).min(PAGE_BYTES)
    }

    pub fn list_sweeps(&self) -> Vec<pb::Sweep> {
        let st = self.lock();
        let mut v: Vec<pb::Sweep> = st.sweeps.keys().map(|k| sweep_info(&st, k)).collect();
        v.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        v
    }

    /// Every job of a sweep (in process; the API pages, [`Core::list_jobs_page`]).
    pub fn list_jobs(&self, sweep: &str, state: &str) -> Result<Vec<pb::Job>, CoreError> {
        let filter = job_state_filter(state)?;
        let st = self.lock();
        let sid = self.sweep_id(&st, sweep)?;
        Ok(st.sweeps[&sid]
            .jobs
            .iter()
            .filter_map(|j| st.jobs.get(j).map(|m| (j, m)))
            .filter(|(_, m)| filter.is_none_or(|f| m.state == f))
            .map(|(j, m)| job_info(j, m))
            .collect())
    }

    /// A job with its attempts.
    pub async fn get_job(&self, id: &str) -> Result<pb::Job, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let mut info = {
            let st = self.lock();
            let m = st.jobs.get(&jid).ok_or_else(|| CoreError::NotFound {
                kind: "job",
                id: jid.to_string(),
                hint: "jobs SWEEP",
            })?;
            job_info(&jid, m)
        };
        self.store.barrier().await?;
        let key = jid.to_string();
        info.attempts = self
            .store
            .read(move |c| Ok(c.attempts(&key)?.into_iter().map(attempt_info).collect()))
            .await?;
        Ok(info)
    }

    /// The current attempt of a job and whether it has ended (for log following).
    pub fn job_progress(&self, id: &JobId) -> Option<(u64, bool)> {
        let st = self.lock();
        st.jobs
            .get(id)
            .map(|m| (m.attempt.0, m.state.is_terminal()))
    }

    /// The numbers a job's attempts have had: its first (one above its
    /// sweep's floor, since a sweep resubmitted after a delete numbers above
    /// the old one's) and its current (below the first until it has run).
    pub fn attempt_range(&self, id: &JobId) -> Option<(u64, u64)> {
        let st = self.lock();
        let m = st.jobs.get(id)?;
        let floor = st.sweeps.get(&m.sweep).map_or(0, |s| s.attempt_floor);
        Some((floor + 1, m.attempt.0))
    }

    /// Whether a job waits in the queue for its next attempt.
    pub fn job_queued(&self, id: &JobId) -> bool {
        let st = self.lock();
        st.jobs.get(id).is_some_and(|m| m.state == JobState::Queued)
    }

    /// The sweep id a user named (id or name), checked to exist.
    pub fn resolve_sweep(&self, sweep: &str) -> Result<SweepId, CoreError> {
        let st = self.lock();
        self.sweep_id(&st, sweep)
    }

    /// One chunk of results: jobs `from..from + limit` of the sweep, with the
    /// parameters of trials not in `sent` (which it extends). The lock is held
    /// per chunk only, so a million-job listing never stalls the scheduler.
    pub fn results_chunk(
        &self,
        sid: &SweepId,
        from: usize,
        limit: usize,
        sent: &mut HashSet<TrialId>,
    ) -> Result<(pb::GetResultsResponse, bool), CoreError> {
        let st = self.lock();
        let s = sweep_mem(&st, sid)?;
        let end = (from + limit).min(s.jobs.len());
        let mut chunk = pb::GetResultsResponse {
            sweep: (from == 0).then(|| sweep_info(&st, sid)),
            jobs: Vec::with_capacity(end.saturating_sub(from)),
            trials: Vec::new(),
        };
        for j in &s.jobs[from.min(end)..end] {
            let Some(m) = st.jobs.get(j) else { continue };
            if sent.insert(m.trial.clone()) {
                chunk.trials.push(pb::TrialParams {
                    trial_id: m.trial.to_string(),
                    params_json: m.params_json.to_string(),
                });
            }
            chunk.jobs.push(pb::JobResult {
                job_id: j.to_string(),
                trial_id: m.trial.to_string(),
                seed: m.seed,
                state: m.state.as_str().into(),
                params_json: String::new(),
                final_metric: m.final_metric,
                best_metric: m.best_metric,
            });
        }
        Ok((chunk, end >= s.jobs.len()))
    }

    /// The sweep's trials ranked by their seed mean (best first, `limit` of
    /// them, 0 = all), then trials without a value in submission order, in
    /// chunks of `chunk` trials; the first chunk carries the sweep and totals.
    /// One pass over the sweep's trials under the lock, none over its jobs
    /// unless trials without a value are asked for.
    pub fn trial_results(
        &self,
        sid: &SweepId,
        best: bool,
        limit: usize,
        chunk: usize,
    ) -> Result<Vec<pb::GetTrialResultsResponse>, CoreError> {
        let st = self.lock();
        let s = sweep_mem(&st, sid)?;
        let maximize = s
            .spec
            .metric
            .as_ref()
            .is_some_and(|m| m.goal == Goal::Maximize);
        let ranking = s.outcomes.rank(maximize, best, limit);
        let mut trials: Vec<pb::TrialResult> = ranking
            .top
            .iter()
            .map(|(id, t)| pb::TrialResult {
                trial_id: id.to_string(),
                params_json: t.params_json.to_string(),
                values: t
                    .values(best)
                    .into_iter()
                    .map(|(seed, value)| pb::SeedValue { seed, value })
                    .collect(),
            })
            .collect();
        if limit == 0 || trials.len() < limit {
            let mut seen = HashSet::new();
            for jid in &s.jobs {
                if limit > 0 && trials.len() >= limit {
                    break;
                }
                let Some(m) = st.jobs.get(jid) else { continue };
                if !s.outcomes.has_value(&m.trial, best) && seen.insert(&m.trial) {
                    trials.push(pb::TrialResult {
                        trial_id: m.trial.to_string(),
                        params_json: m.params_json.to_string(),
                        values: Vec::new(),
                    });
                }
            }
        }
        let mut chunks = Vec::new();
        let mut rest = trials.into_iter().peekable();
        while chunks.is_empty() || rest.peek().is_some() {
            chunks.push(pb::GetTrialResultsResponse {
                trials: rest.by_ref().take(chunk.max(1)).collect(),
                ..Default::default()
            });
        }
        let first = &mut chunks[0];
        first.sweep = Some(sweep_info(&st, sid));
        first.trials_total = s.trials;
        first.trials_ranked = ranking.ranked as u64;
        first.jobs_without_value = (s.jobs.len() as u64).saturating_sub(ranking.values as u64);
        first.share_hyperparameters = ranking.shares.as_ref().map(|x| x.hyperparameters);
        first.share_seeds = ranking.shares.as_ref().map(|x| x.seeds);
        Ok(chunks)
    }

    pub fn refused_stale(&self) -> u64 {
        self.lock().refused_stale
    }

    pub fn list_workers(&self) -> Vec<pb::Worker> {
        let st = self.lock();
        st.workers
            .iter()
            .map(|(id, w)| worker_info(id, w))
            .collect()
    }
}

pub(crate) fn checkpoint_info(c: &CheckpointRow) -> pb::Checkpoint {
    pb::Checkpoint {
        job_id: c.job_id.clone(),
        attempt: c.attempt,
        step: c.step,
        size: c.size,
        blake3: c.blake3.clone(),
        metric: c.metric,
        created_at: c.created_at,
    }
}

fn job_info(id: &JobId, m: &JobMem) -> pb::Job {
    pb::Job {
        id: id.to_string(),
        sweep_id: m.sweep.to_string(),
        trial_id: m.trial.to_string(),
        seed: m.seed,
        state: m.state.as_str().into(),
        attempt: m.attempt.0,
        retries_used: m.retries_used as u64,
        params_json: m.params_json.to_string(),
        attempts: Vec::new(),
        final_metric: m.final_metric,
        best_metric: m.best_metric,
        worker_id: m.worker.as_ref().map(|w| w.to_string()).unwrap_or_default(),
        last_attempt: None,
    }
}

/// Bytes a page keeps free per job with an attempt for its `last_attempt` (filled in
/// after the page is cut, from the store).
const LAST_ATTEMPT_BYTES: usize = 320;

/// Bytes of an attempt's message a listing carries.
const LISTED_MESSAGE_BYTES: usize = 200;

/// A stored attempt as the wire's Attempt (unset times and codes as 0).
fn attempt_info(r: crate::store::AttemptRecord) -> pb::Attempt {
    pb::Attempt {
        attempt: r.attempt,
        worker_id: r.worker_id,
        state: r.state,
        started_at: r.started_at,
        ended_at: r.ended_at.unwrap_or(0.0),
        exit_code: r.exit_code.unwrap_or(0),
        signal: r.signal.unwrap_or(0),
        message: r.message.unwrap_or_default(),
    }
}

pub(super) fn worker_info(id: &WorkerId, w: &WorkerMem) -> pb::Worker {
    let mut running: Vec<String> = w.running.iter().map(|j| j.to_string()).collect();
    running.sort();
    pb::Worker {
        id: id.to_string(),
        hostname: w.hostname.clone(),
        connected: w.session.is_some(),
        draining: w.draining,
        resources: Some(w.resources.clone()),
        running_jobs: running,
        last_seen: w.last_seen,
        free_cpu_slots: w.free_cpus,
        free_gpus: w.free_gpus.len() as u32,
        disk: w.disk,
    }
}

pub(super) fn sweep_info(st: &State, id: &SweepId) -> pb::Sweep {
    let Some(s) = st.sweeps.get(id) else {
        return pb::Sweep::default();
    };
    let k = s.counts;
    let c = pb::JobCounts {
        queued: k.get(JobState::Queued),
        running: k.get(JobState::Running),
        succeeded: k.get(JobState::Succeeded),
        failed: k.get(JobState::Failed),
        cancelled: k.get(JobState::Cancelled),
        pruned: k.get(JobState::Pruned),
        succeeded_without_metric: s.silent,
    };
    let search_done = s.search.as_ref().is_none_or(|x| !x.can_propose());
    let state = match s.state {
        SweepState::Cancelled => "cancelled",
        SweepState::Paused => "paused",
        // Done, and nothing of it succeeded: say so, not "finished".
        SweepState::Active
            if c.queued == 0
                && c.running == 0
                && search_done
                && c.succeeded == 0
                && c.failed > 0 =>
        {
            "failed"
        }
        SweepState::Active if c.queued == 0 && c.running == 0 && search_done => "finished",
        SweepState::Active
            if c.running == 0 && c.succeeded + c.failed + c.cancelled + c.pruned == 0 =>
        {
            "queued"
        }
        SweepState::Active => "running",
    };
    pb::Sweep {
        id: id.to_string(),
        name: s.name.clone(),
        state: state.into(),
        method: s.spec.method.as_str().into(),
        metric_name: s
            .spec
            .metric
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        metric_goal: s
            .spec
            .metric
            .as_ref()
            .map(|m| m.goal.as_str().to_string())
            .unwrap_or_default(),
        trials: s.trials,
        jobs: s.jobs.len() as u64,
        counts: Some(c),
        created_at: s.created_at,
        spec_json: s.spec_json.to_string(),
        algorithm: s.algorithm.clone(),
        unbounded: s.spec.is_lazy()
            && s.spec.run_cap.is_none()
            && s.search.as_ref().is_some_and(|x| x.can_propose())
            && s.state != SweepState::Cancelled,
        owner: s.owner.clone(),
    }
}
