//! Checkpoint files on the coordinator. An upload is appended to a partial
//! file (so an interrupted upload resumes at its length), then its BLAKE3 hash
//! is verified, the file fsynced, renamed into place and the directory fsynced
//! before the checkpoint is recorded, and only for the job's current attempt.
//! Downloads verify the hash first: a corrupt file is reported, forgotten and
//! never used.

use crate::core::Core;
use crate::store::CheckpointRow;
pub use liandan_common::hash::{hash_file, CHUNK};
use liandan_common::ids::{AttemptNo, JobId};
use liandan_proto::v1 as pb;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

/// Largest checkpoint accepted.
pub const MAX_SIZE: u64 = 256 << 30;

pub struct CheckpointStore {
    root: PathBuf,
    /// Final paths of uploads between their rename into place and their row
    /// (orphan collection must not take them for orphans).
    inflight: std::sync::Mutex<std::collections::HashMap<PathBuf, usize>>,
    /// Uploads in progress at once (each holds a blocking thread that writes
    /// and hashes as bytes arrive): at most `max_uploads`.
    uploads: Arc<tokio::sync::Semaphore>,
    max_uploads: usize,
    /// Longest wait for an upload's next message.
    idle: std::time::Duration,
    /// Uploads being written now, by partial file and by worker.
    writing: Arc<std::sync::Mutex<Writing>>,
}

/// Uploads being written now: one per partial file (checkpoint), at most
/// [`PER_WORKER_UPLOADS`] per worker (a worker uploads one at a time; a
/// resumed upload may overlap the end of the one it replaces).
#[derive(Default)]
struct Writing {
    files: std::collections::HashSet<PathBuf>,
    by_worker: std::collections::HashMap<String, usize>,
}

/// Uploads one worker may have in progress at once, so that no worker holds
/// every `max_uploads` place.
pub const PER_WORKER_UPLOADS: usize = 2;

/// Default of `max_uploads`.
pub const MAX_UPLOADS: usize = 32;
/// Default of `upload_idle_timeout_secs`.
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// What one orphan collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub files: u64,
    pub partials: u64,
    pub bytes: u64,
}

/// How often the coordinator looks for orphaned checkpoint files.
pub const ORPHAN_SCAN: std::time::Duration = std::time::Duration::from_secs(600);

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn io(e: std::io::Error, what: &str) -> Status {
    let hint = if e.raw_os_error() == Some(28) {
        " (disk full: free space on the coordinator's data dir)"
    } else {
        ""
    };
    Status::internal(format!("{what}: {e}{hint}"))
}

/// An upload's place: its permit, its partial file and its worker's count.
/// Moved into the thread that writes the file, so the place is given back
/// only when nothing writes the file any more (not when a cancelled
/// handler is dropped while the thread still writes).
struct UploadPlace {
    _permit: tokio::sync::OwnedSemaphorePermit,
    writing: Arc<std::sync::Mutex<Writing>>,
    file: PathBuf,
    worker: String,
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let mut w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        w.files.remove(&self.file);
        if let Some(n) = w.by_worker.get_mut(&self.worker) {
            *n -= 1;
            if *n == 0 {
                w.by_worker.remove(&self.worker);
            }
        }
    }
}

/// Takes an upload off the in-flight set when it is done (or dropped).
struct InFlight<'a>(&'a CheckpointStore, PathBuf);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = self.0.inflight();
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

struct Listed {
    /// Stored files, relative to the root, with sizes.
    files: Vec<(String, u64)>,
    /// Partial uploads: file names in `.partial`, with sizes.
    partials: Vec<(String, u64)>,
}

fn list_files(root: &Path) -> Listed {
    let mut l = Listed {
        files: Vec::new(),
        partials: Vec::new(),
    };
    let Ok(rd) = std::fs::read_dir(root) else {
        return l;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(t) = e.file_type() else { continue };
        if !t.is_dir() {
            continue;
        }
        let Ok(inner) = std::fs::read_dir(e.path()) else {
            continue;
        };
        for f in inner.flatten() {
            if !f.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let fname = f.file_name().to_string_lossy().to_string();
            if name == ".partial" {
                l.partials.push((fname, size));
            } else {
                l.files.push((format!("{name}/{fname}"), size));
            }
        }
    }
    l
}

