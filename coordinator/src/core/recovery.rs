//! Recovery: memory rebuilt from the store at start, searches included.

use super::*;

/// Rebuilds memory from the database.
pub(super) fn load(store: &Store, cfg: &CoordinatorConfig) -> Result<State, CoreError> {
    let grace_deadline = Instant::now() + secs(cfg.restart_grace_secs);
    store
        .read_now(|c| {
            let mut st = State::default();
            {
                let mut q = c.prepare("SELECT id, name, spec_json, spec_hash, state, algorithm, created_at, owner FROM sweeps")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, f64>(6)?, r.get::<_, String>(7)?)))?;
                for row in rows {
                    let (id, name, spec_json, spec_hash, state, algorithm, created_at, owner) = row?;
                    let (Ok(sid), Ok(spec)) = (SweepId::parse(&id), serde_json::from_str::<SweepSpec>(&spec_json)) else {
                        tracing::error!(sweep = %id, "stored sweep cannot be read; skipping it");
                        continue;
                    };
                    st.sweeps.insert(
                        sid,
                        SweepMem {
                            name,
                            owner,
                            attempt_floor: 0,
                            run_spec_json: run_spec_json(&spec),
                            spec: Arc::new(spec),
                            spec_json: spec_json.into(),
                            spec_hash,
                            state: SweepState::parse(&state).unwrap_or(SweepState::Active),
                            algorithm,
                            created_at,
                            trials: 0,
                            jobs: Vec::new(),
                            ready: VecDeque::new(),
                            running: 0,
                            counts: [0; 6],
                            silent: 0,
                            search: None,
                            outcomes: Outcomes::default(),
                        proposing: false,
                        },
                    );
                }
            }
            {
                let mut q = c.prepare("SELECT id, max_attempt FROM deleted_sweeps")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                for row in rows {
                    let (id, max) = row?;
                    if let Ok(sid) = SweepId::parse(&id) {
                        if let Some(s) = st.sweeps.get_mut(&sid) {
                            s.attempt_floor = max as u64;
                        }
                        st.attempt_floors.insert(sid, max as u64);
                    }
                }
            }
            let mut params: HashMap<String, Arc<str>> = HashMap::new();
            // Trials of sweeps with search state, by sweep, in index order.
            let mut trial_order: HashMap<SweepId, Vec<(i64, TrialId)>> = HashMap::new();
            {
                let mut q = c.prepare("SELECT id, sweep_id, params_json, idx FROM trials")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?)))?;
                for row in rows {
                    let (id, sweep, p, idx) = row?;
                    if let Some((sid, s)) = SweepId::parse(&sweep).ok().and_then(|sid| st.sweeps.get_mut(&sid).map(|s| (sid, s))) {
                        s.trials += 1;
                        if s.spec.has_search() {
                            if let Ok(tid) = TrialId::parse(&id) {
                                trial_order.entry(sid).or_default().push((idx, tid));
                            }
                        }
                    }
                    params.insert(id, p.into());
                }
            }
            {
                let mut q = c.prepare("SELECT id, sweep_id, trial_id, ord, seed, state, attempt, retries_used, worker_id, cancel_requested, final_metric, best_metric, result_recorded, seq, worker_deaths FROM jobs ORDER BY seq")?;
                let rows = q.query_map([], |r| {
                    Ok(JobRow {
                        id: r.get(0)?,
                        sweep_id: r.get(1)?,
                        trial_id: r.get(2)?,
                        ord: r.get(3)?,
                        seed: r.get(4)?,
                        state: r.get(5)?,
                        attempt: r.get::<_, i64>(6)? as u64,
                        retries_used: r.get(7)?,
                        worker_id: r.get(8)?,
                        cancel_requested: r.get::<_, i64>(9)?,
                        final_metric: r.get(10)?,
                        best_metric: r.get(11)?,
                        result_recorded: r.get(12)?,
                        seq: r.get(13)?,
                        worker_deaths: r.get(14)?,
                    })
                })?;
                for row in rows {
                    let j = row?;
                    st.next_seq = st.next_seq.max(j.seq + 1);
                    let (Ok(jid), Ok(sid), Ok(tid), Some(state)) = (JobId::parse(&j.id), SweepId::parse(&j.sweep_id), TrialId::parse(&j.trial_id), JobState::parse(&j.state)) else {
                        // Only this binary writes these rows; say so loudly rather than drop a job quietly.
                        tracing::error!(job = %j.id, state = %j.state, "stored job cannot be read; it is not scheduled (is the database from a newer liandan?)");
                        continue;
                    };
                    let worker = j.worker_id.as_deref().and_then(|w| WorkerId::parse(w).ok());
                    let Some(s) = st.sweeps.get_mut(&sid) else {
                        tracing::error!(job = %jid, sweep = %sid, "stored job belongs to a sweep that cannot be read; it is not scheduled");
                        continue;
                    };
                    s.jobs.push(jid.clone());
                    s.counts[state_index(state)] += 1;
                    let params_json = params.get(&j.trial_id).cloned().unwrap_or_else(|| "{}".into());
                    let mut cpus = 0;
                    match state {
                        JobState::Queued => s.ready.push_back(jid.clone()),
                        JobState::Succeeded => {
                            if j.final_metric.is_none() && s.spec.metric.is_some() {
                                s.silent += 1;
                            }
                            s.outcomes.record(&tid, &params_json, j.seed, j.final_metric, j.best_metric)
                        }
                        JobState::Running => {
                            s.running += 1;
                            let r = &s.spec.liandan.resources;
                            cpus = if r.gpus == 0 { r.cpus } else { 0 };
                        }
                        _ => {}
                    }
                    if let (JobState::Running, Some(w)) = (state, &worker) {
                        st.workers
                            .entry(w.clone())
                            .or_insert_with(|| WorkerMem::unknown(grace_deadline))
                            .running
                            .insert(jid.clone());
                    }
                    st.jobs.insert(
                        jid,
                        JobMem {
                            seq: j.seq,
                            sweep: sid,
                            trial: tid,
                            ord: j.ord,
                            seed: j.seed,
                            state,
                            attempt: j.attempt,
                            retries_used: j.retries_used,
                            worker_deaths: j.worker_deaths,
                            worker,
                            stop: StopRequest::from_db(j.cancel_requested),
                            final_metric: j.final_metric,
                            best_metric: j.best_metric,
                            metric_not_finite: false,
                            result_recorded: j.result_recorded,
                            params_json,
                            gpus: Vec::new(),
                            cpus,
                            assigned_at: (state == JobState::Running).then(Instant::now),
                        },
                    );
                }
            }
            {
                let mut q = c.prepare("SELECT name, role, hash, created_at FROM tokens")?;
                let rows = q.query_map([], |r| {
                    Ok(IssuedToken {
                        name: r.get(0)?,
                        admin: r.get::<_, String>(1)? == "admin",
                        hash: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                })?;
                for t in rows {
                    let t = t?;
                    st.tokens.insert(t.name.clone(), t);
                }
            }
            {
                let mut q = c.prepare("SELECT id, hostname, resources_json, acked_seq, draining, last_seen, cert_bound, secret_hash FROM workers")?;
                let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, bool>(4)?, r.get::<_, f64>(5)?, r.get::<_, bool>(6)?, r.get::<_, Option<String>>(7)?)))?;
                for row in rows {
                    let (id, hostname, res, acked, draining, last_seen, cert_bound, secret_hash) = row?;
                    let Ok(wid) = WorkerId::parse(&id) else { continue };
                    let w = st.workers.entry(wid).or_insert_with(|| WorkerMem::unknown(grace_deadline));
                    w.hostname = hostname;
                    w.resources = resources_from_json(&res);
                    w.acked_seq = acked as u64;
                    w.draining = draining;
                    w.last_seen = last_seen;
                    w.cert_bound = cert_bound;
                    w.secret_hash = secret_hash;
                    w.lease_deadline = grace_deadline;
                }
            }
            {
                let mut q = c.prepare("SELECT job_id, attempt, step, size, blake3, metric, created_at, file FROM checkpoints ORDER BY job_id, step")?;
                let rows = q.query_map([], |r| {
                    Ok(CheckpointRow {
                        job_id: r.get(0)?,
                        attempt: r.get::<_, i64>(1)? as u64,
                        step: r.get(2)?,
                        size: r.get::<_, i64>(3)? as u64,
                        blake3: r.get(4)?,
                        metric: r.get(5)?,
                        created_at: r.get(6)?,
                        file: r.get(7)?,
                    })
                })?;
                for row in rows {
                    let row = row?;
                    if let Ok(jid) = JobId::parse(&row.job_id) {
                        st.checkpoints.entry(jid).or_default().push(row);
                    }
                }
            }
            load_search(c, &mut st, trial_order)?;
            st.refused_stale = crate::store::counter(c, REFUSED_STALE)? as u64;
            Ok(st)
        })
        .map_err(CoreError::from)
}

