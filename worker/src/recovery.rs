//! Start-up: the state directory locked, identity and TLS prepared, and what
//! a previous run left (attempts still journaled) recovered.

use crate::ctx::WorkerCtx;
use crate::error::WorkerError;
use crate::spool::Spool;
use crate::{gpu, jail, runner};
use liandan_common::config::WorkerConfig;
use liandan_common::ids::WorkerId;
use liandan_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

fn lock_state_dir(dir: &std::path::Path) -> Result<liandan_common::lockdir::DirLock, WorkerError> {
    use liandan_common::lockdir::{lock_dir, LockError};
    lock_dir(dir, "worker.lock").map_err(|e| match e {
        LockError::Io(_, e) => WorkerError::StateDir(dir.to_path_buf(), e),
        LockError::Held(p, pid) => WorkerError::Locked(p, pid),
    })
}

/// Opens the state dir and recovers; returns the context ready to connect.
pub async fn prepare(
    mut cfg: WorkerConfig,
) -> Result<(Arc<WorkerCtx>, nix::fcntl::Flock<std::fs::File>), WorkerError> {
    liandan_common::lockdir::create_private_dir(&cfg.state_dir)
        .map_err(|e| WorkerError::StateDir(cfg.state_dir.clone(), e))?;
    // Jobs run in their own directories: every path handed to them must be absolute.
    cfg.state_dir = std::path::absolute(&cfg.state_dir)
        .map_err(|e| WorkerError::StateDir(cfg.state_dir.clone(), e))?;
    if cfg.train_binary.contains('/') {
        cfg.train_binary = std::path::absolute(&cfg.train_binary)
            .map(|p| p.display().to_string())
            .unwrap_or(cfg.train_binary);
    }
    let lock = lock_state_dir(&cfg.state_dir)?;
    let spool = Spool::open(&cfg.state_dir.join("worker.db"), cfg.spool_max_bytes)?;
    let cert_id = if cfg.tls_cert.is_empty() {
        None
    } else {
        // Mutual TLS: the certificate is the identity.
        let pem = std::fs::read_to_string(&cfg.tls_cert)
            .map_err(|e| WorkerError::Tls(format!("cannot read tls_cert {}: {e}", cfg.tls_cert)))?;
        Some(
            liandan_common::auth::worker_id_from_cert_pem(&pem).ok_or_else(|| {
                WorkerError::Tls(format!(
                    "tls_cert {} holds no PEM certificate",
                    cfg.tls_cert
                ))
            })?,
        )
    };
    let stored = spool
        .meta("worker_id")
        .await
        .ok()
        .flatten()
        .and_then(|s| WorkerId::parse(&s).ok());
    let secret = spool.meta("worker_secret").await.ok().flatten();
    // A certificate is the identity; otherwise the one the coordinator issued
    // (an id stored without a secret is from before issued identities: the
    // coordinator gives it a secret at its next hello).
    let cert_bound = cert_id.is_some();
    let worker_id = cert_id.or(stored);
    if let (true, Some(id)) = (cert_bound, &worker_id) {
        spool.set_meta("worker_id", id.to_string()).await?;
    }
    let identity: liandan_common::auth::WorkerIdentity = Default::default();
    if let (false, Some(id), Some(secret)) = (cert_bound, &worker_id, &secret) {
        *identity.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((id.to_string(), secret.clone()));
    }
    let gpus = match cfg.gpus.as_str() {
        "auto" => gpu::discover(),
        "visible" => gpu::visible(
            gpu::discover(),
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        ),
        _ => Vec::new(),
    };
    if gpus.is_empty() && cfg.slots == 0 {
        // `slots = 0` is for a GPU machine whose CPUs are not for jobs; with
        // no GPU found this worker would offer nothing and sit idle forever.
        return Err(WorkerError::Jail(format!(
            "slots = 0 and no GPU was found (gpus = {:?}): this worker would offer nothing; give --slots N for CPU jobs, or check the NVIDIA driver (the worker reads GPUs through NVML)",
            cfg.gpus
        )));
    }
    let resources = pb::Resources {
        gpus,
        cpu_slots: cfg.slots,
        memory_bytes: memory_total(),
        labels: cfg.labels.clone(),
    };
    // The join token: the configured file, else LIANDAN_JOIN_TOKEN, else the
    // systemd credential. Never LIANDAN_TOKEN(_FILE): those are a user's CLI
    // token, and a worker started from that user's shell must not send it.
    let read = |p: &std::path::Path| {
        liandan_common::auth::read_secret_file(p).map_err(|e| WorkerError::Tls(e.to_string()))
    };
    let token = match std::env::var("LIANDAN_JOIN_TOKEN") {
        _ if !cfg.join_token_file.is_empty() => {
            Some(read(std::path::Path::new(&cfg.join_token_file))?)
        }
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => liandan_common::auth::read_credential("liandan-join-token")
            .transpose()
            .map_err(|e| WorkerError::Tls(e.to_string()))?,
    };
    if token.is_none()
        && cfg.tls_cert.is_empty()
        && ["LIANDAN_TOKEN", "LIANDAN_TOKEN_FILE"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    {
        tracing::warn!("LIANDAN_TOKEN and LIANDAN_TOKEN_FILE are the CLI's user token and are not sent by the worker; give the worker the join token with join_token_file, LIANDAN_JOIN_TOKEN or the credential liandan-join-token");
    }
    if let Some(host) = token
        .as_ref()
        .and_then(|_| liandan_common::auth::token_in_the_clear(&cfg.coordinator))
    {
        return Err(WorkerError::Tls(format!(
            "refusing to send the join token over plaintext http:// to {host}: anyone on the path could read it and join as a worker; use an https:// coordinator URL with tls_ca, or a loopback address"
        )));
    }
    let token = liandan_common::auth::TokenInterceptor::new(token.as_deref())
        .map_err(WorkerError::Tls)?
        .with_worker_identity(identity.clone());
    let jobs_dir = cfg.state_dir.join("jobs");
    std::fs::create_dir_all(&jobs_dir).map_err(|e| WorkerError::StateDir(jobs_dir.clone(), e))?;
    let job_user = match cfg.job_user.as_str() {
        "" => None,
        name => {
            let u = jail::JobUser::resolve(name).map_err(WorkerError::Jail)?;
            u.open_state_dir(&cfg.state_dir, &jobs_dir)
                .map_err(WorkerError::Jail)?;
            tracing::info!(user = %u.name, uid = u.uid, "jobs run as job_user");
            Some(u)
        }
    };
    let cgroups =
        jail::Cgroups::open(&cfg.job_cgroups, &cfg.state_dir).map_err(WorkerError::Jail)?;
    let ctx = Arc::new(WorkerCtx {
        cfg,
        spool,
        worker_id: Mutex::new(worker_id),
        identity,
        resources,
        running: Mutex::new(HashMap::new()),
        uploads: Notify::new(),
        upload_done: Notify::new(),
        jobs_dir,
        channel: Mutex::new(None),
        liveness: liandan_common::systemd::Liveness::new(),
        stopping: AtomicBool::new(false),
        token,
        announce_stop: Notify::new(),
        stop_announced: Notify::new(),
        retention: Notify::new(),
        retiring: Mutex::new(Default::default()),
        retired: Notify::new(),
        disk: Mutex::new(None),
        job_user,
        cgroups,
    });
    recover(&ctx).await?;
    Ok((ctx, lock))
}

/// Attempts that were running when the worker died: their processes cannot be
/// re-attached (their output pipes died with us), so surviving ones are
/// killed, and each is reported as interrupted (not failed): the coordinator
/// requeues it without spending a retry, and it resumes from its checkpoint.
pub(crate) async fn recover(ctx: &WorkerCtx) -> Result<(), WorkerError> {
    liandan_common::systemd::status("recovering the journal");
    for e in ctx.spool.journal().await? {
        if e.exit_seq.is_some() {
            continue;
        }
        if let Some(pid) = e.pid {
            let ours = e.start_ticks.is_some() && runner::process_start_ticks(pid) == e.start_ticks;
            if ours {
                tracing::warn!(job = %e.job_id, attempt = e.attempt, pid, "killing the orphaned process group of an attempt from before the restart");
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if ctx.job_user.is_some() {
            // The dead attempt's directory is the worker's again.
            jail::JobUser::take_back(&ctx.attempt_dir(&e.job_id, e.attempt));
        }
        let rec = pb::Record {
            seq: 0,
            job_id: e.job_id.clone(),
            attempt: e.attempt,
            body: Some(pb::record::Body::Exited(crate::ctx::exit_record(
                pb::Outcome::Interrupted,
                -1,
                0,
                "the worker restarted while this attempt ran".into(),
            ))),
        };
        let seq = ctx.spool.append(vec![rec]).await;
        ctx.spool
            .journal_set_exit(e.job_id.clone(), e.attempt, seq)
            .await?;
        tracing::info!(job = %e.job_id, attempt = e.attempt, "reported an interrupted attempt");
    }
    Ok(())
}

/// The machine's memory in bytes (MemTotal of /proc/meminfo); 0 where it
/// cannot be read.
fn memory_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .as_deref()
        .and_then(mem_total_of)
        .unwrap_or(0)
}

fn mem_total_of(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod memory_tests {
    #[test]
    fn mem_total_reads_kib_and_refuses_what_it_cannot_read() {
        let m = "MemTotal:       24554028 kB\nMemFree:         1000 kB\n";
        assert_eq!(super::mem_total_of(m), Some(24_554_028 * 1024));
        assert_eq!(super::mem_total_of("MemFree: 1 kB\n"), None);
        assert_eq!(super::mem_total_of("MemTotal: lots kB\n"), None);
        assert_eq!(super::mem_total_of("MemTotal: 1 MB\n"), None);
        assert!(super::memory_total() > 0, "this machine has /proc/meminfo");
    }
}
