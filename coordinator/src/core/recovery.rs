//! Recovery: memory rebuilt from the store at start, searches included.

use super::*;
use crate::store::{Reader, SweepRecord, TrialRecord, WorkerRecord};

/// Rebuilds memory from the database.
pub(super) fn load(store: &Store, cfg: &CoordinatorConfig) -> Result<State, CoreError> {
    let grace_deadline = Instant::now() + secs(cfg.restart_grace_secs);
    store
        .read_now(|c| {
            let mut st = State::default();
            load_sweeps(c, &mut st)?;
            let (params, trial_order) = load_trials(c, &mut st)?;
            load_jobs(c, &mut st, &params, grace_deadline)?;
            load_tokens(c, &mut st)?;
            load_workers(c, &mut st, grace_deadline)?;
            c.each_checkpoint(|row| {
                if let Ok(jid) = JobId::parse(&row.job_id) {
                    st.checkpoints.entry(jid).or_default().push(row);
                }
            })?;
            attempts_reported(c, &mut st)?;
            load_search(c, &mut st, trial_order)?;
            st.refused_stale = c.counter(REFUSED_STALE)? as u64;
            Ok(st)
        })
        .map_err(CoreError::from)
}

/// Sweeps, and the attempt floors of deleted ones.
fn load_sweeps(c: &Reader<'_>, st: &mut State) -> Result<(), StoreError> {
    for row in c.sweeps()? {
        let SweepRecord {
            id,
            name,
            spec_json,
            spec_hash,
            state,
            algorithm,
            created_at,
            owner,
        } = row;
        let (Ok(sid), Ok(spec)) = (
            SweepId::parse(&id),
            serde_json::from_str::<SweepSpec>(&spec_json),
        ) else {
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
                counts: StateCounts::default(),
                silent: 0,
                search: None,
                outcomes: Outcomes::default(),
                proposing: false,
            },
        );
    }
    for (id, max) in c.deleted_sweeps()? {
        if let Ok(sid) = SweepId::parse(&id) {
            if let Some(s) = st.sweeps.get_mut(&sid) {
                s.attempt_floor = max;
            }
            st.attempt_floors.insert(sid, max);
        }
    }
    Ok(())
}

/// The trials of each sweep with search state, as (index, id).
type TrialOrder = HashMap<SweepId, Vec<(i64, TrialId)>>;

/// Trials whose sweep is known: each trial's parameters by id, and the
/// trials of searching sweeps in index order.
fn load_trials(
    c: &Reader<'_>,
    st: &mut State,
) -> Result<(HashMap<String, Arc<str>>, TrialOrder), StoreError> {
    let mut params: HashMap<String, Arc<str>> = HashMap::new();
    // Trials of sweeps with search state, by sweep, in index order.
    let mut trial_order: TrialOrder = HashMap::new();
    c.each_trial(|t| {
        let TrialRecord {
            id,
            sweep_id: sweep,
            params_json: p,
            idx,
        } = t;
        if let Some((sid, s)) = SweepId::parse(&sweep)
            .ok()
            .and_then(|sid| st.sweeps.get_mut(&sid).map(|s| (sid, s)))
        {
            s.trials += 1;
            if s.spec.has_search() {
                if let Ok(tid) = TrialId::parse(&id) {
                    trial_order.entry(sid).or_default().push((idx, tid));
                }
            }
        }
        params.insert(id, p.into());
    })?;
    Ok((params, trial_order))
}

/// Jobs, with their sweep's counts, ready queue and outcomes, and the
/// workers their running attempts are on (known once they say hello).
fn load_jobs(
    c: &Reader<'_>,
    st: &mut State,
    params: &HashMap<String, Arc<str>>,
    grace_deadline: Instant,
) -> Result<(), StoreError> {
    c.each_job(|j| {
                    st.next_seq = st.next_seq.max(j.seq + 1);
                    let (Ok(jid), Ok(sid), Ok(tid), Some(state)) = (JobId::parse(&j.id), SweepId::parse(&j.sweep_id), TrialId::parse(&j.trial_id), JobState::parse(&j.state)) else {
                        // Only this binary writes these rows; say so loudly rather than drop a job quietly.
                        tracing::error!(job = %j.id, state = %j.state, "stored job cannot be read; it is not scheduled (is the database from a newer liandan?)");
                        return;
                    };
                    let worker = j.worker_id.as_deref().and_then(|w| WorkerId::parse(w).ok());
                    let Some(s) = st.sweeps.get_mut(&sid) else {
                        tracing::error!(job = %jid, sweep = %sid, "stored job belongs to a sweep that cannot be read; it is not scheduled");
                        return;
                    };
                    s.jobs.push(jid.clone());
                    s.counts.add(state, 1);
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
                            seed: j.seed,
                            state,
                            attempt: AttemptNo(j.attempt),
                            retries_used: j.retries_used,
                            worker_deaths: j.worker_deaths,
                            worker,
                            stop: StopRequest::from_db(j.cancel_requested),
                            final_metric: j.final_metric,
                            best_metric: j.best_metric,
                            metric_not_finite: false,
                            reported: false,
                            params_json,
                            gpus: Vec::new(),
                            cpus,
                            assigned_at: (state == JobState::Running).then(Instant::now),
                        },
                    );
                })?;
    Ok(())
}

