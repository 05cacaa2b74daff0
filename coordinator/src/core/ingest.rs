//! Record ingest: logs and metrics from workers, deduplicated by sequence
//! number and fenced by the one predicate (the current attempt on its worker).

use super::*;

/// A batch of records as it is ingested: rows are grouped per kind, and
/// flushed in order before anything that must come after them (an
/// attempt's end).
#[derive(Default)]
struct Batch {
    fx: Effects,
    logs: Vec<LogRow>,
    metrics: Vec<MetricRow>,
    had_logs: bool,
    /// Jobs whose final/best value changed in this batch: written once each.
    metric_changed: Vec<JobId>,
    metric_seen: HashSet<JobId>,
}

impl Batch {
    /// Queues the rows so far, before what comes next.
    fn flush_rows(&mut self) {
        if !self.logs.is_empty() {
            self.had_logs = true;
            self.fx.op(Op::Logs(std::mem::take(&mut self.logs)));
        }
        if !self.metrics.is_empty() {
            self.fx.op(Op::Metrics(std::mem::take(&mut self.metrics)));
        }
    }
}

impl Core {
    /// Stores a batch of records and returns the acknowledgement to send once
    /// durable. Records at or below the worker's acknowledged sequence number
    /// were stored before and are skipped; records of a stale attempt are
    /// refused, counted and logged.
    pub async fn records(
        &self,
        wid: &WorkerId,
        session: u64,
        records: Vec<impl Into<Record>>,
    ) -> Result<Ack, CoreError> {
        let records: Vec<Record> = records.into_iter().map(Into::into).collect();
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
            let mut ack = Ack {
                seq: w.acked_seq,
                refused: 0,
            };
            let mut b = Batch::default();
            for rec in records {
                if rec.seq <= ack.seq {
                    continue;
                }
                ack.seq = rec.seq;
                if !self.ingest(&mut st, wid, rec, &mut b) {
                    ack.refused += 1;
                }
            }
            b.flush_rows();
            for jid in &b.metric_changed {
                if let Some(j) = st.jobs.get(jid) {
                    b.fx.op(Op::JobMetrics {
                        seq: j.seq,
                        final_metric: j.final_metric,
                        best_metric: j.best_metric,
                    });
                }
            }
            if let Some(w) = st.workers.get_mut(wid) {
                w.acked_seq = ack.seq;
            }
            b.fx.op(Op::WorkerAcked {
                id: wid.to_string(),
                acked_seq: ack.seq,
            });
            if ack.refused > 0 {
                st.refused_stale += ack.refused;
                b.fx.op(Op::AddCounter {
                    name: REFUSED_STALE.into(),
                    delta: ack.refused as i64,
                });
            }
            let mut fx = b.fx;
            fx.absorb(self.dispatch(&mut st));
            (self.enqueue(fx), ack, b.had_logs)
        };
        self.finish(pending).await?;
        if had_logs {
            self.log_generation.send_modify(|g| *g += 1);
        }
        Ok(ack)
    }

    /// Takes one new record into the batch; false when it is refused (no
    /// job id, or not the current attempt on this worker: the one fencing
    /// predicate, [`JobMem::accepts`]).
    fn ingest(&self, st: &mut State, wid: &WorkerId, rec: Record, b: &mut Batch) -> bool {
        let Some(jid) = rec.job else {
            return false;
        };
        let current = st
            .jobs
            .get(&jid)
            .is_some_and(|j| j.accepts(rec.attempt, wid.as_str()));
        if !current {
            tracing::warn!(worker = %wid, job = %jid, attempt = %rec.attempt, "refused a write from a stale attempt");
            return false;
        }
        match rec.body {
            RecordBody::Log {
                line,
                stderr,
                ts,
                text,
            } => b.logs.push(LogRow {
                job_id: jid.to_string(),
                attempt: rec.attempt.0,
                line,
                stream: u8::from(stderr),
                ts,
                text,
            }),
            RecordBody::Metric { step, ts, json } => {
                let (changed, pruned) = self.observe_metric(st, &jid, &json, step);
                b.fx.absorb(pruned);
                if changed && b.metric_seen.insert(jid.clone()) {
                    b.metric_changed.push(jid.clone());
                }
                b.metrics.push(MetricRow {
                    job_id: jid.to_string(),
                    attempt: rec.attempt.0,
                    step,
                    ts,
                    json,
                });
            }
            RecordBody::Started | RecordBody::Empty => {}
            RecordBody::Exited {
                outcome,
                exit_code,
                signal,
                message,
            } => {
                // Rows queued so far belong before the attempt's end.
                b.flush_rows();
                if outcome == Outcome::DiskFull {
                    // A worker on a full disk would take the job back at once
                    // and fail it again: it gets nothing new for a while.
                    if let Some(w) = st.workers.get_mut(wid) {
                        w.disk_full_until = Some(Instant::now() + DISK_FULL_PAUSE);
                    }
                    tracing::warn!(worker = %wid, job = %jid, "the worker's disk is full; no new jobs for it for {} s", DISK_FULL_PAUSE.as_secs());
                }
                let end = AttemptEnd {
                    attempt: rec.attempt,
                    outcome,
                    code: (outcome != Outcome::Signalled).then_some(exit_code),
                    signal: (signal != 0).then_some(signal),
                    message: &message,
                };
                b.fx.absorb(self.end_attempt(st, &jid, end));
            }
        }
        true
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
    pub fn holds(&self, jid: &JobId, attempt: AttemptNo, worker: &str) -> bool {
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
