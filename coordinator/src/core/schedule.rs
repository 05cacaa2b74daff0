//! The clock and the scheduler: leases and stalls on every tick, and dispatch
//! of queued jobs to workers with room.

use super::*;

impl Core {
    /// Expires leases, releases delayed retries and dispatches. Called by a
    /// timer every [`TICK`]; time comes from tokio so tests can pause it.
    ///
    /// A lease measures how long the coordinator has been running without
    /// hearing from a worker. When ticks stop for longer than [`STALL`], the
    /// coordinator itself did not run (SIGSTOP, a VM or swap stall, a suspended
    /// laptop): no worker could renew its lease meanwhile, and the heartbeats
    /// sent during the stall are still queued. So every lease moves on by the
    /// stall instead of expiring at once and restarting every running job of
    /// the cluster (the chaos suite found that: seed 1795805961348097836).
    pub async fn tick(&self) -> Result<(), CoreError> {
        let pending = {
            let mut st = self.lock();
            let now = Instant::now();
            if let Some(prev) = st.last_tick {
                let gap = now.saturating_duration_since(prev);
                if gap > STALL {
                    let stalled = gap - TICK;
                    for w in st.workers.values_mut() {
                        w.lease_deadline += stalled;
                    }
                    tracing::warn!(
                        secs = gap.as_secs_f64(),
                        "the coordinator did not run for a while (stopped or stalled); every lease is extended by that time, since no worker could renew it"
                    );
                }
            }
            st.last_tick = Some(now);
            let mut fx = self.expire_workers(&mut st);
            let expired: Vec<WorkerId> = st
                .workers
                .iter()
                .filter(|(_, w)| {
                    w.lease_deadline <= now && (!w.running.is_empty() || w.session.is_some())
                })
                .map(|(k, _)| k.clone())
                .collect();
            for wid in expired {
                let running: Vec<JobId> = st
                    .workers
                    .get(&wid)
                    .map(|w| w.running.iter().cloned().collect())
                    .unwrap_or_default();
                if !running.is_empty() {
                    tracing::warn!(worker = %wid, jobs = running.len(), "lease expired; requeueing its attempts");
                }
                for jid in running {
                    fx.absorb(self.lose_attempt(
                        &mut st,
                        &jid,
                        "the worker stopped heartbeating (lease expired)",
                    ));
                }
                if let Some(w) = st.workers.get_mut(&wid) {
                    // A silent stream is as good as gone; the worker reconnects with a fresh hello.
                    w.session = None;
                }
            }
            while let Some(Reverse((at, _))) = st.delayed.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((_, jid))) = st.delayed.pop() else {
                    break;
                };
                let sweep = st
                    .jobs
                    .get(&jid)
                    .filter(|j| j.state == JobState::Queued)
                    .map(|j| j.sweep.clone());
                if let Some(s) = sweep.and_then(|s| st.sweeps.get_mut(&s)) {
                    s.ready.push_back(jid);
                }
            }
            fx.absorb(self.dispatch(&mut st));
            if fx.ops.is_empty() {
                return Ok(());
            }
            self.enqueue(fx)
        };
        self.finish(pending).await
    }

    /// Matches ready jobs to free capacity: whole GPUs on one worker, CPU slots
    /// otherwise, required labels; sweeps in `scheduler::candidates` order
    /// (priority, then fewest running, then oldest), within each sweep's
    /// concurrency cap and its owner's quota.
    pub(super) fn dispatch(&self, st: &mut State) -> Effects {
        let mut fx = Effects::default();
        let workers: Vec<WorkerId> = st
            .workers
            .iter()
            .filter(|(_, w)| {
                w.session.is_some()
                    && w.known
                    && !w.draining
                    && !w.stopping
                    && w.disk_full_until.is_none_or(|t| t <= Instant::now())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for wid in workers {
            while let Some(w) = st.workers.get(&wid) {
                if w.free_cpus == 0 && w.free_gpus.is_empty() {
                    break;
                }
                // Which sweeps may place a job, in order (scheduler::candidates).
                let ids: Vec<&SweepId> = st.sweeps.keys().collect();
                let views: Vec<scheduler::SweepView> = ids
                    .iter()
                    .map(|k| {
                        let s = &st.sweeps[*k];
                        scheduler::SweepView {
                            active: s.state == SweepState::Active,
                            has_work: !s.ready.is_empty()
                                || s.search.as_ref().is_some_and(|x| x.can_propose()),
                            priority: s.spec.liandan.priority,
                            running: s.running(),
                            concurrency: s.spec.liandan.concurrency,
                            created_at: s.created_at,
                            owner: &s.owner,
                        }
                    })
                    .collect();
                let order = scheduler::candidates(&views, self.cfg.max_running_jobs_per_user);
                if order.is_empty() {
                    return fx;
                }
                let candidates: Vec<SweepId> = order.into_iter().map(|i| ids[i].clone()).collect();
                let mut assigned = false;
                for sid in candidates {
                    let (need_gpus, need_cpus, fits) = {
                        let r = &st.sweeps[&sid].spec.liandan.resources;
                        let need = scheduler::Need {
                            gpus: r.gpus,
                            cpus: if r.gpus == 0 { r.cpus } else { 0 },
                            labels: &r.labels,
                        };
                        let fits = st.workers.get(&wid).is_some_and(|w| {
                            scheduler::fits(
                                &scheduler::Room {
                                    free_gpus: w.free_gpus.len() as u32,
                                    free_cpus: w.free_cpus,
                                    labels: &w.resources.labels,
                                },
                                &need,
                            )
                        });
                        (need.gpus, need.cpus, fits)
                    };
                    if !fits {
                        continue;
                    }
                    // Pop the next job that is still queued (cancelled ones are skipped
                    // lazily); an adaptive sweep with nothing queued proposes a trial now,
                    // when a slot is free, so it learns from every result so far.
                    let mut next = None;
                    for _ in 0..2 {
                        if let Some(s) = st.sweeps.get_mut(&sid) {
                            while let Some(j) = s.ready.pop_front() {
                                if st.jobs.get(&j).is_some_and(|m| m.state == JobState::Queued) {
                                    next = Some(j);
                                    break;
                                }
                            }
                        }
                        if next.is_some() {
                            break;
                        }
                        match self.propose_trial(st, &sid) {
                            Some(proposed) => fx.absorb(proposed),
                            None => break,
                        }
                    }
                    let Some(jid) = next else { continue };
                    let placement = scheduler::Placement {
                        sweep: sid,
                        job: jid,
                        worker: wid.clone(),
                        gpus: need_gpus,
                        cpus: need_cpus,
                    };
                    fx.absorb(self.assign(st, &placement));
                    assigned = true;
                    break;
                }
                if !assigned {
                    break;
                }
            }
        }
        fx
    }

    /// Carries out a placement: the worker's room is taken, the job's next
    /// attempt starts and its assignment goes to the worker.
    fn assign(&self, st: &mut State, p: &scheduler::Placement) -> Effects {
        let mut fx = Effects::default();
        let (sid, jid, wid, gpus, cpus) = (&p.sweep, &p.job, &p.worker, p.gpus, p.cpus);
        let Some(w) = st.workers.get_mut(wid) else {
            return fx;
        };
        let taken: Vec<String> = w.free_gpus.drain(..gpus as usize).collect();
        w.free_cpus -= cpus;
        w.running.insert(jid.clone());
        let tx = w.session.as_ref().map(|s| s.tx.clone());
        let Some(job) = st.jobs.get_mut(jid) else {
            return fx;
        };
        let Some(next) = job.state.on(JobEvent::Assign) else {
            return fx;
        };
        job.state = next;
        job.attempt = AttemptNo(job.attempt.0 + 1);
        // The job's final and best values span its attempts (a resumed run
        // goes on from its checkpoint); what this attempt reports is its own.
        job.reported = false;
        job.metric_not_finite = false;
        job.worker = Some(wid.clone());
        job.gpus = taken.clone();
        job.cpus = cpus;
        job.assigned_at = Some(Instant::now());
        fx.op(Op::InsertAttempt {
            job_id: jid.to_string(),
            attempt: job.attempt.0,
            worker_id: wid.to_string(),
            started_at: now_secs(),
        });
        fx.op(Op::UpdateJob(job.update()));
        let (attempt, seed, params_json, trial) = (
            job.attempt,
            job.seed,
            job.params_json.to_string(),
            job.trial.to_string(),
        );
        let resume_from = st
            .checkpoints
            .get(jid)
            .and_then(|v| v.iter().max_by_key(|c| c.step))
            .map(checkpoint_info);
        let Some(s) = st.sweeps.get_mut(sid) else {
            return fx;
        };
        s.moved(JobState::Queued, JobState::Running);
        if let Some(tx) = tx {
            fx.send(
                tx,
                pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::Assign(pb::Assignment {
                        job_id: jid.to_string(),
                        attempt: attempt.0,
                        sweep_id: sid.to_string(),
                        trial_id: trial,
                        seed,
                        params_json,
                        spec_json: s.run_spec_json.to_string(),
                        gpu_uuids: taken,
                        resume_from,
                        cpu_slots: cpus,
                    })),
                },
            );
        }
        fx
    }
}
