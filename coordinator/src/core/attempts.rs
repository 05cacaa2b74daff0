//! How an attempt ends: its outcome, the retry policy and the job's next state.

use super::*;

/// How an attempt ended, as its worker (or the lease) told it.
pub(super) struct AttemptEnd<'a> {
    pub attempt: AttemptNo,
    pub outcome: Outcome,
    /// The exit code, unless a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub message: &'a str,
}

impl Core {
    /// Ends a job's current attempt as lost (its worker is gone or forgot it).
    pub(super) fn lose_attempt(&self, st: &mut State, jid: &JobId, why: &str) -> Effects {
        let attempt = st.jobs.get(jid).map(|j| j.attempt).unwrap_or(AttemptNo(0));
        let end = AttemptEnd {
            attempt,
            outcome: Outcome::Lost,
            code: None,
            signal: None,
            message: why,
        };
        self.end_attempt(st, jid, end)
    }

    /// Ends the current attempt of a job: records how, frees its resources and
    /// moves the job on through the transition function.
    pub(super) fn end_attempt(&self, st: &mut State, jid: &JobId, end: AttemptEnd<'_>) -> Effects {
        let AttemptEnd {
            attempt,
            outcome,
            code,
            signal,
            message,
        } = end;
        let mut fx = Effects::default();
        let Some(job) = st.jobs.get_mut(jid) else {
            return fx;
        };
        if job.state != JobState::Running || job.attempt != attempt {
            return fx;
        }
        // A job whose worker dies under it attempt after attempt is what
        // kills it (`kill -9 $PPID`): from max_worker_deaths in a row on,
        // each death is its failure. A lost lease neither counts nor clears.
        let mut message = std::borrow::Cow::Borrowed(message);
        let outcome = match outcome {
            Outcome::Interrupted => {
                job.worker_deaths += 1;
                let max = self.cfg.max_worker_deaths;
                if max > 0 && job.worker_deaths >= max {
                    message = format!(
                        "{message}; its worker died during {} attempts of this job in a row, so the job is taken to be what kills it (max_worker_deaths = {max}): counted as a failure",
                        job.worker_deaths
                    )
                    .into();
                    Outcome::WorkerDied
                } else {
                    outcome
                }
            }
            Outcome::Lost => outcome,
            _ => {
                job.worker_deaths = 0;
                outcome
            }
        };
        // A sweep that requires its metric fails an attempt that exited 0
        // without reporting it itself (an earlier attempt's value, from a
        // run that failed, is no result of this one), rather than count a
        // result with no value.
        let required = st
            .sweeps
            .get(&job.sweep)
            .filter(|s| s.spec.liandan.require_metric)
            .and_then(|s| s.spec.metric.as_ref());
        let outcome = match required {
            Some(m) if outcome == Outcome::Succeeded && !job.reported => {
                message = if job.metric_not_finite {
                    format!(
                        "exited 0 but reported the metric {:?} only as NaN or infinity (did the training diverge?), and the sweep requires a value (liandan.require_metric)",
                        m.name
                    )
                } else {
                    format!(
                        "exited 0 but never reported the metric {:?}, which the sweep requires (liandan.require_metric): check liandan.metric_pattern against what the program prints, or write the metric to LIANDAN_METRICS_FILE",
                        m.name
                    )
                }
                .into();
                Outcome::NoMetric
            }
            _ => outcome,
        };
        let retries = st
            .sweeps
            .get(&job.sweep)
            .map(|s| s.spec.liandan.retries)
            .unwrap_or(0);
        let retries_left = job.retries_used < retries;
        let Some(next) = job.state.on(JobEvent::Ended {
            outcome,
            stop: job.stop,
            retries_left,
        }) else {
            return fx;
        };
        fx.op(Op::EndAttempt {
            job_id: jid.to_string(),
            attempt: attempt.0,
            state: outcome.as_str().into(),
            ended_at: now_secs(),
            exit_code: code,
            signal,
            message: message.chars().take(4096).collect(),
        });
        let worker = job.worker.take();
        let (cpus, gpus) = (std::mem::take(&mut job.cpus), std::mem::take(&mut job.gpus));
        job.state = next;
        let mut delay = None;
        if next == JobState::Queued && outcome.counts_as_failure() {
            job.retries_used += 1;
            let backoff = (self.cfg.retry_backoff_secs * 2f64.powi(job.retries_used as i32 - 1))
                .min(self.cfg.retry_backoff_max_secs);
            delay = Some(secs(backoff));
        }
        fx.op(Op::UpdateJob(job.update()));
        let sweep_id = job.sweep.clone();
        if let Some(s) = st.sweeps.get_mut(&sweep_id) {
            s.moved(JobState::Running, next);
            if next == JobState::Succeeded {
                if job.final_metric.is_none() && s.spec.metric.is_some() {
                    s.silent += 1;
                }
                s.outcomes.record(
                    &job.trial,
                    &job.params_json,
                    job.seed,
                    job.final_metric,
                    job.best_metric,
                );
            }
        }
        if let Some(w) = worker.as_ref().and_then(|w| st.workers.get_mut(w)) {
            w.running.remove(jid);
            w.free_cpus += cpus;
            w.free_gpus.extend(gpus);
        }
        if next == JobState::Queued {
            match delay {
                Some(d) => st.delayed.push(Reverse((Instant::now() + d, jid.clone()))),
                None => {
                    if let Some(s) = st.sweeps.get_mut(&sweep_id) {
                        // A requeued job goes first: it may already have progress.
                        s.ready.push_front(jid.clone());
                    }
                }
            }
        }
        if next.is_terminal() {
            self.check_target(st, jid);
        }
        if outcome == Outcome::Succeeded {
            tracing::debug!(job = %jid, %attempt, state = next.as_str(), "attempt succeeded");
        } else {
            tracing::info!(job = %jid, %attempt, outcome = outcome.as_str(), state = next.as_str(), "attempt ended");
        }
        fx
    }
}
