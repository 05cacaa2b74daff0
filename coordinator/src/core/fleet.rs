//! The worker registry: hello (identity and reconciliation of what a worker
//! holds), heartbeats, sessions, drain, forget and expiry.

use super::*;

impl Core {
    /// Drains a worker (no new jobs; running ones finish), or lifts the drain (`undo`).
    pub async fn drain(&self, id: &str, undo: bool) -> Result<pb::Worker, CoreError> {
        let wid = WorkerId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let pending = {
            let mut st = self.lock();
            let w = st
                .workers
                .get_mut(&wid)
                .ok_or_else(|| CoreError::NotFound {
                    kind: "worker",
                    id: wid.to_string(),
                    hint: "workers",
                })?;
            w.draining = !undo;
            let mut fx = Effects::of(worker_upsert(&wid, w));
            if let (false, Some(s)) = (undo, &w.session) {
                fx.send(s.tx.clone(), drain_msg());
            }
            if undo {
                fx.absorb(self.dispatch(&mut st));
            }
            self.enqueue(fx)
        };
        self.finish(pending).await?;
        let info = self
            .lock()
            .workers
            .get(&wid)
            .map(|w| worker_info(&wid, w))
            .unwrap_or_default();
        self.committed(info).await
    }

    /// Removes a disconnected worker that holds no job from the records
    /// (`liandan workers --forget`); it is registered again if it comes back.
    pub async fn forget_worker(&self, id: &str) -> Result<pb::Worker, CoreError> {
        let wid = WorkerId::parse(id).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let (pending, info) = {
            let mut st = self.lock();
            let w = st.workers.get(&wid).ok_or_else(|| CoreError::NotFound {
                kind: "worker",
                id: wid.to_string(),
                hint: "workers",
            })?;
            if w.session.is_some() {
                return Err(CoreError::FailedPrecondition(format!(
                    "worker {wid} is connected; stop its daemon first (systemctl stop liandan-worker), then forget it"
                )));
            }
            if !w.running.is_empty() {
                return Err(CoreError::FailedPrecondition(format!(
                    "worker {wid} still holds {} job(s); they are requeued when its lease expires (lease_timeout_secs), then forget it",
                    w.running.len()
                )));
            }
            let info = worker_info(&wid, w);
            st.workers.remove(&wid);
            tracing::info!(worker = %wid, "worker forgotten");
            let op = Op::DeleteWorker {
                id: wid.to_string(),
            };
            (self.enqueue(Effects::of(op)), info)
        };
        self.finish(pending).await?;
        Ok(info)
    }