/// Rebuilds the search state of sweeps that adapt or stop early: trials in
/// index order with their jobs, metric histories from the stored metric rows,
/// and whether metric.target was already reached.
fn load_search(
    c: &rusqlite::Connection,
    st: &mut State,
    mut trial_order: HashMap<SweepId, Vec<(i64, TrialId)>>,
) -> Result<(), rusqlite::Error> {
    let sids: Vec<SweepId> = st
        .sweeps
        .iter()
        .filter(|(_, s)| s.spec.has_search())
        .map(|(k, _)| k.clone())
        .collect();
    for sid in sids {
        let Some(mut search) = st
            .sweeps
            .get(&sid)
            .and_then(|s| SweepSearch::for_spec(&s.spec))
        else {
            continue;
        };
        let mut order = trial_order.remove(&sid).unwrap_or_default();
        order.sort();
        let Some(s) = st.sweeps.get(&sid) else {
            continue;
        };
        let mut by_trial: HashMap<TrialId, Vec<(i64, JobId)>> = HashMap::new();
        for j in &s.jobs {
            if let Some(m) = st.jobs.get(j) {
                by_trial
                    .entry(m.trial.clone())
                    .or_default()
                    .push((m.ord, j.clone()));
            }
        }
        for (_, tid) in order {
            let mut jobs = by_trial.remove(&tid).unwrap_or_default();
            jobs.sort();
            let params: serde_json::Value = jobs
                .first()
                .and_then(|(_, j)| st.jobs.get(j))
                .and_then(|m| serde_json::from_str(&m.params_json).ok())
                .unwrap_or(serde_json::Value::Null);
            search.add_trial(tid, &params, jobs.into_iter().map(|(_, j)| j).collect());
        }
        if let Some(target) = s.spec.metric.as_ref().and_then(|m| m.target) {
            search.closed =
                (0..search.trials.len()).any(|t| reached_target(&st.jobs, &search, t, target));
        }
        // Histories matter only while something may still be judged: a sweep with
        // no queued or running job and no trial left to propose skips its metric rows.
        let live =
            s.counts[state_index(JobState::Queued)] + s.counts[state_index(JobState::Running)] > 0
                || (search.can_propose() && s.state != SweepState::Cancelled);
        if let (true, Some(_), Some(metric)) = (live, &s.spec.early_terminate, &s.spec.metric) {
            let mut q =
                c.prepare("SELECT step, json FROM metrics WHERE job_id = ?1 ORDER BY id")?;
            for t in 0..search.trials.len() {
                let (tid, jobs) = (search.trials[t].id.clone(), search.trials[t].jobs.clone());
                for j in jobs {
                    let rows = q.query_map([j.to_string()], |r| {
                        Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, String>(1)?))
                    })?;
                    for row in rows {
                        let (step, json) = row?;
                        let value = serde_json::from_str::<serde_json::Value>(&json)
                            .ok()
                            .and_then(|v| v.get(&metric.name).and_then(|x| x.as_f64()))
                            .filter(|x| x.is_finite());
                        if let Some(x) = value {
                            let step = step.unwrap_or_else(|| search.next_step(&tid, &j));
                            search.record(&tid, &j, step, x);
                        }
                    }
                }
            }
            search.settle_loaded();
            // A trial pruned before the restart stays pruned.
            for t in 0..search.trials.len() {
                let pruned = search.trials[t].jobs.iter().any(|j| {
                    st.jobs.get(j).is_some_and(|m| {
                        m.state == JobState::Pruned || m.stop == StopRequest::Prune
                    })
                });
                search.trials[t].stopped = pruned;
            }
        }
        if let Some(s) = st.sweeps.get_mut(&sid) {
            s.search = Some(search);
        }
    }
    Ok(())
}
