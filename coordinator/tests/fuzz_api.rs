//! Arbitrary bytes decoded as every request message and fed to the handlers:
//! no input may panic the coordinator (errors are fine, and expected).

use liandan_common::config::CoordinatorConfig;
use liandan_coordinator::checkpoints::CheckpointStore;
use liandan_coordinator::core::Core;
use liandan_coordinator::grpc::Api;
use liandan_proto::v1 as pb;
use pb::user_service_server::UserService;
use proptest::prelude::*;
use prost::Message;
use std::sync::{Arc, OnceLock};
use tonic::Request;

struct Env {
    rt: tokio::runtime::Runtime,
    api: Api,
    core: Arc<Core>,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cfg = CoordinatorConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let core = Core::open(cfg).unwrap();
        let api = Api::new();
        api.set_ready(
            core.clone(),
            Arc::new(CheckpointStore::new(dir.path()).unwrap()),
        );
        // Something to hit: a sweep and a worker.
        rt.block_on(async {
            core.submit(
                "name: f\nprogram: /bin/true\nmethod: grid\nparameters:\n  x: {values: [1, 2]}\n",
                "yaml",
                "",
            )
            .await
            .unwrap();
        });
        Env {
            rt,
            api,
            core,
            _dir: dir,
        }
    })
}

fn feed(bytes: &[u8]) {
    let e = env();
    e.rt.block_on(async {
        let a = &e.api;
        if let Ok(m) = pb::SubmitSweepRequest::decode(bytes) {
            let _ = a.submit_sweep(Request::new(m)).await;
        }
        if let Ok(m) = pb::GetSweepRequest::decode(bytes) {
            let _ = a.get_sweep(Request::new(m)).await;
        }
        if let Ok(m) = pb::ListJobsRequest::decode(bytes) {
            let _ = a.list_jobs(Request::new(m)).await;
        }
        if let Ok(m) = pb::JobRef::decode(bytes) {
            let _ = a.get_job(Request::new(m.clone())).await;
            let _ = a.list_checkpoints(Request::new(m)).await;
        }
        if let Ok(m) = pb::SweepRef::decode(bytes) {
            let _ = a.get_results(Request::new(m.clone())).await;
            let _ = a.pause_sweep(Request::new(m)).await;
        }
        if let Ok(m) = pb::ReadLogsRequest::decode(bytes) {
            let _ = a.read_logs(Request::new(m)).await;
        }
        if let Ok(m) = pb::GetMetricsRequest::decode(bytes) {
            let _ = a.get_metrics(Request::new(m)).await;
        }
        if let Ok(m) = pb::DrainWorkerRequest::decode(bytes) {
            let _ = a.drain_worker(Request::new(m)).await;
        }
        if let Ok(m) = pb::DownloadCheckpointRequest::decode(bytes) {
            let _ = a.download_checkpoint(Request::new(m)).await;
        }
        // The worker path: a hello and records, as the session handler passes them on.
        if let Ok(h) = pb::Hello::decode(bytes) {
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            if let Ok((wid, session)) = e.core.hello(h, tx, None).await {
                if let Ok(r) = pb::Records::decode(bytes) {
                    let _ = e.core.records(&wid, session, r.records).await;
                }
                e.core.disconnected(&wid, session);
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_bytes_never_panic_the_handlers(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        feed(&bytes);
    }

    #[test]
    fn arbitrary_well_formed_requests_never_panic(id in "\\PC{0,40}", state in "\\PC{0,12}", n in any::<u64>(), step in any::<i64>()) {
        let mut buf = Vec::new();
        pb::ListJobsRequest { sweep_id: id.clone(), state, page_size: n as u32, page_token: id.clone() }.encode(&mut buf).unwrap();
        feed(&buf);
        buf.clear();
        pb::ReadLogsRequest { job_id: id.clone(), attempt: n, from_line: n, tail: n, follow: false, stream: id.clone() }.encode(&mut buf).unwrap();
        feed(&buf);
        buf.clear();
        pb::DownloadCheckpointRequest { job_id: format!("job-{id}"), step, offset: n }.encode(&mut buf).unwrap();
        feed(&buf);
        buf.clear();
        pb::Hello { worker_id: format!("wk-{}", id.to_lowercase()), hostname: id.clone(), resources: None, held: vec![pb::HeldAttempt { job_id: id.clone(), attempt: n, running: true, gpu_uuids: vec![id] }], version: String::new(), worker_secret: String::new() }.encode(&mut buf).unwrap();
        feed(&buf);
    }
}
