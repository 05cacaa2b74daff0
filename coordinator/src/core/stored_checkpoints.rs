//! Checkpoints the coordinator stores: announced, listed, retained and dropped.

use super::*;

impl Core {
    /// Records a durable checkpoint file that `worker` uploaded and returns
    /// the files no longer kept.
    pub async fn add_checkpoint(
        &self,
        row: CheckpointRow,
        worker: &str,
    ) -> Result<Vec<String>, CoreError> {
        let jid =
            JobId::parse(&row.job_id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let row_attempt = row.attempt;
        let (fut, removed) = {
            let mut st = self.lock();
            let current = st
                .jobs
                .get(&jid)
                .is_some_and(|j| j.accepts(AttemptNo(row.attempt), worker));
            if !current {
                st.refused_stale += 1;
                tracing::warn!(job = %jid, attempt = row.attempt, "refused a checkpoint from a stale attempt");
                (
                    self.store.enqueue(vec![Op::AddCounter {
                        name: REFUSED_STALE.into(),
                        delta: 1,
                    }]),
                    None,
                )
            } else {
                let (keep_last, keep_best, goal) = {
                    let j = &st.jobs[&jid];
                    let s = &st.sweeps[&j.sweep];
                    (
                        s.spec
                            .liandan
                            .checkpoint
                            .keep_last
                            .unwrap_or(self.cfg.checkpoint_keep_last)
                            as usize,
                        s.spec.liandan.checkpoint.keep_best,
                        s.spec.metric.as_ref().map(|m| m.goal),
                    )
                };
                let list = st.checkpoints.entry(jid.clone()).or_default();
                list.retain(|c| c.step != row.step);
                list.push(row.clone());
                list.sort_by_key(|c| c.step);
                let steps: Vec<(i64, Option<f64>)> =
                    list.iter().map(|c| (c.step, c.metric)).collect();
                let keep = retention::keep_steps(&steps, keep_last, goal.filter(|_| keep_best));
                let mut ops = vec![Op::InsertCheckpoint(row)];
                let mut removed = Vec::new();
                list.retain(|c| {
                    if keep.contains(&c.step) {
                        true
                    } else {
                        ops.push(Op::DeleteCheckpoint {
                            job_id: c.job_id.clone(),
                            step: c.step,
                        });
                        removed.push(c.file.clone());
                        false
                    }
                });
                (self.store.enqueue(ops), Some(removed))
            }
        };
        fut.await?;
        removed.ok_or_else(|| {
            CoreError::FailedPrecondition(format!(
                "attempt {} is not the current attempt of {jid}; checkpoint refused",
                row_attempt
            ))
        })
    }

    pub fn checkpoints(&self, id: &str) -> Result<Vec<CheckpointRow>, CoreError> {
        let jid = JobId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        if !st.jobs.contains_key(&jid) {
            return Err(CoreError::NotFound {
                kind: "job",
                id: jid.to_string(),
                hint: "jobs SWEEP",
            });
        }
        Ok(st.checkpoints.get(&jid).cloned().unwrap_or_default())
    }

    /// Every stored checkpoint file the database knows (paths relative to
    /// the checkpoint root), for orphan collection.
    pub fn checkpoint_files(&self) -> HashSet<String> {
        let st = self.lock();
        st.checkpoints
            .values()
            .flatten()
            .map(|c| c.file.clone())
            .collect()
    }

    /// Forgets a checkpoint whose file failed verification, so it is never used.
    pub async fn drop_checkpoint(&self, job_id: &str, step: i64) -> Result<(), CoreError> {
        let fut = {
            let mut st = self.lock();
            if let Ok(jid) = JobId::parse(job_id) {
                if let Some(l) = st.checkpoints.get_mut(&jid) {
                    l.retain(|c| c.step != step);
                }
            }
            self.store.enqueue(vec![
                Op::DeleteCheckpoint {
                    job_id: job_id.to_string(),
                    step,
                },
                Op::AddCounter {
                    name: "corrupt_checkpoints".into(),
                    delta: 1,
                },
            ])
        };
        fut.await?;
        Ok(())
    }
}
