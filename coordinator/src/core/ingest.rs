//! Record ingest: logs and metrics from workers, deduplicated by sequence
//! number and fenced by the one predicate (the current attempt on its worker).

use super::*;

impl Core {
    /// Stores a batch of records and returns the acknowledgement to send once
    /// durable. Records at or below the worker's acknowledged sequence number
    /// were stored before and are skipped; records of a stale attempt are
    /// refused, counted and logged.
    pub async fn records(
        &self,
        wid: &WorkerId,
        session: u64,
        records: Vec<pb::Record>,
    ) -> Result<pb::Ack, CoreError> {
        let (pending, ack, had_logs) = {
            let mut st = self.lock();
            let w = session_worker(&mut st, wid, session)?;
            // A worker's numbers grow by at most one reserved block per
            // restart; one far past what is stored is no record of this
            // worker's (taking it would make every later record a "duplicate").
            if let Some(r) = records
                .iter()
                .find(|r| r.seq > w.acked_seq.saturating_add(MAX_SEQ_JUMP))
            {
                return Err(CoreError::InvalidArgument(format!(
                    "record sequence number {} is too far past the last stored one ({})",
                    r.seq, w.acked_seq
                )));
            }
            w.lease_deadline = Instant::now() + secs(self.cfg.lease_timeout_secs);
            w.last_seen = now_secs();
            let mut acked = w.acked_seq;
            let mut refused = 0u64;
            let mut logs = Vec::new();
            let mut metrics = Vec::new();
            let mut fx = Effects::default();
            // Jobs whose final/best value changed in this batch: written once each.
            let mut metric_changed: Vec<JobId> = Vec::new();
            let mut metric_seen: HashSet<JobId> = HashSet::new();
            for rec in records {
                if rec.seq <= acked {
                    continue;
                }
                acked = rec.seq;
                let jid = match JobId::parse(&rec.job_id) {
                    Ok(j) => j,
                    Err(_) => {
                        refused += 1;
                        continue;
                    }
                };
                let current = st
                    .jobs
                    .get(&jid)
                    .is_some_and(|j| j.accepts(rec.attempt, wid.as_str()));
                if !current {
                    refused += 1;
                    tracing::warn!(worker = %wid, job = %jid, attempt = rec.attempt, "refused a write from a stale attempt");
                    continue;
                }
                match rec.body {
                    Some(pb::record::Body::Log(l)) => logs.push(LogRow {
                        job_id: jid.to_string(),
                        attempt: rec.attempt,
                        line: l.line,
                        stream: u8::from(l.stream == "stderr"),
                        ts: l.ts,
                        text: l.text,
                    }),
                    Some(pb::record::Body::Metric(m)) => {
                        let (changed, pruned) = self.observe_metric(&mut st, &jid, &m.json, m.step);
                        fx.absorb(pruned);
                        if changed && metric_seen.insert(jid.clone()) {
                            metric_changed.push(jid.clone());
                        }
                        metrics.push(MetricRow {
                            job_id: jid.to_string(),
                            attempt: rec.attempt,
                            step: m.step,
                            ts: m.ts,
                            json: m.json,
                        });
                    }
                    Some(pb::record::Body::Started(_)) | None => {}
                    Some(pb::record::Body::Exited(e)) => {
                        // Rows queued so far belong before the attempt's end.
                        if !logs.is_empty() {
                            fx.op(Op::Logs(std::mem::take(&mut logs)));
                        }
                        if !metrics.is_empty() {
                            fx.op(Op::Metrics(std::mem::take(&mut metrics)));
                        }
                        let outcome = Outcome::parse(&e.outcome).unwrap_or(Outcome::Failed);
                        if outcome == Outcome::DiskFull {
                            // A worker on a full disk would take the job back at once
                            // and fail it again: it gets nothing new for a while.
                            if let Some(w) = st.workers.get_mut(wid) {
                                w.disk_full_until = Some(Instant::now() + DISK_FULL_PAUSE);
                            }
                            tracing::warn!(worker = %wid, job = %jid, "the worker's disk is full; no new jobs for it for {} s", DISK_FULL_PAUSE.as_secs());
                        }
                        let code = (outcome != Outcome::Signalled).then_some(e.exit_code);
                        let signal = (e.signal != 0).then_some(e.signal);
                        let end = AttemptEnd {
                            attempt: rec.attempt,
                            outcome,
                            code,
                            signal,
                            message: &e.message,
                        };
                        fx.absorb(self.end_attempt(&mut st, &jid, end));
                    }
                }
            }
            let had_logs = !logs.is_empty() || fx.ops.iter().any(|o| matches!(o, Op::Logs(_)));
            if !logs.is_empty() {
                fx.op(Op::Logs(logs));
            }
            if !metrics.is_empty() {
                fx.op(Op::Metrics(metrics));
            }
            for jid in &metric_changed {
                if let Some(j) = st.jobs.get(jid) {
                    fx.op(Op::JobMetrics {
                        seq: j.seq,
                        final_metric: j.final_metric,
                        best_metric: j.best_metric,
                    });
                }
            }
            if let Some(w) = st.workers.get_mut(wid) {
                w.acked_seq = acked;
            }
            fx.op(Op::WorkerAcked {
                id: wid.to_string(),
                acked_seq: acked,
            });
            if refused > 0 {
                st.refused_stale += refused;
                fx.op(Op::AddCounter {
                    name: REFUSED_STALE.into(),
                    delta: refused as i64,
                });
            }
            fx.absorb(self.dispatch(&mut st));
            (
                self.enqueue(fx),
                pb::Ack {
                    seq: acked,
                    refused,
                },
                had_logs,
            )
        };
        self.finish(pending).await?;
        if had_logs {
            self.log_generation.send_modify(|g| *g += 1);
        }
        Ok(ack)
    }