fn load_tokens(c: &Reader<'_>, st: &mut State) -> Result<(), StoreError> {
    for t in c.tokens()? {
        let t = IssuedToken {
            admin: t.role == "admin",
            name: t.name,
            hash: t.hash,
            created_at: t.created_at,
        };
        st.tokens.insert(t.name.clone(), t);
    }
    Ok(())
}

/// Workers as last stored; each gets the restart grace to reconnect.
fn load_workers(c: &Reader<'_>, st: &mut State, grace_deadline: Instant) -> Result<(), StoreError> {
    for row in c.workers()? {
        let WorkerRecord {
            id,
            hostname,
            resources_json: res,
            acked_seq,
            draining,
            last_seen,
            cert_bound,
            secret_hash,
        } = row;
        let Ok(wid) = WorkerId::parse(&id) else {
            continue;
        };
        let w = st
            .workers
            .entry(wid)
            .or_insert_with(|| WorkerMem::unknown(grace_deadline));
        w.hostname = hostname;
        w.resources = resources_from_json(&res);
        w.acked_seq = acked_seq;
        w.draining = draining;
        w.last_seen = last_seen;
        w.cert_bound = cert_bound;
        w.secret_hash = secret_hash;
        w.lease_deadline = grace_deadline;
    }
    Ok(())
}

/// What each running attempt of a sweep that requires its metric reported
/// before the restart: a finite value (`JobMem::reported`), or only NaN or
/// infinities (`metric_not_finite`, which words its failure).
fn attempts_reported(c: &Reader<'_>, st: &mut State) -> Result<(), StoreError> {
    for (jid, job) in st.jobs.iter_mut() {
        if job.state != JobState::Running {
            continue;
        }
        let Some(metric) = st
            .sweeps
            .get(&job.sweep)
            .filter(|s| s.spec.liandan.require_metric)
            .and_then(|s| s.spec.metric.as_ref())
        else {
            continue;
        };
        let (mut reported, mut not_finite) = (false, false);
        c.scan_attempt_metrics(jid.as_str(), job.attempt.0, |json| {
            let v = serde_json::from_str::<serde_json::Value>(json).ok();
            // A NaN or infinity arrives as null, as `observe_metric` reads it.
            match v.as_ref().and_then(|v| v.get(&metric.name)) {
                Some(x) if x.as_f64().is_some_and(|x| x.is_finite()) => reported = true,
                Some(x) if x.is_null() => not_finite = true,
                _ => {}
            }
            reported
        })?;
        job.reported = reported;
        job.metric_not_finite = not_finite;
    }
    Ok(())
}

/// Rebuilds the search state of sweeps that adapt or stop early: trials in
/// index order with their jobs, metric histories from the stored metric rows,
/// and whether metric.target was already reached.
fn load_search(
    c: &Reader<'_>,
    st: &mut State,
    mut trial_order: TrialOrder,
) -> Result<(), StoreError> {
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
        // A sweep's jobs are kept in their order (`ord`) in it.
        for (ord, j) in s.jobs.iter().enumerate() {
            if let Some(m) = st.jobs.get(j) {
                by_trial
                    .entry(m.trial.clone())
                    .or_default()
                    .push((ord as i64, j.clone()));
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
        let live = s.counts.get(JobState::Queued) + s.counts.get(JobState::Running) > 0
            || (search.can_propose() && s.state != SweepState::Cancelled);
        if let (true, Some(_), Some(metric)) = (live, &s.spec.early_terminate, &s.spec.metric) {
            for t in 0..search.trials.len() {
                let (tid, jobs) = (search.trials[t].id.clone(), search.trials[t].jobs.clone());
                for j in jobs {
                    c.each_metric_of(j.as_str(), |step, json| {
                        let value = serde_json::from_str::<serde_json::Value>(&json)
                            .ok()
                            .and_then(|v| v.get(&metric.name).and_then(|x| x.as_f64()))
                            .filter(|x| x.is_finite());
                        if let Some(x) = value {
                            let step = step.unwrap_or_else(|| search.next_step(&tid, &j));
                            search.record(&tid, &j, step, x);
                        }
                    })?;
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