    /// A worker opened its stream. Returns the session id and the welcome.
    pub async fn hello(
        &self,
        hello: impl Into<Hello>,
        tx: mpsc::UnboundedSender<pb::CoordinatorMessage>,
        cert: Option<WorkerId>,
    ) -> Result<(WorkerId, u64), CoreError> {
        let hello: Hello = hello.into();
        if !hello.worker_id.is_empty() {
            WorkerId::parse(&hello.worker_id)
                .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        }
        let resources = hello.resources;
        for l in &resources.labels {
            liandan_common::names::validate("label", l)
                .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        }
        let (pending, session, wid) = {
            let mut st = self.lock();
            let (wid, issued) =
                identify(&st, &hello.worker_id, &hello.worker_secret, cert.as_ref())?;
            st.next_session += 1;
            let session = st.next_session;
            let now = Instant::now();
            let lease = secs(self.cfg.lease_timeout_secs);
            let w = st
                .workers
                .entry(wid.clone())
                .or_insert_with(|| WorkerMem::unknown(now + lease));
            if cert.is_some() {
                w.cert_bound = true;
            }
            if let Some((_, hash)) = &issued {
                w.secret_hash = Some(hash.clone());
            }
            let issued_secret = issued.map(|(secret, _)| secret).unwrap_or_default();
            // Shown in listings: no control characters (terminal escapes).
            w.hostname = hello
                .hostname
                .chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect();
            w.resources = resources;
            w.session = Some(Session {
                id: session,
                tx: tx.clone(),
            });
            w.lease_deadline = now + lease;
            w.last_seen = now_secs();
            w.known = true;
            w.stopping = false;
            let acked_seq = w.acked_seq;
            let previously_running: Vec<JobId> = w.running.iter().cloned().collect();

            let mut fx = Effects::default();
            let mut kill = Vec::new();
            let mut kept: HashSet<JobId> = HashSet::new();
            for h in &hello.held {
                let (current, cancel) = held_verdict(&st, &wid, h);
                kill.extend(cancel);
                if let Some(jid) = current {
                    if let Some(j) = st.jobs.get_mut(&jid) {
                        j.gpus = h.gpu_uuids.clone();
                    }
                    kept.insert(jid);
                }
            }
            // Attempts we believed ran there that the worker no longer has are lost.
            for jid in previously_running {
                if !kept.contains(&jid) {
                    fx.absorb(self.lose_attempt(
                        &mut st,
                        &jid,
                        "the worker restarted without this attempt",
                    ));
                }
            }
            // Recompute free capacity from what it really runs.
            if let Some(w) = st.workers.get_mut(&wid) {
                w.running = kept.clone();
                w.free_cpus = w.resources.cpu_slots;
                w.free_gpus = w.resources.gpus.iter().map(|g| g.uuid.clone()).collect();
            }
            for jid in &kept {
                let (cpus, gpus) = st
                    .jobs
                    .get(jid)
                    .map(|j| (j.cpus, j.gpus.clone()))
                    .unwrap_or_default();
                if let Some(w) = st.workers.get_mut(&wid) {
                    w.free_cpus = w.free_cpus.saturating_sub(cpus);
                    w.free_gpus.retain(|g| !gpus.contains(g));
                }
            }
            if let Some(w) = st.workers.get(&wid) {
                fx.op(worker_upsert(&wid, w));
            }
            let welcome = pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                    worker_id: wid.to_string(),
                    acked_seq,
                    heartbeat_interval_ms: (self.cfg.heartbeat_interval_secs * 1000.0) as u32,
                    kill,
                    worker_secret: issued_secret,
                })),
            };
            fx.send(tx.clone(), welcome);
            if st.workers.get(&wid).is_some_and(|w| w.draining) {
                fx.send(tx, drain_msg());
            }
            fx.absorb(self.dispatch(&mut st));
            (self.enqueue(fx), session, wid)
        };
        self.finish(pending).await?;
        let version = hello.version.chars().take(64).collect::<String>();
        tracing::info!(worker = %wid, session, version, "worker connected");
        if version != env!("CARGO_PKG_VERSION") {
            tracing::warn!(worker = %wid, worker_version = %version, coordinator_version = env!("CARGO_PKG_VERSION"), "the worker runs another liandan version; upgrade it (the wire stays compatible one version apart)");
        }
        Ok((wid, session))
    }

    /// Whether `secret` is the one issued with `worker`'s id (join-token
    /// workers), for RPCs outside the session (checkpoint transfers).
    pub fn worker_secret_ok(&self, worker: &str, secret: &str) -> bool {
        let Ok(wid) = WorkerId::parse(worker) else {
            return false;
        };
        let st = self.lock();
        st.workers.get(&wid).is_some_and(|w| {
            !w.cert_bound
                && w.secret_hash
                    .as_deref()
                    .is_some_and(|h| liandan_common::auth::token_eq(h, &secret_hash(secret)))
        })
    }

    /// Whether `worker` runs an attempt of `job` now (any attempt: a resume
    /// fetch comes before the worker reports its new attempt started).
    pub fn runs_job(&self, job: &JobId, worker: &str) -> bool {
        let st = self.lock();
        st.jobs.get(job).is_some_and(|j| {
            j.state == JobState::Running && j.worker.as_ref().is_some_and(|w| w.as_str() == worker)
        })
    }

    /// A heartbeat: renews the worker's lease and reconciles what it holds
    /// with what the coordinator believes (a Kubernetes-style controller; no
    /// single lost message can leave the two apart for good). An attempt the
    /// coordinator has running on the worker that the worker does not hold,
    /// once its assignment had time to arrive, is lost: the job is requeued
    /// without spending a retry. An attempt the worker holds that is not
    /// current is told to stop. `stopping` says the worker is shutting down
    /// (SIGTERM): it gets no new jobs until it says hello again.
    pub async fn heartbeat(
        &self,
        wid: &WorkerId,
        session: u64,
        hb: impl Into<Heartbeat>,
    ) -> Result<(), CoreError> {
        let hb: Heartbeat = hb.into();
        // Generous on purpose: an assignment reaches the worker only after
        // its batch commits (behind a big submit, seconds), a heartbeat is
        // judged after the records queued before it, and a loaded machine
        // stretches both (seen: a 2 s grace misfired once in CI). A lost
        // assignment is rare and a slow repair harmless; a wrong repair runs
        // the job twice.
        let grace = secs(self.cfg.lease_timeout_secs.max(RECONCILE_GRACE_SECS));
        let pending = {
            let mut st = self.lock();
            let w = session_worker(&mut st, wid, session)?;
            w.lease_deadline = Instant::now() + secs(self.cfg.lease_timeout_secs);
            w.last_seen = now_secs();
            if hb.disk.is_some() {
                w.disk = hb.disk;
            }
            if hb.stopping && !w.stopping {
                tracing::info!(worker = %wid, "worker is shutting down; no new jobs for it");
            }
            w.stopping |= hb.stopping;
            let Some(held_now) = hb.held else {
                // An older worker that sends no list: nothing to reconcile.
                return Ok(());
            };
            if w.running.is_empty() && held_now.is_empty() {
                return Ok(());
            }
            let tx = w.session.as_ref().map(|s| s.tx.clone());
            let believed: Vec<JobId> = w.running.iter().cloned().collect();
            let held: HashSet<(&JobId, AttemptNo)> = held_now
                .iter()
                .filter_map(|h| h.job.as_ref().map(|j| (j, h.attempt)))
                .collect();
            let mut fx = Effects::default();
            for jid in believed {
                let Some(j) = st.jobs.get(&jid) else { continue };
                let settled = j.assigned_at.is_none_or(|t| t.elapsed() >= grace);
                if j.accepts(j.attempt, wid.as_str())
                    && settled
                    && !held.contains(&(&jid, j.attempt))
                {
                    tracing::warn!(worker = %wid, job = %jid, attempt = %j.attempt, "the worker does not hold an attempt it was given; requeued without spending a retry");
                    fx.absorb(self.lose_attempt(
                        &mut st,
                        &jid,
                        "the worker does not hold this attempt (its assignment was lost)",
                    ));
                }
            }
            for h in &held_now {
                if let (Some(c), Some(tx)) = (held_verdict(&st, wid, h).1, &tx) {
                    fx.send(
                        tx.clone(),
                        pb::CoordinatorMessage {
                            msg: Some(pb::coordinator_message::Msg::Cancel(c)),
                        },
                    );
                }
            }
            if fx.is_empty() {
                return Ok(());
            }
            fx.absorb(self.dispatch(&mut st));
            self.enqueue(fx)
        };
        self.finish(pending).await
    }

    /// The worker's stream ended. Its lease keeps running down.
    pub fn disconnected(&self, wid: &WorkerId, session: u64) {
        let mut st = self.lock();
        if let Some(w) = st.workers.get_mut(wid) {
            if w.session.as_ref().is_some_and(|s| s.id == session) {
                w.session = None;
                // Stored, so that worker expiry counts from here after a restart too.
                w.last_seen = now_secs();
                // Queued now; the writer commits it without anyone waiting.
                drop(self.store.enqueue(vec![worker_upsert(wid, w)]));
                tracing::info!(worker = %wid, session, "worker disconnected");
            }
        }
    }

    /// Forgets workers gone for `worker_expiry_days` that hold nothing and
    /// are not drained (the registrations of machines that never came back).
    pub(super) fn expire_workers(&self, st: &mut State) -> Effects {
        let mut fx = Effects::default();
        let days = self.cfg.worker_expiry_days;
        if days <= 0.0 {
            return fx;
        }
        // A check measured in days need not run on every 200 ms tick.
        let every = Duration::from_secs_f64((days * 86_400.0 / 2.0).min(60.0));
        let now = Instant::now();
        if st
            .last_expiry
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return fx;
        }
        st.last_expiry = Some(now);
        let before = now_secs() - days * 86_400.0;
        let gone: Vec<WorkerId> = st
            .workers
            .iter()
            // A drained one stays: the drain must still hold when it comes back.
            .filter(|(_, w)| {
                w.session.is_none() && w.running.is_empty() && !w.draining && w.last_seen < before
            })
            .map(|(k, _)| k.clone())
            .collect();
        for wid in gone {
            tracing::info!(worker = %wid, days, "forgetting a worker not seen for worker_expiry_days");
            st.workers.remove(&wid);
            fx.op(Op::DeleteWorker {
                id: wid.to_string(),
            });
        }
        fx
    }
}