/// The job and attempt of a partial upload's file name
/// (`{job}-{attempt}-{step}-{hash16}.part`).
fn parse_partial(name: &str) -> Option<(JobId, u64)> {
    let stem = name.strip_suffix(".part")?;
    let mut it = stem.rsplitn(4, '-');
    let _hash = it.next()?;
    let _step = it.next()?;
    let attempt = it.next()?.parse().ok()?;
    let job = JobId::parse(it.next()?).ok()?;
    Some((job, attempt))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl CheckpointStore {
    pub fn new(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("checkpoints");
        std::fs::create_dir_all(root.join(".partial"))?;
        Ok(Self {
            root,
            inflight: Default::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS)),
            max_uploads: MAX_UPLOADS,
            idle: UPLOAD_IDLE,
            writing: Default::default(),
        })
    }

    /// At most `max` uploads at once, each waiting at most `idle` for its next message.
    pub fn with_upload_limits(mut self, max: usize, idle: std::time::Duration) -> Self {
        self.uploads = Arc::new(tokio::sync::Semaphore::new(max.max(1)));
        self.max_uploads = max.max(1);
        self.idle = idle;
        self
    }

    /// A place for an upload of `file` by `worker`, or why there is none.
    fn upload_place(&self, file: &Path, worker: &str) -> Result<UploadPlace, Status> {
        let Ok(permit) = self.uploads.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} checkpoint uploads are in progress, the most this coordinator takes at once (max_uploads); retry shortly",
                self.max_uploads
            )));
        };
        let mut w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if w.files.contains(file) {
            return Err(Status::aborted(
                "an upload of this checkpoint is already in progress; retry when it ends",
            ));
        }
        let n = w.by_worker.get(worker).copied().unwrap_or(0);
        if n >= PER_WORKER_UPLOADS {
            return Err(Status::resource_exhausted(format!(
                "worker {worker} has {n} checkpoint uploads in progress, the most one worker may; retry when one ends"
            )));
        }
        w.files.insert(file.to_path_buf());
        w.by_worker.insert(worker.to_string(), n + 1);
        Ok(UploadPlace {
            _permit: permit,
            writing: self.writing.clone(),
            file: file.to_path_buf(),
            worker: worker.to_string(),
        })
    }

    /// The next message of an upload, or an error once `idle` passes without one.
    async fn next_message(
        &self,
        stream: &mut Streaming<pb::CheckpointUpload>,
        stored: u64,
    ) -> Result<Option<pb::CheckpointUpload>, Status> {
        match tokio::time::timeout(self.idle, stream.message()).await {
            Ok(m) => m,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no upload data for {} s; the upload stops here (resume from {stored})",
                self.idle.as_secs_f64()
            ))),
        }
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PathBuf, usize>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes checkpoint files no row refers to (a crash between the rename
    /// and the row, a row dropped as corrupt, a file replaced at the same
    /// step, a failed removal), partial uploads of attempts that are no longer
    /// current (they can never be resumed: the fence refuses them), and
    /// emptied job directories. Runs at start and every [`ORPHAN_SCAN`].
    pub async fn collect_orphans(&self, core: &Core) -> Collected {
        let root = self.root.clone();
        // Order: list the files, then see which uploads are between rename
        // and row, then read the rows (an upload not in flight by then has
        // its row in memory already).
        let Ok(listed) = tokio::task::spawn_blocking(move || list_files(&root)).await else {
            return Collected::default();
        };
        let inflight = self.inflight().clone();
        // Memory drops a replaced row before its commit: only once that is
        // durable may the old file go (a crash would bring the row back).
        let Ok(referenced) = core.committed(core.checkpoint_files()).await else {
            return Collected::default();
        };
        let mut doomed = Vec::new();
        let mut partials = Vec::new();
        for (rel, size) in listed.files {
            if !referenced.contains(&rel) && !inflight.contains_key(&self.root.join(&rel)) {
                doomed.push((self.root.join(rel), size));
            }
        }
        for (name, size) in listed.partials {
            let current = parse_partial(&name)
                .is_some_and(|(job, attempt)| core.job_progress(&job) == Some((attempt, false)));
            if !current {
                partials.push((self.root.join(".partial").join(name), size));
            }
        }
        let root = self.root.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut c = Collected::default();
            for (p, size) in doomed {
                if std::fs::remove_file(&p).is_ok() {
                    c.files += 1;
                    c.bytes += size;
                    tracing::info!(file = %p.display(), bytes = size, "removed an orphaned checkpoint file");
                }
            }
            for (p, size) in partials {
                if std::fs::remove_file(&p).is_ok() {
                    c.partials += 1;
                    c.bytes += size;
                }
            }
            // Emptied job directories (remove_dir refuses non-empty ones).
            if let Ok(rd) = std::fs::read_dir(&root) {
                for e in rd.flatten() {
                    if e.file_name() != ".partial" && e.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            c
        })
        .await
        .unwrap_or_default();
        if done.files + done.partials > 0 {
            tracing::info!(
                files = done.files,
                partials = done.partials,
                bytes = done.bytes,
                "orphaned checkpoint data removed"
            );
        }
        done
    }

    fn partial(&self, job: &JobId, attempt: u64, step: i64, hash: &str) -> PathBuf {
        self.root
            .join(".partial")
            .join(format!("{job}-{attempt}-{step}-{}.part", &hash[..16]))
    }

    pub async fn status(
        &self,
        r: pb::CheckpointUploadStatusRequest,
    ) -> Result<pb::CheckpointUploadStatusResponse, Status> {
        let job = JobId::parse(&r.job_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !is_hex64(&r.blake3) {
            return Err(Status::invalid_argument(
                "blake3 must be 64 lowercase hex digits",
            ));
        }
        let received = tokio::fs::metadata(self.partial(&job, r.attempt, r.step, &r.blake3))
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(pb::CheckpointUploadStatusResponse { received })
    }

    pub async fn upload(
        &self,
        core: Arc<Core>,
        caller: String,
        mut stream: Streaming<pb::CheckpointUpload>,
    ) -> Result<pb::UploadCheckpointResponse, Status> {
        let first = self
            .next_message(&mut stream, 0)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let h = first.header.clone().ok_or_else(|| {
            Status::invalid_argument("the first upload message must carry a header")
        })?;
        let job = check_header(&h, &caller)?;
        // Only the worker that holds the job's current attempt may store its checkpoints.
        if !core.holds(&job, AttemptNo(h.attempt), &h.worker_id) {
            core.refuse_stale("checkpoint upload", &h.job_id, h.attempt, &h.worker_id)
                .await;
            return Err(Status::failed_precondition(format!(
                "attempt {} is not the current attempt of {job}; checkpoint refused",
                h.attempt
            )));
        }
        let part = self.partial(&job, h.attempt, h.step, &h.blake3);
        // Bounded: each upload holds a blocking thread, and those are shared
        // with everything else the coordinator does off its runtime threads.
        let place = self.upload_place(&part, &h.worker_id)?;
        let len = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let (tx, writer) = spawn_writer(part.clone(), place, h.size);
        let failure = self.receive(&mut stream, first, &tx, len, h.size).await;
        drop(tx);
        let written = writer.await.map_err(|e| Status::internal(e.to_string()))?;
        let (have, hash) = written.map_err(|e| io(e, "writing the checkpoint"))?;
        if let Some(f) = failure {
            if f.code() == tonic::Code::InvalidArgument && f.message().contains("longer") {
                let _ = tokio::fs::remove_file(&part).await;
            }
            return Err(f);
        }
        if have < h.size {
            return Ok(pb::UploadCheckpointResponse {
                accepted: false,
                message: format!("incomplete: {have} of {} bytes; resume from {have}", h.size),
            });
        }
        if hash != h.blake3 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Status::data_loss(format!(
                "checkpoint hash mismatch: header says {}, content is {hash}; upload it again",
                h.blake3
            )));
        }
        self.keep(&core, &h, &job, &part).await
    }

    /// Receives the chunks after `len` stored bytes into the writer; the
    /// failure that cut the upload short, if one did.
    async fn receive(
        &self,
        stream: &mut Streaming<pb::CheckpointUpload>,
        first: pb::CheckpointUpload,
        tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
        mut len: u64,
        size: u64,
    ) -> Option<Status> {
        let mut msg = Some(first);
        let mut failure = None;
        while let Some(m) = msg.take() {
            if !m.data.is_empty() {
                if m.offset != len {
                    failure = Some(Status::invalid_argument(format!(
                        "upload chunk at offset {} but {len} bytes are stored; resume from {len}",
                        m.offset
                    )));
                    break;
                }
                if len + m.data.len() as u64 > size {
                    failure = Some(Status::invalid_argument(
                        "upload is longer than the size in its header",
                    ));
                    break;
                }
                len += m.data.len() as u64;
                if tx.send(m.data).await.is_err() {
                    break;
                }
            }
            msg = match self.next_message(stream, len).await {
                Ok(m) => m,
                Err(e) => {
                    failure = Some(e);
                    None
                }
            };
        }
        failure
    }

    /// Moves a complete, verified upload into place and records it; older
    /// checkpoints the retention policy lets go are removed once it is durable.
    async fn keep(
        &self,
        core: &Core,
        h: &pb::CheckpointUploadHeader,
        job: &JobId,
        part: &Path,
    ) -> Result<pb::UploadCheckpointResponse, Status> {
        let dir = self.root.join(job.as_str());
        let final_path = dir.join(format!("{}-{}.ckpt", h.step, &h.blake3[..16]));
        let (d, p, f) = (dir.clone(), part.to_path_buf(), final_path.clone());
        *self.inflight().entry(final_path.clone()).or_default() += 1;
        let _inflight = InFlight(self, final_path.clone());
        let moved = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&d)?;
            std::fs::rename(&p, &f)?;
            fsync_dir(&d)?;
            fsync_dir(p.parent().unwrap_or(Path::new(".")))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        moved.map_err(|e| io(e, "storing the checkpoint"))?;
        let rel = final_path
            .strip_prefix(&self.root)
            .unwrap_or(&final_path)
            .to_string_lossy()
            .to_string();
        match core.add_checkpoint(row(h, rel.clone()), &h.worker_id).await {
            Ok(removed) => {
                // Older checkpoints go only now that the newer one is durable.
                for f in removed {
                    let _ = tokio::fs::remove_file(self.root.join(f)).await;
                }
                Ok(pb::UploadCheckpointResponse {
                    accepted: true,
                    message: String::new(),
                })
            }
            Err(e) => {
                // Refused (a stale attempt): its file goes, unless a stored row
                // names the same file (same step and content from another attempt).
                if !core.checkpoint_files().contains(&rel) {
                    let _ = tokio::fs::remove_file(&final_path).await;
                }
                Err(e.into())
            }
        }
    }

    pub async fn download(
        &self,
        core: Arc<Core>,
        r: pb::DownloadCheckpointRequest,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<pb::CheckpointChunk, Status>> + Send>>, Status>
    {
        // Only a committed row is served (a crash must not revert what was downloaded).
        let list = core.committed(core.checkpoints(&r.job_id)?).await?;
        let c = if r.step < 0 {
            list.iter().max_by_key(|c| c.step)
        } else {
            list.iter().find(|c| c.step == r.step)
        };
        let c = c.cloned().ok_or_else(|| {
            Status::not_found(format!(
                "no checkpoint{} for job {}; list them with `liandan checkpoints JOB`",
                if r.step < 0 {
                    String::new()
                } else {
                    format!(" at step {}", r.step)
                },
                r.job_id
            ))
        })?;
        let path = self.root.join(&c.file);
        if r.offset > c.size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the checkpoint's size {}",
                r.offset, c.size
            )));
        }
        let corrupt = |c: &CheckpointRow| {
            Status::data_loss(format!(
                "checkpoint at step {} of {} is corrupt (hash mismatch) and was discarded",
                c.step, c.job_id
            ))
        };
        // A resumed download cannot hash in passing: verify the whole file first.
        if r.offset > 0 {
            let ok = matches!(hash_file(path.clone()).await, Ok((hash, size)) if hash == c.blake3 && size == c.size);
            if !ok {
                tracing::error!(job = %c.job_id, step = c.step, file = %path.display(), "stored checkpoint is corrupt or missing; it will not be used");
                core.drop_checkpoint(&c.job_id, c.step).await?;
                return Err(corrupt(&c));
            }
        }
        let meta = crate::core::checkpoint_info(&c);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::CheckpointChunk, Status>>(4);
        // A blocking thread reads, hashes and sends; a download from the start is
        // verified in passing and ends with DATA_LOSS instead of success when the
        // content does not match (clients verify the hash too and discard it).
        let btx = tx.clone();
        let offset0 = r.offset;
        // `None`: the client went away before the end. Only a read of the
        // whole file can judge it; a cut-off reader says nothing about it.
        let reader =
            tokio::task::spawn_blocking(move || -> std::io::Result<Option<(String, u64)>> {
                use std::io::Seek;
                let mut file = std::fs::File::open(&path)?;
                file.seek(std::io::SeekFrom::Start(offset0))?;
                let mut hasher = blake3::Hasher::new();
                let mut offset = offset0;
                let mut first = true;
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    let n = file.read(&mut buf)?;
                    if n == 0 && !first {
                        break;
                    }
                    buf.truncate(n);
                    hasher.update(&buf);
                    let chunk = pb::CheckpointChunk {
                        meta: first.then(|| meta.clone()),
                        offset,
                        data: buf,
                    };
                    first = false;
                    offset += n as u64;
                    if btx.blocking_send(Ok(chunk)).is_err() {
                        return Ok(None);
                    }
                    if n == 0 {
                        break;
                    }
                }
                Ok(Some((
                    hasher.finalize().to_hex().to_string(),
                    offset - offset0,
                )))
            });
        tokio::spawn(async move {
            let verdict = match reader.await {
                Ok(Ok(None)) => {
                    tracing::debug!(job = %c.job_id, step = c.step, "checkpoint download ended by the client before the end");
                    true
                }
                Ok(Ok(Some((hash, n)))) => offset0 > 0 || (hash == c.blake3 && n == c.size),
                _ => false,
            };
            if !verdict {
                tracing::error!(job = %c.job_id, step = c.step, "stored checkpoint is corrupt or unreadable; it will not be used");
                let _ = core.drop_checkpoint(&c.job_id, c.step).await;
                let _ = tx.send(Err(corrupt(&c))).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

fn row(h: &pb::CheckpointUploadHeader, file: String) -> CheckpointRow {
    CheckpointRow {
        job_id: h.job_id.clone(),
        attempt: h.attempt,
        step: h.step,
        size: h.size,
        blake3: h.blake3.clone(),
        metric: h.metric,
        created_at: liandan_common::time::now_secs(),
        file,
    }
}

/// The header's own checks: a job id, a content hash, a size under the limit,
/// and the uploading worker's own name.
fn check_header(h: &pb::CheckpointUploadHeader, caller: &str) -> Result<JobId, Status> {
    let job = JobId::parse(&h.job_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !is_hex64(&h.blake3) {
        return Err(Status::invalid_argument(
            "blake3 must be 64 lowercase hex digits",
        ));
    }
    if h.size > MAX_SIZE {
        return Err(Status::invalid_argument(format!(
            "checkpoint of {} bytes is larger than the limit of {MAX_SIZE}",
            h.size
        )));
    }
    if h.worker_id != caller {
        return Err(Status::permission_denied(format!(
            "this upload comes from worker {caller}, not {:?}",
            h.worker_id
        )));
    }
    Ok(job)
}

type Writer = tokio::task::JoinHandle<std::io::Result<(u64, String)>>;

/// One blocking thread writes and hashes as bytes arrive (no re-read, no
/// per-chunk hop); it first hashes what an interrupted upload left. It ends
/// with the bytes stored and their hash.
fn spawn_writer(
    wpart: PathBuf,
    place: UploadPlace,
    size: u64,
) -> (tokio::sync::mpsc::Sender<Vec<u8>>, Writer) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
        use std::io::Write;
        let _place = place;
        let mut hasher = blake3::Hasher::new();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&wpart)?;
        let mut have = 0u64;
        {
            let mut buf = vec![0u8; CHUNK];
            let mut r = std::fs::File::open(&wpart)?;
            loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                have += k as u64;
            }
        }
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            hasher.update(&chunk);
            have += chunk.len() as u64;
        }
        if have < size {
            file.sync_data()?;
        } else {
            file.sync_all()?;
        }
        Ok((have, hasher.finalize().to_hex().to_string()))
    });
    (tx, writer)
}
