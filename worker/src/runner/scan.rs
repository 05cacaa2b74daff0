//! New checkpoints in an attempt's directory, published for upload: only
//! regular files with one link, each told once when refused.

use super::*;

/// Parses `step-<N>.ckpt`, the published checkpoint name.
pub fn checkpoint_step(name: &str) -> Option<i64> {
    // Steps count up from 0: a name the job chose with a sign is no checkpoint.
    let digits = name.strip_prefix("step-")?.strip_suffix(".ckpt")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checkpoint files of an attempt the worker will not read: refused for good
/// (a link, not a regular file), or busy for now (more than one link), told
/// once each.
#[derive(Default)]
pub(super) struct Refused {
    pub(super) never: std::collections::HashSet<i64>,
    pub(super) busy_told: std::collections::HashSet<i64>,
}

pub(super) async fn scan_checkpoints(
    ctx: &WorkerCtx,
    job: &str,
    attempt: u64,
    dir: &Path,
    last: &Mutex<Option<f64>>,
    refused: &mut Refused,
) {
    // The directory as the job left it: never through a link it planted.
    let d = dir.to_path_buf();
    let Ok(Ok(names)) = tokio::task::spawn_blocking(move || crate::jail::list_job_dir(&d)).await
    else {
        return;
    };
    let known = ctx
        .spool
        .uploads_known(job, attempt)
        .await
        .unwrap_or_default();
    for name in names {
        let Some(step) = checkpoint_step(&name) else {
            continue;
        };
        if known.contains(&step) || refused.never.contains(&step) {
            continue;
        }
        let (d, n) = (dir.to_path_buf(), name.clone());
        let hashed = tokio::task::spawn_blocking(move || {
            liandan_common::hash::hash_reader(crate::jail::open_job_file(&d, &n)?)
        })
        .await;
        let (hash, size) = match hashed {
            Ok(Ok(x)) => x,
            // Gone again, or (hard links) maybe only for now: look next time.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                if refused.busy_told.insert(step) {
                    tracing::warn!(job, attempt, file = %name, error = %e, "not reading a checkpoint with more than one link; looking again later");
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(job, attempt, file = %name, error = %e, "not a checkpoint the worker will read (a link or not a regular file); ignored");
                refused.never.insert(step);
                continue;
            }
            Err(_) => continue,
        };
        let path = dir.join(&name);
        let metric = *last.lock().unwrap_or_else(|p| p.into_inner());
        let entry = UploadEntry {
            job_id: job.into(),
            attempt,
            step,
            path: path.display().to_string(),
            size,
            blake3: hash,
            metric,
            done: false,
        };
        if ctx.spool.upload_insert(entry).await.is_ok() {
            tracing::info!(job, attempt, step, size, "checkpoint published");
            ctx.uploads.notify_one();
        }
    }
}