fn drain_msg() -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Drain(pb::Drain {})),
    }
}

pub(super) fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Who a hello is from. With a client certificate: the id the certificate
/// binds (the handler checked the hello names it). Without one (the join
/// token): an id the coordinator issued, proven by its secret; a worker that
/// has none yet (its first hello) is issued a new id and secret, returned
/// here as (secret, hash). An id once used with a certificate is refused
/// without it. Ids stored before secrets existed get one on their next hello.
fn identify(
    st: &State,
    claimed: &str,
    secret: &str,
    cert: Option<&WorkerId>,
) -> Result<(WorkerId, Option<(String, String)>), CoreError> {
    if let Some(id) = cert {
        return Ok((id.clone(), None));
    }
    let issue = || {
        let secret = liandan_common::auth::generate_token();
        let hash = secret_hash(&secret);
        let id = WorkerId::from_suffix(&liandan_common::ids::short_hash(&[hash.as_bytes()], 6));
        (id, Some((secret, hash)))
    };
    let Ok(claimed) = WorkerId::parse(claimed) else {
        return Ok(issue());
    };
    let Some(w) = st.workers.get(&claimed) else {
        // Unknown here (a new worker, or one whose coordinator lost its data).
        return Ok(issue());
    };
    if w.cert_bound {
        return Err(CoreError::PermissionDenied(format!(
            "worker id {claimed} is bound to a client certificate; only that certificate can use it"
        )));
    }
    match &w.secret_hash {
        Some(h)
            if !secret.is_empty() && liandan_common::auth::token_eq(h, &secret_hash(secret)) =>
        {
            Ok((claimed, None))
        }
        Some(_) => Err(CoreError::PermissionDenied(format!(
            "wrong or missing secret for worker {claimed}; a worker presents the secret the coordinator issued with its id (kept in its state dir)"
        ))),
        None => {
            // Registered before issued identities: it gets its secret now.
            let secret = liandan_common::auth::generate_token();
            let hash = secret_hash(&secret);
            tracing::warn!(worker = %claimed, "issuing a secret to a worker registered before worker secrets");
            Ok((claimed, Some((secret, hash))))
        }
    }
}

