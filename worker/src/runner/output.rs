//! An attempt's output: lines read with bounded memory, numbered and sent to
//! the spool in batches, metrics picked out of stdout and the metrics file.

use super::*;

/// Longest line stored as one record; longer lines are split.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// Pieces one over-long line is split into before the rest of it is dropped
/// (with a marker line saying how much): 1 MiB of one line is kept.
pub(super) const MAX_PIECES: usize = 16;

/// Longest metrics-file line read; a longer one is skipped with a notice.
pub(super) const MAX_METRIC_LINE: usize = 1 << 20;

/// Where an attempt's output goes and what is picked out of it ([`sink`]).
pub(super) struct Sink {
    pub(super) ctx: Arc<WorkerCtx>,
    pub(super) job: String,
    pub(super) attempt: u64,
    /// The sweep's `metric_pattern`, applied to stdout.
    pub(super) pattern: Option<regex::Regex>,
    /// The last value of the sweep's metric, for the checkpoint it goes with.
    pub(super) last_metric: Arc<Mutex<Option<f64>>>,
    pub(super) metric_name: Option<String>,
    /// Set when the job says its disk is full.
    pub(super) enospc: Arc<std::sync::atomic::AtomicBool>,
}

/// Sends output lines to the spool in batches, numbering them per attempt,
/// and picks metrics out of stdout with the sweep's `metric_pattern`.
pub(super) async fn sink(to: Sink, mut rx: mpsc::Receiver<(bool, String)>) {
    let Sink {
        ctx,
        job,
        attempt,
        pattern,
        last_metric,
        metric_name,
        enospc,
    } = to;
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 2048).await > 0 {
        let mut recs = Vec::with_capacity(buf.len());
        for (is_err, text) in buf.drain(..) {
            line_no += 1;
            let ts = now_secs();
            if is_err && text.contains("No space left on device") {
                enospc.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if !is_err {
                if let Some(m) = pattern.as_ref().and_then(|re| metrics_from_line(re, &text)) {
                    note_metric(&m, &last_metric, metric_name.as_deref());
                    let step = m.get("step").and_then(|s| s.as_i64());
                    recs.push(record(
                        &job,
                        attempt,
                        pb::record::Body::Metric(pb::MetricReport {
                            step,
                            ts,
                            json: m.to_string(),
                        }),
                    ));
                }
            }
            recs.push(record(
                &job,
                attempt,
                pb::record::Body::Log(pb::LogRecord {
                    line: line_no,
                    stream: if is_err {
                        pb::Stream::Stderr
                    } else {
                        pb::Stream::Stdout
                    } as i32,
                    legacy_stream: String::new(),
                    ts,
                    text,
                }),
            ));
        }
        ctx.spool.append(recs).await;
    }
}

/// Named groups of the pattern that parse as numbers become a metric object.
pub fn metrics_from_line(re: &regex::Regex, line: &str) -> Option<serde_json::Value> {
    let caps = re.captures(line)?;
    let mut obj = serde_json::Map::new();
    for name in re.capture_names().flatten() {
        if let Some(v) = caps.name(name).and_then(|m| m.as_str().parse::<f64>().ok()) {
            let n = if name == "step" {
                serde_json::Value::from(v as i64)
            } else {
                serde_json::Number::from_f64(v)
                    .map(serde_json::Value::Number)
                    .unwrap_or_default()
            };
            obj.insert(name.to_string(), n);
        }
    }
    (!obj.is_empty()).then_some(serde_json::Value::Object(obj))
}

pub(super) fn note_metric(v: &serde_json::Value, last: &Mutex<Option<f64>>, name: Option<&str>) {
    if let Some(x) = name.and_then(|n| v.get(n)).and_then(|x| x.as_f64()) {
        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(x);
    }
}

/// Reads a job's output as lines, holding at most [`MAX_LINE`] bytes of it:
/// a longer line is sent in pieces of `MAX_LINE`, and past [`MAX_PIECES`]
/// pieces the rest of it is dropped and a marker line says how many bytes
/// (a job printing a gigabyte without a newline costs the worker 64 KiB).
pub(super) async fn read_lines<R: AsyncRead + Unpin>(
    r: R,
    is_err: bool,
    tx: mpsc::Sender<(bool, String)>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_LINE);
    // Pieces of the current line sent so far, and bytes of it dropped.
    let mut pieces = 0usize;
    let mut dropped = 0u64;
    let send = |text: String| {
        let tx = tx.clone();
        async move { tx.send((is_err, text)).await.is_ok() }
    };
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(c) => c,
        };
        let (take, newline) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let mut part = &chunk[..take];
        if newline {
            part = &part[..part.len() - 1];
        }
        if pieces >= MAX_PIECES {
            dropped += part.len() as u64;
        } else {
            let room = MAX_LINE - buf.len();
            buf.extend_from_slice(&part[..part.len().min(room)]);
            let rest = part.len().saturating_sub(room);
            if buf.len() == MAX_LINE && (rest > 0 || !newline) {
                // A full piece of a line that goes on.
                let text = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                pieces += 1;
                if !send(text).await {
                    return;
                }
                if pieces >= MAX_PIECES {
                    dropped += rest as u64;
                } else {
                    buf.extend_from_slice(&part[part.len() - rest..]);
                }
            }
        }
        reader.consume(take);
        if newline {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            if !buf.is_empty() || pieces == 0 {
                let text = String::from_utf8_lossy(&buf).into_owned();
                if !send(text).await {
                    return;
                }
            }
            if dropped > 0 {
                let note = format!(
                    "[liandan: line cut after {} bytes; {dropped} more bytes dropped]",
                    MAX_LINE * MAX_PIECES
                );
                if !send(note).await {
                    return;
                }
            }
            buf.clear();
            pieces = 0;
            dropped = 0;
        }
    }
    // The output ended without a final newline.
    if !buf.is_empty() {
        let _ = send(String::from_utf8_lossy(&buf).into_owned()).await;
    }
    if dropped > 0 {
        let _ = send(format!(
            "[liandan: line cut after {} bytes; {dropped} more bytes dropped]",
            MAX_LINE * MAX_PIECES
        ))
        .await;
    }
}

