//! Checkpoint uploads cannot starve the coordinator (issue #19 item 9): each
//! upload holds a blocking thread while it runs, so at most `max_uploads`
//! run at once, and one that sends nothing for `upload_idle_timeout_secs`
//! is ended. Driven through the real gRPC service on loopback.

mod support;

use liandan_coordinator::checkpoints::CheckpointStore;
use liandan_coordinator::grpc::Api;
use liandan_proto::v1 as pb;
use pb::coordinator_message::Msg;
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// Uploads at once, and how long one may idle, in this test.
const MAX_UPLOADS: usize = 32;
const IDLE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_neither_exhaust_the_coordinator_nor_stay_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = core(dir.path());
    let ck = CheckpointStore::new(dir.path())
        .expect("checkpoint store")
        .with_upload_limits(MAX_UPLOADS, IDLE);
    let api = Api::new();
    api.set_ready(c.clone(), Arc::new(ck));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::worker_service_server::WorkerServiceServer::new(api))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // A join-token worker: issued an id and a secret, then given a job.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let hello = pb::Hello {
        hostname: "h".into(),
        resources: Some(pb::Resources {
            cpu_slots: 1,
            ..Default::default()
        }),
        version: "t".into(),
        ..Default::default()
    };
    let (wid, _session) = c.hello(hello, tx, None).await.expect("hello");
    let secret = match rx.recv().await {
        Some(pb::CoordinatorMessage {
            msg: Some(Msg::Welcome(w)),
        }) => w.worker_secret,
        other => panic!("no welcome: {other:?}"),
    };
    c.submit(
        "name: s\nprogram: t.py\nmethod: grid\nparameters:\n  x: {value: 1}\n",
        "yaml",
        "",
    )
    .await
    .expect("submit");
    let job = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(pb::CoordinatorMessage {
                msg: Some(Msg::Assign(a)),
            })) => break a,
            Ok(Some(_)) => continue,
            other => panic!("no assignment: {other:?}"),
        }
    };
    // 600 uploads for the attempt it holds, each sending its header and then nothing.
    let mut held = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    for k in 0..6 {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        for i in 0..100 {
            let (stx, srx) = tokio::sync::mpsc::channel(1);
            stx.send(pb::CheckpointUpload {
                header: Some(pb::CheckpointUploadHeader {
                    job_id: job.job_id.clone(),
                    attempt: job.attempt,
                    step: k * 100 + i,
                    size: 1 << 20,
                    blake3: "0".repeat(64),
                    metric: None,
                    worker_id: wid.to_string(),
                }),
                offset: 0,
                data: Vec::new(),
            })
            .await
            .expect("header");
            held.push(stx);
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(srx));
            req.metadata_mut()
                .insert("liandan-worker-id", wid.to_string().parse().expect("id"));
            req.metadata_mut()
                .insert("liandan-worker-secret", secret.parse().expect("secret"));
            let mut client = pb::worker_service_client::WorkerServiceClient::new(channel.clone());
            calls.spawn(async move {
                client
                    .upload_checkpoint(req)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code())
            });
        }
    }
    // Everyone else is still served: a submit parses and builds on blocking threads.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        c.submit(
            "name: other\nprogram: t.py\nmethod: grid\nparameters:\n  x: {value: 2}\n",
            "yaml",
            "",
        ),
    )
    .await;
    // Every stalled upload ends: refused at once beyond the limit, or ended
    // by the idle deadline.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut codes = Vec::new();
        while let Some(r) = calls.join_next().await {
            codes.push(r.expect("task"));
        }
        codes
    })
    .await;
    drop(held);
    assert!(
        matches!(other, Ok(Ok(_))),
        "a submit was not served while uploads stalled: {other:?}"
    );
    let codes = ended.expect("stalled uploads stayed open");
    let count = |code| codes.iter().filter(|r| **r == Err(code)).count();
    let (refused, idle) = (
        count(tonic::Code::ResourceExhausted),
        count(tonic::Code::DeadlineExceeded),
    );
    assert_eq!(refused + idle, 600, "{codes:?}");
    // One worker holds at most PER_WORKER_UPLOADS places at a time.
    assert!(
        refused > 0 && idle >= liandan_coordinator::checkpoints::PER_WORKER_UPLOADS,
        "refused {refused}, idle {idle}"
    );
}
