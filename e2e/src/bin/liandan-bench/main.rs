//! Benchmarks of the real binaries on loopback (see BENCHMARKS.md).
//!
//! ```text
//! liandan-bench dispatch [JOBS] [WORKERS] [SLOTS]   jobs dispatched and completed per second
//! liandan-bench logs [LINES]                        log lines and metric records per second, follow latency
//! liandan-bench checkpoint [MIB]                    checkpoint upload/download vs a plain TCP copy
//! ```
//!
//! Build with `--release` (`make bench` does).

use liandan_e2e::{Cluster, Opts};
use liandan_proto::v1 as pb;
use pb::coordinator_message::Msg;
use pb::user_service_client::UserServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;

mod fleet;
mod propose;
mod sim;
mod transfer;

use fleet::{dispatch, overhead, scale};
use propose::propose;
use sim::*;
use transfer::{checkpoint, logs};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let r = match args.first().map(String::as_str) {
        Some("dispatch") => dispatch(num(1, 100_000), num(2, 32) as usize, num(3, 64) as u32).await,
        Some("logs") => logs(num(1, 1_000_000)).await,
        Some("checkpoint") => checkpoint(num(1, 256) as usize).await,
        Some("propose") => propose(num(1, 1000) as usize),
        Some("scale") => scale(num(1, 1_000_000), num(2, 1000) as usize).await,
        Some("overhead") => overhead(num(1, 1024), num(2, 16) as u32).await,
        Some("chaos") => {
            let r = liandan_e2e::chaos::run(num(2, 1), num(1, 300));
            println!("{}", r.table());
            if r.ok() {
                Ok(())
            } else {
                Err("chaos found a problem".into())
            }
        }
        _ => {
            eprintln!("usage: liandan-bench dispatch [JOBS] [WORKERS] [SLOTS] | logs [LINES] | checkpoint [MIB] | scale [JOBS] [WORKERS] | overhead [JOBS] [SLOTS] | propose [TRIALS] | chaos [SECS] [SEED]");
            std::process::exit(64);
        }
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
