//! Shared by the core's integration tests: a core on a temp dir and a
//! simulated worker that says hello, takes assignments and sends records.
#![allow(dead_code)]

use liandan_common::config::CoordinatorConfig;
use liandan_coordinator::core::Core;
use liandan_proto::v1 as pb;
use pb::coordinator_message::Msg;
use std::sync::Arc;
use tokio::sync::mpsc;

pub fn core(dir: &std::path::Path) -> Arc<Core> {
    let cfg = CoordinatorConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    Core::open(cfg).expect("core opens")
}

pub struct Worker {
    pub id: liandan_common::WorkerId,
    pub session: u64,
    pub rx: mpsc::UnboundedReceiver<pb::CoordinatorMessage>,
    pub seq: u64,
}

pub async fn hello(core: &Core, slots: u32, held: Vec<pb::HeldAttempt>, last_seq: u64) -> Worker {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = pb::Hello {
        worker_id: "wk-one".into(),
        hostname: "h".into(),
        resources: Some(pb::Resources {
            cpu_slots: slots,
            ..Default::default()
        }),
        held,
        version: "t".into(),
        worker_secret: String::new(),
    };
    // As a certificate-bound worker: the id is its own across reconnects.
    let cert = liandan_common::WorkerId::parse("wk-one").ok();
    let (id, session) = core.hello(h, tx, cert).await.expect("hello");
    Worker {
        id,
        session,
        rx,
        seq: last_seq,
    }
}

#[derive(Default)]
pub struct Inbox {
    pub assigned: Vec<pb::Assignment>,
    pub stops: Vec<pb::Cancel>,
}

pub fn drain(w: &mut Worker) -> Inbox {
    let mut inbox = Inbox::default();
    while let Ok(m) = w.rx.try_recv() {
        match m.msg {
            Some(Msg::Assign(a)) => inbox.assigned.push(a),
            Some(Msg::Cancel(c)) => inbox.stops.push(c),
            _ => {}
        }
    }
    inbox
}

pub async fn send(core: &Core, w: &mut Worker, a: &pb::Assignment, body: pb::record::Body) {
    w.seq += 1;
    let rec = pb::Record {
        seq: w.seq,
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        body: Some(body),
    };
    core.records(&w.id, w.session, vec![rec])
        .await
        .expect("records");
}

pub async fn metric(core: &Core, w: &mut Worker, a: &pb::Assignment, step: i64, loss: f64) {
    let json = serde_json::json!({ "loss": loss }).to_string();
    send(
        core,
        w,
        a,
        pb::record::Body::Metric(pb::MetricReport {
            step: Some(step),
            ts: 0.0,
            json,
        }),
    )
    .await;
}

pub async fn exit(core: &Core, w: &mut Worker, a: &pb::Assignment, outcome: &str) {
    let wire = pb::Outcome::from_str_name(&format!("OUTCOME_{}", outcome.to_uppercase()))
        .unwrap_or_else(|| panic!("{outcome} is no outcome a worker sends"));
    let body = pb::record::Body::Exited(pb::JobExited {
        outcome: wire as i32,
        exit_code: if outcome == "succeeded" { 0 } else { 143 },
        ..Default::default()
    });
    send(core, w, a, body).await;
}

/// What a restarted worker says it still runs: these assignments.
pub fn held(assigned: &[pb::Assignment]) -> Vec<pb::HeldAttempt> {
    assigned
        .iter()
        .map(|a| pb::HeldAttempt {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            running: true,
            ..Default::default()
        })
        .collect()
}

/// What the worker was sent once the core's proposals (computed off its
/// lock, for adaptive sweeps) are applied.
pub async fn settled_inbox(core: &Core, w: &mut Worker) -> Inbox {
    core.proposals_settled().await;
    drain(w)
}
