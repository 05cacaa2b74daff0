//! The worker's session loop against a scripted coordinator: the protocol
//! cases a real coordinator rarely produces on cue (acknowledgements withheld,
//! an assignment crossing the worker's stop).

use std::sync::Mutex;
use std::time::Duration;

use liandan_proto::v1 as pb;
use pb::worker_service_server::{WorkerService, WorkerServiceServer};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

type Out = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, Status>>;

/// A coordinator the test scripts: what the worker sends arrives on `inbound`,
/// what the test sends goes out on the one session it accepts.
struct Scripted {
    inbound: mpsc::UnboundedSender<pb::WorkerMessage>,
    outbound: Mutex<Option<mpsc::UnboundedReceiver<Result<pb::CoordinatorMessage, Status>>>>,
    /// Upload-status calls so far; each is answered "not held" (a stale attempt).
    status_calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

type BoxStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl WorkerService for Scripted {
    type SessionStream = BoxStream<pb::CoordinatorMessage>;

    async fn session(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let rx = self
            .outbound
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Status::unavailable("this test coordinator takes one session"))?;
        let mut from_worker = req.into_inner();
        let tx = self.inbound.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = from_worker.message().await {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn upload_checkpoint(
        &self,
        _: Request<Streaming<pb::CheckpointUpload>>,
    ) -> Result<Response<pb::UploadCheckpointResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn checkpoint_upload_status(
        &self,
        req: Request<pb::CheckpointUploadStatusRequest>,
    ) -> Result<Response<pb::CheckpointUploadStatusResponse>, Status> {
        self.status_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = req.into_inner();
        // What the coordinator says once the attempt is no longer current.
        Err(Status::failed_precondition(format!(
            "attempt {} of {} is not held by this worker",
            r.attempt, r.job_id
        )))
    }

    type FetchCheckpointStream = BoxStream<pb::CheckpointChunk>;

    async fn fetch_checkpoint(
        &self,
        _: Request<pb::DownloadCheckpointRequest>,
    ) -> Result<Response<Self::FetchCheckpointStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

type Calls = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// Starts the scripted coordinator on a loopback port: its URL, what the
/// worker sends, the sender of what the worker is told, and the count of
/// upload-status calls.
async fn scripted() -> (
    String,
    mpsc::UnboundedReceiver<pb::WorkerMessage>,
    Out,
    Calls,
) {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let calls = Calls::default();
    let svc = Scripted {
        inbound: in_tx,
        outbound: Mutex::new(Some(out_rx)),
        status_calls: calls.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), in_rx, out_tx, calls)
}

fn assignment(job: &str, spec_json: &str) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Assign(pb::Assignment {
            job_id: job.into(),
            attempt: 1,
            sweep_id: "sw-0123456789abcdef".into(),
            trial_id: "tr-0123456789abcdef".into(),
            seed: 0,
            params_json: r#"{"x":1}"#.into(),
            spec_json: spec_json.into(),
            cpu_slots: 1,
            ..Default::default()
        })),
    }
}

/// Waits for the next message the predicate picks out; the others it passes
/// over are returned too (the records among them are what the test acks).
async fn until(
    inbound: &mut mpsc::UnboundedReceiver<pb::WorkerMessage>,
    seen: &mut Vec<pb::Record>,
    max: Duration,
    mut pick: impl FnMut(&pb::WorkerMessage, &[pb::Record]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let m = match tokio::time::timeout_at(deadline, inbound.recv()).await {
            Ok(Some(m)) => m,
            _ => return false,
        };
        if let Some(pb::worker_message::Msg::Records(r)) = &m.msg {
            seen.extend(r.records.iter().cloned());
        }
        if pick(&m, seen) {
            return true;
        }
    }
}

fn exited(seen: &[pb::Record], job: &str) -> Option<String> {
    seen.iter().find_map(|r| match &r.body {
        Some(pb::record::Body::Exited(e)) if r.job_id == job => Some(
            e.outcome()
                .as_str_name()
                .trim_start_matches("OUTCOME_")
                .to_lowercase(),
        ),
        _ => None,
    })
}

/// A real worker connected to the scripted coordinator, welcomed, with
/// what it sent so far.
struct Session {
    _state: tempfile::TempDir,
    inbound: mpsc::UnboundedReceiver<pb::WorkerMessage>,
    out: Out,
    status_calls: Calls,
    seen: Vec<pb::Record>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    worker: tokio::task::JoinHandle<Result<(), liandan_worker::WorkerError>>,
    /// The canonical spec JSON of a one-parameter sweep running `command` (YAML flow list).
    spec_json: String,
}

