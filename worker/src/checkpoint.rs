//! Checkpoint transfer on the worker: uploads of published checkpoints (in
//! chunks, resumed from where the coordinator says it stopped), and downloads
//! of the checkpoint a requeued attempt resumes from (verified by hash; a local
//! copy with the right hash is used without downloading).

use crate::ctx::WorkerCtx;
pub use liandan_common::hash::{hash_file, CHUNK};
use liandan_proto::v1 as pb;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Uploads one checkpoint, resuming a partial upload. Ok(true) when accepted,
/// Ok(false) when the coordinator refused it for good (stale attempt).
pub async fn upload(
    client: &mut crate::ctx::Client,
    ctx: &WorkerCtx,
    u: &crate::spool::UploadEntry,
) -> Result<(), tonic::Status> {
    let status = match client
        .checkpoint_upload_status(pb::CheckpointUploadStatusRequest {
            job_id: u.job_id.clone(),
            attempt: u.attempt,
            step: u.step,
            blake3: u.blake3.clone(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return Err(s),
    };
    let mut offset = status.received.min(u.size);
    // The file as published, never through a link the job put there since.
    let path = PathBuf::from(&u.path);
    let opened = tokio::task::spawn_blocking(move || crate::jail::open_job_path(&path))
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut file = tokio::fs::File::from_std(
        opened.map_err(|e| tonic::Status::not_found(format!("{}: {e}", u.path)))?,
    );
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let header = pb::CheckpointUploadHeader {
        job_id: u.job_id.clone(),
        attempt: u.attempt,
        step: u.step,
        size: u.size,
        blake3: u.blake3.clone(),
        metric: u.metric,
        worker_id: ctx.id(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let size = u.size;
    let reader = tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(_) => return,
            };
            buf.truncate(n);
            if n == 0 && !first {
                return;
            }
            let msg = pb::CheckpointUpload {
                header: first.then(|| header.clone()),
                offset,
                data: buf,
            };
            first = false;
            offset += n as u64;
            if tx.send(msg).await.is_err() || n == 0 || offset >= size {
                return;
            }
        }
    });
    let result = client
        .upload_checkpoint(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.abort();
    match result {
        Ok(r) => {
            let r = r.into_inner();
            if r.accepted {
                Ok(())
            } else {
                Err(tonic::Status::aborted(r.message))
            }
        }
        Err(s) => Err(s),
    }
}

/// Finds a local copy of a checkpoint with the right hash under the job's
/// attempt dirs. Earlier attempts' files are the job's: opened as
/// [`crate::jail::open_job_file`] does (no link, no FIFO, one hard link).
async fn local_copy(job_dir: &Path, step: i64, hash: &str) -> Option<PathBuf> {
    let hash_of = |p: PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            liandan_common::hash::hash_reader(crate::jail::open_job_path(&p)?)
        })
        .await
        .ok()?
        .ok()
        .map(|(h, _)| h)
    };
    let mut rd = tokio::fs::read_dir(job_dir).await.ok()?;
    while let Ok(Some(e)) = rd.next_entry().await {
        let cand = e
            .path()
            .join("checkpoints")
            .join(format!("step-{step}.ckpt"));
        if hash_of(cand.clone()).await.as_deref() == Some(hash) {
            return Some(cand);
        }
    }
    let cached = job_dir.join(format!("resume-{step}-{}.ckpt", hash.get(..16)?));
    (hash_of(cached.clone()).await.as_deref() == Some(hash)).then_some(cached)
}

/// Makes the checkpoint `c` available locally and returns its path.
pub async fn fetch(
    client: &mut crate::ctx::Client,
    job_dir: &Path,
    c: &pb::Checkpoint,
) -> Result<PathBuf, String> {
    if let Some(p) = local_copy(job_dir, c.step, &c.blake3).await {
        tracing::info!(job = %c.job_id, step = c.step, "resuming from the local copy of the checkpoint");
        return Ok(p);
    }
    let dest = job_dir.join(format!(
        "resume-{}-{}.ckpt",
        c.step,
        &c.blake3.get(..16).unwrap_or("x")
    ));
    let part = dest.with_extension("part");
    tokio::fs::create_dir_all(job_dir)
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..5 {
        let have = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await
            .map_err(|e| format!("{}: {e}", part.display()))?;
        let stream = client
            .fetch_checkpoint(pb::DownloadCheckpointRequest {
                job_id: c.job_id.clone(),
                step: c.step,
                offset: have,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::DataLoss || s.code() == tonic::Code::NotFound => {
                return Err(s.message().to_string())
            }
            Err(_) => continue,
        };
        let mut ok = true;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => f.write_all(&chunk.data).await.map_err(|e| e.to_string())?,
                Ok(None) => break,
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        f.sync_all().await.map_err(|e| e.to_string())?;
        if !ok {
            continue;
        }
        let (h, n) = hash_file(part.clone()).await.map_err(|e| e.to_string())?;
        if h == c.blake3 && n == c.size {
            tokio::fs::rename(&part, &dest)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(dest);
        }
        let _ = tokio::fs::remove_file(&part).await;
        return Err(format!(
            "downloaded checkpoint hash {h} does not match {}",
            c.blake3
        ));
    }
    Err("could not download the checkpoint after 5 tries".into())
}
