//! The sweep book: intake (validate, expand, store a sweep in one transaction) and
//! control (pause, resume, cancel, delete, retry), with a job's cancel.

use super::*;

impl Core {
    /// Validates, expands and stores a sweep in one transaction. The same spec
    /// under the same name returns the existing sweep (`created = false`).
    pub async fn submit(
        &self,
        text: &str,
        format: &str,
        name: &str,
    ) -> Result<(pb::Sweep, bool, Vec<String>), CoreError> {
        self.submit_as(text, format, name, "").await
    }

    /// [`Core::submit`] for the user `owner`, whose sweep it becomes.
    pub async fn submit_as(
        &self,
        text: &str,
        format: &str,
        name: &str,
        owner: &str,
    ) -> Result<(pb::Sweep, bool, Vec<String>), CoreError> {
        let owner = owner.to_string();
        let format = self.admit_spec(text, format)?;
        // Parsing and expanding a big sweep takes seconds of CPU: not on a runtime thread.
        let (text, requested) = (text.to_string(), name.to_string());
        let t0 = std::time::Instant::now();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, CoreError> {
            let c = sweep::check(&text, format, &requested)
                .map_err(|e| CoreError::InvalidArgument(format!("invalid sweep spec: {e}")))?;
            let (spec_json, spec_hash) = sweep::spec_identity(&c.spec);
            Ok((
                c.warnings,
                c.spec,
                spec_json,
                spec_hash,
                c.name,
                c.sweep_id,
                c.expansion,
            ))
        })
        .await
        .map_err(|e| CoreError::FailedPrecondition(format!("expanding the sweep: {e}")))??;
        let (warnings, spec, spec_json, spec_hash, name, sweep_id, expansion) = prepared;
        tracing::debug!(
            jobs = expansion.jobs.len(),
            secs = t0.elapsed().as_secs_f64(),
            "sweep parsed and expanded"
        );
        let spec = Arc::new(spec);
        // Sequence numbers for the jobs, reserved in a moment under the lock
        // (a refused submit leaves a gap, which is harmless: they only order rows).
        let n = expansion.jobs.len() as i64;
        let reserved = {
            let mut st = self.lock();
            match st.sweeps.get(&sweep_id) {
                // A resubmit (the usual idempotent retry) answers before any building.
                Some(existing) if existing.spec_hash == spec_hash => {
                    Err(sweep_info(&st, &sweep_id))
                }
                _ => {
                    let f = st.next_seq;
                    st.next_seq += n;
                    Ok((f, st.attempt_floors.get(&sweep_id).copied().unwrap_or(0)))
                }
            }
        };
        let (first_seq, floor) = match reserved {
            Ok(f) => f,
            Err(info) => return self.committed((info, false, warnings)).await,
        };
        // Everything a million-job sweep needs in memory and in the batch is
        // built here, off the lock and off the runtime threads; the lock is
        // then held only to check and insert.
        let built = {
            let (spec, sweep_id, name, spec_json, spec_hash, owner) = (
                spec.clone(),
                sweep_id.clone(),
                name.clone(),
                spec_json.clone(),
                spec_hash.clone(),
                owner.clone(),
            );
            let gate = self.build_gate.clone();
            tokio::task::spawn_blocking(move || {
                gate.wait_open();
                let who = NewSweep {
                    sweep_id,
                    name,
                    owner,
                    spec_json,
                    spec_hash,
                };
                build_sweep(spec, who, expansion, first_seq, floor)
            })
            .await
            .map_err(|e| CoreError::FailedPrecondition(format!("building the sweep: {e}")))?
        };
        let Built {
            ops,
            jobs: new_jobs,
            sweep: new_sweep,
        } = built;
        let decided = {
            let mut st = self.lock();
            if let Some(existing) = st.sweeps.get(&sweep_id) {
                if existing.spec_hash == spec_hash {
                    // "Exists" only once the first submit's commit is durable.
                    Err(sweep_info(&st, &sweep_id))
                } else {
                    return Err(CoreError::AlreadyExists(format!(
                        "a different sweep named {name:?} exists ({sweep_id}); submit with --name to choose another name"
                    )));
                }
            } else {
                if let Some((j, _)) = new_jobs.iter().find(|(j, _)| st.jobs.contains_key(j)) {
                    return Err(CoreError::AlreadyExists(format!("job id {j} already belongs to another sweep (a hash collision); submit under another --name")));
                }
                self.check_queue_quota(&st, &owner, new_jobs.len() as u64)?;
                st.jobs.reserve(new_jobs.len());
                st.jobs.extend(new_jobs);
                st.sweeps.insert(sweep_id.clone(), new_sweep);
                let mut fx = Effects {
                    ops,
                    sends: Vec::new(),
                };
                fx.absorb(self.dispatch(&mut st));
                Ok(self.enqueue(fx))
            }
        };
        let pending = match decided {
            Ok(v) => v,
            Err(info) => return self.committed((info, false, warnings)).await,
        };
        tracing::debug!(
            secs = t0.elapsed().as_secs_f64(),
            "sweep in memory; committing"
        );
        self.finish(pending).await?;
        tracing::debug!(secs = t0.elapsed().as_secs_f64(), "sweep committed");
        let info = sweep_info(&self.lock(), &sweep_id);
        self.committed((info, true, warnings)).await
    }

    /// A sweep file this coordinator takes: within max_spec_bytes, in a
    /// format it reads.
    fn admit_spec(&self, text: &str, format: &str) -> Result<Format, CoreError> {
        let max = self.cfg.max_spec_bytes;
        if max > 0 && text.len() as u64 > max {
            return Err(CoreError::ResourceExhausted(format!(
                "the sweep file is {} bytes, over max_spec_bytes ({max}): listings and every worker carry it; generate long value lists with a distribution or a smaller grid, or raise max_spec_bytes",
                text.len()
            )));
        }
        Format::parse(format).ok_or_else(|| {
            CoreError::InvalidArgument(format!("unknown spec format {format:?}; use yaml or toml"))
        })
    }

    /// `owner`'s queued jobs plus `adding` stay within max_queued_jobs_per_user.
    fn check_queue_quota(&self, st: &State, owner: &str, adding: u64) -> Result<(), CoreError> {
        let quota = self.cfg.max_queued_jobs_per_user;
        if quota == 0 || owner.is_empty() {
            return Ok(());
        }
        let queued: u64 = st
            .sweeps
            .values()
            .filter(|s| s.owner == owner)
            .map(|s| s.counts.get(JobState::Queued))
            .sum();
        if queued + adding > quota {
            return Err(CoreError::ResourceExhausted(format!(
                "{owner} has {queued} queued job(s) and this sweep adds {adding}: over max_queued_jobs_per_user ({quota}); wait for jobs to run, cancel or delete a sweep, or ask an admin to raise the quota"
            )));
        }
        Ok(())
    }

    pub(super) fn sweep_id(&self, st: &State, id: &str) -> Result<SweepId, CoreError> {
        let nf = || CoreError::NotFound {
            kind: "sweep",
            id: id.chars().take(80).collect(),
            hint: "status",
        };
        let sid = match SweepId::parse(id) {
            Ok(s) if st.sweeps.contains_key(&s) => s,
            // Also accept the sweep's name, or a unique prefix of its id.
            _ => match st.sweeps.iter().find(|(_, s)| s.name == id) {
                Some((k, _)) => k.clone(),
                None if id.starts_with("sw-") => {
                    let full =
                        unique_prefix("sweep", id, st.sweeps.keys().map(|k| k.as_str()), "status")?;
                    SweepId::parse(&full).map_err(|_| nf())?
                }
                None => return Err(nf()),
            },
        };
        if st.sweeps.contains_key(&sid) {
            Ok(sid)
        } else {
            Err(nf())
        }
    }

    /// Deletes a sweep: its jobs, attempts, logs, metrics and checkpoint rows
    /// (the files go with the next orphan scan), remembering its highest
    /// attempt number so that a sweep submitted again under its name starts
    /// above it. Refused while a job runs (cancel first: a running job holds
    /// its worker's GPUs until its process is gone), and while jobs are
    /// queued unless `force`. `permit` judges the caller against the owner,
    /// under the same lock as the deletion.
    pub async fn delete_sweep(
        &self,
        id: &str,
        force: bool,
        permit: Permit<'_>,
    ) -> Result<(pb::Sweep, u64), CoreError> {
        let (pending, info, n) = {
            let mut st = self.lock();
            let sid = self.sweep_id(&st, id)?;
            permit(&st.sweeps[&sid].owner)?;
            let info = sweep_info(&st, &sid);
            let c = info.counts.unwrap_or_default();
            // Running jobs hold their worker's GPUs until their processes
            // are gone: a sweep goes only once none runs.
            if c.running > 0 {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} has {} running job(s); cancel it first (liandan cancel {sid}), or `liandan delete --force`, which cancels and waits for them",
                    c.running
                )));
            }
            if c.queued > 0 && !force {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} has {} queued job(s); cancel it first (liandan cancel {sid}) or delete with --force",
                    c.queued
                )));
            }
            let Some(sweep) = st.sweeps.remove(&sid) else {
                return Err(CoreError::NotFound {
                    kind: "sweep",
                    id: sid.to_string(),
                    hint: "status",
                });
            };
            let mut max_attempt = sweep.attempt_floor;
            for jid in &sweep.jobs {
                if let Some(job) = st.jobs.remove(jid) {
                    max_attempt = max_attempt.max(job.attempt.0);
                }
                st.checkpoints.remove(jid);
            }
            st.attempt_floors.insert(sid.clone(), max_attempt);
            tracing::info!(sweep = %sid, name = %sweep.name, jobs = sweep.jobs.len(), "sweep deleted");
            let op = Op::DeleteSweep {
                id: sid.to_string(),
                max_attempt,
            };
            (self.enqueue(Effects::of(op)), info, sweep.jobs.len() as u64)
        };
        self.finish(pending).await?;
        Ok((info, n))
    }

    /// Pauses, resumes or cancels a sweep.
    pub async fn set_sweep_state(&self, id: &str, new: SweepState) -> Result<pb::Sweep, CoreError> {
        self.set_sweep_state_as(id, new, &anyone).await
    }

    /// [`Core::set_sweep_state`] if `permit` allows it for the sweep's owner.
    pub async fn set_sweep_state_as(
        &self,
        id: &str,
        new: SweepState,
        permit: Permit<'_>,
    ) -> Result<pb::Sweep, CoreError> {
        let (pending, sid) = {
            let mut st = self.lock();
            let sid = self.sweep_id(&st, id)?;
            permit(&st.sweeps[&sid].owner)?;
            let cur = st.sweeps[&sid].state;
            if cur == SweepState::Cancelled && new != SweepState::Cancelled {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} was cancelled; submit it again under a new name to rerun it"
                )));
            }
            // A sweep that is done keeps its history: pausing or cancelling
            // it would relabel finished work.
            let info = sweep_info(&st, &sid);
            if sweep::shown_state_is_done(&info.state) && new != SweepState::Active {
                let c = info.counts.unwrap_or_default();
                let verb = if new == SweepState::Paused {
                    "pause"
                } else {
                    "cancel"
                };
                let again = match st.sweeps.get(&sid) {
                    Some(m) if c.failed > 0 && m.spec.why_no_retry().is_none() => {
                        format!("`liandan retry {sid}` runs its failed jobs again, ")
                    }
                    _ => String::new(),
                };
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} is {} ({} succeeded, {} failed): there is nothing left to {verb}; {again}`liandan delete {sid}` removes it",
                    info.state, c.succeeded, c.failed
                )));
            }
            let mut fx = Effects::of(Op::SetSweepState {
                id: sid.to_string(),
                state: new.as_str().into(),
            });
            if let Some(s) = st.sweeps.get_mut(&sid) {
                s.state = new;
            }
            fx.absorb(self.dispatch(&mut st));
            (self.enqueue(fx), sid)
        };
        self.finish(pending).await?;
        if new == SweepState::Cancelled {
            // The sweep is cancelled (nothing more starts); its jobs end in
            // chunks, each under the lock for a moment, so a million-job
            // cancel never stalls heartbeats. The chunks run in a task the
            // caller cannot cancel (a client gone mid-RPC must not leave the
            // sweep half-cancelled); a crash between chunks is finished at
            // start (`Op::FinishCancels`).
            let Some(me) = self.me.upgrade() else {
                return Err(CoreError::FailedPrecondition(
                    "the coordinator is stopping".into(),
                ));
            };
            let chunks = tokio::spawn({
                let sid = sid.clone();
                async move { me.cancel_chunks(&sid).await }
            });
            chunks.await.map_err(|e| {
                CoreError::FailedPrecondition(format!("cancelling the sweep: {e}"))
            })??;
        }
        let info = sweep_info(&self.lock(), &sid);
        self.committed(info).await
    }

    /// Ends every job of cancelled sweep `sid`, [`CANCEL_CHUNK`] per hold of the lock.
    async fn cancel_chunks(&self, sid: &SweepId) -> Result<(), CoreError> {
        {
            let sid = sid.clone();
            let mut from = 0;
            loop {
                let (pending, next, total) = {
                    let mut st = self.lock();
                    let Some(s) = st.sweeps.get(&sid) else { break };
                    let total = s.jobs.len();
                    let end = (from + CANCEL_CHUNK).min(total);
                    let ids: Vec<JobId> = s.jobs[from.min(end)..end].to_vec();
                    let mut fx = Effects::default();
                    for j in ids {
                        fx.absorb(self.stop_job_locked(&mut st, &j, StopRequest::Cancel));
                    }
                    (self.enqueue(fx), end, total)
                };
                self.finish(pending).await?;
                if next >= total {
                    break;
                }
                from = next;
            }
        }
        Ok(())
    }

    /// `liandan retry`: the sweep's failed jobs (or the one job, failed or
    /// cancelled) are queued again with their retries reset; their attempts
    /// go on from their last number, so nothing an old attempt sends is taken
    /// for a new one's. Returns how many were queued and the sweep.
    pub async fn retry(
        &self,
        sweep: &str,
        job: Option<&str>,
        permit: Permit<'_>,
    ) -> Result<(u64, pb::Sweep), CoreError> {
        let (pending, sid, n) = {
            let mut st = self.lock();
            let sid = self.sweep_id(&st, sweep)?;
            let s = &st.sweeps[&sid];
            permit(&s.owner)?;
            if s.state == SweepState::Cancelled {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} was cancelled: its jobs do not run again; submit it under a new name"
                )));
            }
            if let Some(why) = s.spec.why_no_retry() {
                return Err(CoreError::FailedPrecondition(format!(
                    "sweep {sid} cannot run jobs again: {why}; submit the file again under a new name (`liandan submit FILE --name NEW`)"
                )));
            }
            let targets: Vec<JobId> = match job {
                Some(j) => {
                    let jid =
                        JobId::parse(j).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
                    match st.jobs.get(&jid) {
                        Some(m) if m.sweep == sid => {
                            if !matches!(m.state, JobState::Failed | JobState::Cancelled) {
                                return Err(CoreError::FailedPrecondition(format!(
                                    "job {jid} is {}: only a failed or cancelled job runs again",
                                    m.state.as_str()
                                )));
                            }
                            vec![jid]
                        }
                        _ => {
                            return Err(CoreError::NotFound {
                                kind: "job",
                                id: jid.to_string(),
                                hint: "jobs SWEEP",
                            })
                        }
                    }
                }
                None => s
                    .jobs
                    .iter()
                    .filter(|j| st.jobs.get(*j).is_some_and(|m| m.state == JobState::Failed))
                    .cloned()
                    .collect(),
            };
            let mut fx = Effects::default();
            for jid in &targets {
                let Some(m) = st.jobs.get_mut(jid) else {
                    continue;
                };
                let Some(next) = m.state.on(JobEvent::Retry) else {
                    continue;
                };
                let from = m.state;
                m.state = next;
                m.retries_used = 0;
                m.worker_deaths = 0;
                m.stop = StopRequest::None;
                fx.op(Op::UpdateJob(m.update()));
                if let Some(s) = st.sweeps.get_mut(&sid) {
                    s.moved(from, next);
                    s.ready.push_back(jid.clone());
                }
            }
            tracing::info!(sweep = %sid, jobs = targets.len(), "jobs queued again (retry)");
            fx.absorb(self.dispatch(&mut st));
            (self.enqueue(fx), sid, targets.len() as u64)
        };
        self.finish(pending).await?;
        let info = sweep_info(&self.lock(), &sid);
        Ok((n, info))
    }

    /// Cancels or prunes a job: a queued one ends now; a running one is asked
    /// to stop (its worker sends SIGTERM, then SIGKILL after the grace period)
    /// and ends when its attempt does. A cancel overrides an earlier prune.
    pub(super) fn stop_job_locked(&self, st: &mut State, id: &JobId, why: StopRequest) -> Effects {
        let mut fx = Effects::default();
        let Some(job) = st.jobs.get_mut(id) else {
            return fx;
        };
        let event = match why {
            StopRequest::None => return fx,
            StopRequest::Cancel => JobEvent::Cancel,
            StopRequest::Prune => JobEvent::Prune,
        };
        match job.state {
            JobState::Queued => {
                if let Some(next) = job.state.on(event) {
                    job.state = next;
                    fx.op(Op::UpdateJob(job.update()));
                    let sid = job.sweep.clone();
                    if let Some(s) = st.sweeps.get_mut(&sid) {
                        s.moved(JobState::Queued, next);
                    }
                }
            }
            JobState::Running
                if job.stop == StopRequest::None
                    || (why == StopRequest::Cancel && job.stop != StopRequest::Cancel) =>
            {
                job.stop = why;
                fx.op(Op::UpdateJob(job.update()));
                let attempt = job.attempt;
                if let Some(tx) = job
                    .worker
                    .as_ref()
                    .and_then(|w| st.workers.get(w))
                    .and_then(|w| w.session.as_ref())
                    .map(|s| s.tx.clone())
                {
                    fx.send(tx, cancel_msg(id, attempt, why));
                }
            }
            _ => {}
        }
        fx
    }

    pub async fn cancel_job(&self, id: &str) -> Result<pb::Job, CoreError> {
        self.cancel_job_as(id, &anyone).await
    }

    /// [`Core::cancel_job`] if `permit` allows it for the job's sweep's owner.
    pub async fn cancel_job_as(&self, id: &str, permit: Permit<'_>) -> Result<pb::Job, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let pending = {
            let mut st = self.lock();
            let Some(job) = st.jobs.get(&jid) else {
                return Err(CoreError::NotFound {
                    kind: "job",
                    id: jid.to_string(),
                    hint: "jobs SWEEP",
                });
            };
            permit(
                st.sweeps
                    .get(&job.sweep)
                    .map(|s| s.owner.as_str())
                    .unwrap_or(""),
            )?;
            let fx = self.stop_job_locked(&mut st, &jid, StopRequest::Cancel);
            self.enqueue(fx)
        };
        self.finish(pending).await?;
        self.get_job(id).await
    }
}