/// A line from the worker itself for the job's stderr (numbered by the log sink).
pub(super) fn stderr_notice(job: &str, attempt: u64, text: String) -> pb::Record {
    record(
        job,
        attempt,
        pb::record::Body::Log(pb::LogRecord {
            line: 0,
            stream: pb::Stream::Stderr as i32,
            legacy_stream: String::new(),
            ts: now_secs(),
            text,
        }),
    )
}

/// The notice that metrics-file line `line` was too long.
pub(super) fn too_long(job: &str, attempt: u64, line: u64) -> pb::Record {
    tracing::warn!(job, line, "metrics line over the limit");
    stderr_notice(
        job,
        attempt,
        format!("liandan-worker: metrics file line {line} is longer than {MAX_METRIC_LINE} bytes; skipped"),
    )
}

/// Reads complete new lines of the metrics file from `offset`.
pub(super) struct MetricsTail {
    pub(super) path: PathBuf,
    pub(super) offset: u64,
    pub(super) partial: Vec<u8>,
    pub(super) line: u64,
    /// Inside a line longer than [`MAX_METRIC_LINE`]: skipped to its newline.
    pub(super) skipping: bool,
}

impl MetricsTail {
    pub(super) async fn poll(
        &mut self,
        ctx: &WorkerCtx,
        job: &str,
        attempt: u64,
        last: &Mutex<Option<f64>>,
        name: Option<&str>,
    ) -> bool {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        // Never through a link the job planted in place of its metrics file.
        let path = self.path.clone();
        let Ok(Ok(f)) =
            tokio::task::spawn_blocking(move || crate::jail::open_job_path(&path)).await
        else {
            return false;
        };
        let mut f = tokio::fs::File::from_std(f);
        if f.seek(std::io::SeekFrom::Start(self.offset)).await.is_err() {
            return false;
        }
        // A bounded read per poll: the file can grow faster than it is read.
        let mut data = Vec::new();
        let mut bounded = f.take(4 * MAX_METRIC_LINE as u64);
        if bounded.read_to_end(&mut data).await.is_err() || data.is_empty() {
            return false;
        }
        self.offset += data.len() as u64;
        let mut recs = Vec::new();
        let mut data = &data[..];
        if self.skipping {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.skipping = false;
                    data = &data[i + 1..];
                }
                None => return true,
            }
        }
        self.partial.extend_from_slice(data);
        if !self.partial.contains(&b'\n') && self.partial.len() > MAX_METRIC_LINE {
            // A line this long is no metrics record: say so and skip to its end.
            self.line += 1;
            self.partial.clear();
            self.skipping = true;
            recs.push(too_long(job, attempt, self.line));
        }
        // Complete lines only; a partial last line waits for its newline.
        let complete = self
            .partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0);
        let buf: Vec<u8> = self.partial.drain(..complete).collect();
        // `buf` ends with a newline (or is empty): drop it before splitting.
        let body = buf.strip_suffix(b"\n").unwrap_or(&[]);
        for line in body.split(|b| *b == b'\n').filter(|_| !buf.is_empty()) {
            self.line += 1;
            if line.len() > MAX_METRIC_LINE {
                recs.push(too_long(job, attempt, self.line));
                continue;
            }
            let text = String::from_utf8_lossy(line).trim().to_string();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v @ serde_json::Value::Object(_)) => {
                    note_metric(&v, last, name);
                    let step = v.get("step").and_then(|s| s.as_i64());
                    recs.push(record(
                        job,
                        attempt,
                        pb::record::Body::Metric(pb::MetricReport {
                            step,
                            ts: now_secs(),
                            json: v.to_string(),
                        }),
                    ));
                }
                _ => {
                    // Reported where the user looks, not fatal.
                    tracing::warn!(job, line = self.line, "malformed metrics line");
                    let msg = format!(
                        "liandan-worker: metrics file line {} is not a JSON object; skipped: {}",
                        self.line,
                        text.chars().take(200).collect::<String>()
                    );
                    recs.push(stderr_notice(job, attempt, msg));
                }
            }
        }
        // Notices about malformed lines go through the log sink, which numbers lines.
        let (logs, metrics): (Vec<_>, Vec<_>) = recs
            .into_iter()
            .partition(|r| matches!(r.body, Some(pb::record::Body::Log(_))));
        if !metrics.is_empty() {
            ctx.spool.append(metrics).await;
        }
        for l in logs {
            if let Some(pb::record::Body::Log(l)) = l.body {
                ctx.notice(job, attempt, l.text).await;
            }
        }
        true
    }
}