    /// Feeds a metric record to the job's final/best values and its sweep's
    /// search; returns whether it set them (then the caller persists them in
    /// the same batch as the record), and the prune early stopping decided.
    fn observe_metric(
        &self,
        st: &mut State,
        jid: &JobId,
        json: &str,
        step: Option<i64>,
    ) -> (bool, Effects) {
        let none = || (false, Effects::default());
        let Some(job) = st.jobs.get(jid) else {
            return none();
        };
        let (sid, tid) = (job.sweep.clone(), job.trial.clone());
        let Some(sweep) = st.sweeps.get_mut(&sid) else {
            return none();
        };
        let Some(metric) = sweep.spec.metric.as_ref() else {
            return none();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            return none();
        };
        let Some(x) = v
            .get(&metric.name)
            .and_then(|x| x.as_f64())
            .filter(|x| x.is_finite())
        else {
            // A NaN or infinity arrives as null (JSON has no such numbers).
            if v.get(&metric.name).is_some_and(|x| x.is_null()) {
                if let Some(job) = st.jobs.get_mut(jid) {
                    job.metric_not_finite = true;
                }
            }
            return none();
        };
        let goal = metric.goal;
        // Early stopping decides on every reported value. The reporting job is
        // running (records of other attempts were refused), so its trial is live.
        let decision = sweep.search.as_mut().and_then(|search| {
            let step = step.unwrap_or_else(|| search.next_step(&tid, jid));
            let t = search.record(&tid, jid, step, x)?;
            search.judge(t).map(|d| (t, d))
        });
        if let Some(job) = st.jobs.get_mut(jid) {
            job.final_metric = Some(x);
            job.reported = true;
            if job.best_metric.is_none_or(|b| goal.better(x, b)) {
                job.best_metric = Some(x);
            }
        }
        if let Some((t, d)) = decision {
            tracing::info!(sweep = %sid, trial = %tid, rule = ?d.rule, band = d.band, value = d.value, "early stopping prunes the trial");
            return (true, self.prune_trial(st, &sid, t));
        }
        (true, Effects::default())
    }

    /// Whether `worker` holds `attempt`, the current attempt of a running job.
    pub fn holds(&self, jid: &JobId, attempt: u64, worker: &str) -> bool {
        self.lock()
            .jobs
            .get(jid)
            .is_some_and(|j| j.accepts(attempt, worker))
    }

    /// Counts a refused write from a stale attempt (durably, like every counter).
    pub async fn refuse_stale(&self, what: &str, jid: &str, attempt: u64, worker: &str) {
        let fut = {
            let mut st = self.lock();
            st.refused_stale += 1;
            tracing::warn!(
                job = jid,
                attempt,
                worker,
                "refused a {what} from a stale attempt"
            );
            self.store.enqueue(vec![Op::AddCounter {
                name: REFUSED_STALE.into(),
                delta: 1,
            }])
        };
        let _ = fut.await;
    }
}