fn cancel_msg(id: &JobId, attempt: AttemptNo, why: StopRequest) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Cancel(crate::wire::cancel(
            id.as_str(),
            attempt,
            StopCause::Requested(why),
        ))),
    }
}

/// A sweep as submit inserts it: its batch, its jobs and its memory.
struct Built {
    ops: Vec<Op>,
    jobs: Vec<(JobId, JobMem)>,
    sweep: SweepMem,
}

/// Who a new sweep is: its id, name, owner and stored spec.
struct NewSweep {
    sweep_id: SweepId,
    name: String,
    owner: String,
    spec_json: String,
    spec_hash: String,
}

/// Builds a new sweep's batch and memory from its expansion (no lock held).
fn build_sweep(
    spec: Arc<SweepSpec>,
    who: NewSweep,
    expansion: sweep::Expansion,
    first_seq: i64,
    floor: u64,
) -> Built {
    let NewSweep {
        sweep_id,
        name,
        owner,
        spec_json,
        spec_hash,
    } = who;
    let created_at = now_secs();
    let mut ops = Vec::with_capacity(expansion.trials.len() + 2);
    ops.push(Op::InsertSweep {
        id: sweep_id.to_string(),
        name: name.clone(),
        spec_json: spec_json.clone(),
        spec_hash: spec_hash.clone(),
        method: spec.method.as_str().into(),
        algorithm: liandan_common::rng::ALGORITHM.into(),
        created_at,
        owner: owner.clone(),
    });
    let mut params_by_trial = HashMap::new();
    for t in &expansion.trials {
        let pj: Arc<str> = t.params.to_string().into();
        ops.push(Op::InsertTrial {
            id: t.id.to_string(),
            sweep_id: sweep_id.to_string(),
            idx: t.index as i64,
            params_json: pj.to_string(),
        });
        params_by_trial.insert(t.id.clone(), pj);
    }
    let mut jobs = Vec::with_capacity(expansion.jobs.len());
    let mut job_ids = Vec::with_capacity(expansion.jobs.len());
    for (ord, j) in expansion.jobs.iter().enumerate() {
        let params = params_by_trial
            .get(&j.trial)
            .cloned()
            .unwrap_or_else(|| "{}".into());
        let mut mem = JobMem::queued(
            first_seq + ord as i64,
            sweep_id.clone(),
            j.trial.clone(),
            j.seed,
            params,
        );
        mem.attempt = AttemptNo(floor);
        jobs.push((j.id.clone(), mem));
        job_ids.push(j.id.clone());
    }
    ops.push(Op::InsertJobs(NewJobs {
        sweep_id: sweep_id.clone(),
        first_seq,
        first_ord: 0,
        first_attempt: floor,
        jobs: expansion
            .jobs
            .iter()
            .map(|j| (j.id.clone(), j.trial.clone(), j.seed))
            .collect(),
    }));
    let mut search = SweepSearch::for_spec(&spec);
    if let Some(search) = search.as_mut() {
        let mut by_trial: HashMap<&TrialId, Vec<JobId>> = HashMap::new();
        for j in &expansion.jobs {
            by_trial.entry(&j.trial).or_default().push(j.id.clone());
        }
        for t in &expansion.trials {
            search.add_trial(
                t.id.clone(),
                &t.params,
                by_trial.remove(&t.id).unwrap_or_default(),
            );
        }
    }
    let sweep = SweepMem {
        search,
        name,
        owner,
        attempt_floor: floor,
        run_spec_json: run_spec_json(&spec),
        spec,
        spec_json: spec_json.into(),
        spec_hash,
        state: SweepState::Active,
        algorithm: liandan_common::rng::ALGORITHM.into(),
        created_at,
        trials: expansion.trials.len() as u64,
        ready: job_ids.iter().cloned().collect(),
        counts: {
            let mut c = StateCounts::default();
            c.add(JobState::Queued, job_ids.len() as u64);
            c
        },
        silent: 0,
        jobs: job_ids,
        outcomes: Outcomes::default(),
        proposing: false,
    };
    Built { ops, jobs, sweep }
}

pub(super) fn run_spec_json(spec: &SweepSpec) -> Arc<str> {
    let mut run = spec.clone();
    run.parameters.clear();
    serde_json::to_string(&run).unwrap_or_default().into()
}