fn worker_upsert(id: &WorkerId, w: &WorkerMem) -> Op {
    Op::UpsertWorker {
        id: id.to_string(),
        hostname: w.hostname.clone(),
        resources_json: resources_to_json(&w.resources),
        acked_seq: w.acked_seq,
        draining: w.draining,
        last_seen: w.last_seen,
        cert_bound: w.cert_bound,
        secret_hash: w.secret_hash.clone(),
    }
}

fn resources_to_json(r: &pb::Resources) -> String {
    serde_json::json!({
        "cpu_slots": r.cpu_slots,
        "memory_bytes": r.memory_bytes,
        "labels": r.labels,
        "gpus": r.gpus.iter().map(|g| serde_json::json!({"index": g.index, "uuid": g.uuid, "name": g.name, "memory_bytes": g.memory_bytes})).collect::<Vec<_>>(),
    })
    .to_string()
}

pub(super) fn resources_from_json(s: &str) -> pb::Resources {
    let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
    pb::Resources {
        cpu_slots: v["cpu_slots"].as_u64().unwrap_or(0) as u32,
        memory_bytes: v["memory_bytes"].as_u64().unwrap_or(0),
        labels: v["labels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        gpus: v["gpus"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|g| pb::Gpu {
                        index: g["index"].as_u64().unwrap_or(0) as u32,
                        uuid: g["uuid"].as_str().unwrap_or_default().into(),
                        name: g["name"].as_str().unwrap_or_default().into(),
                        memory_bytes: g["memory_bytes"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The worker whose session `session` is: its memory, or why the stream
/// ends (forgotten while its stream was open, it must say hello again; a
/// newer stream of it replaced this one, which kept open would look alive
/// and hold nothing).
pub(super) fn session_worker<'a>(
    st: &'a mut State,
    wid: &WorkerId,
    session: u64,
) -> Result<&'a mut WorkerMem, CoreError> {
    let Some(w) = st.workers.get_mut(wid) else {
        return Err(CoreError::FailedPrecondition(
            "unknown worker; say hello first".into(),
        ));
    };
    if w.session.as_ref().is_none_or(|s| s.id != session) {
        return Err(CoreError::FailedPrecondition(
            "this stream was replaced by a newer one from the same worker".into(),
        ));
    }
    Ok(w)
}