impl Session {
    async fn start(command: &str, slots: u32, spool_max_bytes: u64) -> Session {
        let state = tempfile::tempdir().unwrap();
        let (url, inbound, out, status_calls) = scripted().await;
        let spec = liandan_common::sweep::parse(
            &format!("name: t\nmethod: grid\ncommand: {command}\nparameters:\n  x: {{value: 1}}\n"),
            liandan_common::sweep::Format::Yaml,
        )
        .unwrap()
        .spec;
        let cfg = liandan_common::config::WorkerConfig {
            coordinator: url,
            state_dir: state.path().to_path_buf(),
            slots,
            gpus: "none".into(),
            grace_period_secs: 1.0,
            spool_max_bytes,
            reconnect_max_secs: 1.0,
            base_dir: state.path().to_path_buf(),
            ..Default::default()
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(liandan_worker::run(cfg, async {
            let _ = stop_rx.await;
        }));
        let mut s = Session {
            _state: state,
            inbound,
            out,
            status_calls,
            seen: Vec::new(),
            stop: Some(stop),
            worker,
            spec_json: serde_json::to_string(&spec).unwrap(),
        };
        assert!(
            s.until(Duration::from_secs(20), |m, _| {
                matches!(m.msg, Some(pb::worker_message::Msg::Hello(_)))
            })
            .await,
            "the worker never said hello"
        );
        s.send(pb::coordinator_message::Msg::Welcome(pb::Welcome {
            worker_id: "wk-0123456789abcdef".into(),
            heartbeat_interval_ms: 200,
            worker_secret: "a-secret-for-the-test".into(),
            ..Default::default()
        }));
        s
    }

    fn send(&self, msg: pb::coordinator_message::Msg) {
        self.out
            .send(Ok(pb::CoordinatorMessage { msg: Some(msg) }))
            .unwrap();
    }

    fn assign(&self, job: &str) {
        let m = assignment(job, &self.spec_json);
        self.out.send(Ok(m)).unwrap();
    }

    async fn until(
        &mut self,
        max: Duration,
        pick: impl FnMut(&pb::WorkerMessage, &[pb::Record]) -> bool,
    ) -> bool {
        until(&mut self.inbound, &mut self.seen, max, pick).await
    }

    fn top(&self) -> u64 {
        self.seen.iter().map(|r| r.seq).max().unwrap_or(0)
    }

    fn ack(&self, seq: u64) {
        self.send(pb::coordinator_message::Msg::Ack(pb::Ack {
            seq,
            refused: 0,
        }));
    }

    /// Acknowledges whatever arrives until every one of `jobs` has exited
    /// (or `max` passes).
    async fn ack_until_exited(&mut self, jobs: &[&str], max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let mut acked = 0;
        while jobs.iter().any(|j| exited(&self.seen, j).is_none())
            && tokio::time::Instant::now() < deadline
        {
            let top = self.top();
            if top > acked {
                acked = top;
                self.ack(top);
            }
            self.until(Duration::from_millis(200), |_, _| false).await;
        }
    }
}

/// Issue #18 item 11: with the spool full (nothing acknowledged yet) and the
/// worker stopping, an assignment that crosses the stop must not block the
/// session loop — that loop is the only place acknowledgements are taken, and
/// only an acknowledgement frees the space the hand-back record waits for.
/// Once the coordinator acknowledges, both attempts' exit records arrive and
/// the worker finishes stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_crossing_the_stop_with_the_spool_full_does_not_wedge_the_session() {
    // One unacknowledged record fills the spool.
    let mut s = Session::start("[sleep, '30']", 2, 1).await;
    let (a, b) = ("job-00000000000000aa", "job-00000000000000bb");
    s.assign(a);
    // A's start record is spooled and sent, and never acknowledged: the spool is full.
    assert!(
        s.until(Duration::from_secs(20), |_, seen| {
            seen.iter()
                .any(|r| r.job_id == a && matches!(r.body, Some(pb::record::Body::Started(_))))
        })
        .await,
        "job A never started: {:?}",
        s.seen
    );
    let _ = s.stop.take().map(|t| t.send(()));
    assert!(
        s.until(Duration::from_secs(10), |m, _| {
            matches!(&m.msg, Some(pb::worker_message::Msg::Heartbeat(h)) if h.stopping)
        })
        .await,
        "the worker never announced its stop"
    );
    // B crosses the stop: the worker must hand it back, without waiting in the loop.
    s.assign(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now acknowledge whatever arrives; both exit records must follow.
    s.ack_until_exited(&[a, b], Duration::from_secs(20)).await;
    assert_eq!(
        exited(&s.seen, a).as_deref(),
        Some("preempted"),
        "job A's exit never arrived: the session loop is wedged ({} records seen)",
        s.seen.len()
    );
    assert_eq!(
        exited(&s.seen, b).as_deref(),
        Some("preempted"),
        "job B was not handed back: the session loop is wedged"
    );
    s.ack(s.top());
    // And the worker finishes stopping (its last flush delivered everything).
    let ended = tokio::time::timeout(Duration::from_secs(30), s.worker).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the worker did not stop: {ended:?}"
    );
}

/// A checkpoint of an attempt the coordinator no longer counts as current is
/// refused for good: the worker gives its upload up instead of asking again
/// every second (and holding up every upload queued behind it), which the
/// chaos suite saw for 70 s after a partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_a_stale_attempt_is_given_up_not_retried() {
    let mut s = Session::start(
        r#"[sh, -c, 'printf abc > "$LIANDAN_CHECKPOINT_DIR/step-1.ckpt"; sleep 1']"#,
        1,
        1 << 30,
    )
    .await;
    let a = "job-00000000000000cc";
    s.assign(a);
    // Acknowledge everything; the job checkpoints once and exits.
    s.ack_until_exited(&[a], Duration::from_secs(20)).await;
    assert!(
        exited(&s.seen, a).is_some(),
        "the job never ended: {:?}",
        s.seen
    );
    let calls = s.status_calls.clone();
    let asked = move || calls.load(std::sync::atomic::Ordering::SeqCst);
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        while asked() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "the worker never tried to upload its checkpoint"
    );
    // The worker retries a failed upload every second; a refused one it must not.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        asked(),
        1,
        "a refused checkpoint was asked about again and again"
    );
    let _ = s.stop.take().map(|t| t.send(()));
    let _ = tokio::time::timeout(Duration::from_secs(30), s.worker).await;
}
