//! `liandan-train`: the built-in libtorch trainer, run by the worker like any
//! job or by hand.
//!
//! ```text
//! liandan-train [--name=value ...]          train (parameters: `liandan-train help`)
//! liandan-train lr-range [--name=value ...] learning-rate range test
//! liandan-train overfit-check [...]         can the model memorise a handful of samples?
//! liandan-train doctor | --version          libtorch and CUDA versions, devices
//! ```
//!
//! Environment (set by the worker): LIANDAN_METRICS_FILE, LIANDAN_CHECKPOINT_DIR,
//! LIANDAN_RESUME_FROM. SIGTERM checkpoints at the next step and exits 143.

mod data;
mod model;
mod params;
mod train;

use params::{Params, PARAMS};
use std::sync::atomic::Ordering;

extern "C" fn on_signal(_: nix::libc::c_int) {
    train::STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(s, &action) };
    }
}

fn doctor() {
    println!("liandan-train {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch {}", env!("LIANDAN_LIBTORCH_VERSION"));
    let cuda = tch::Cuda::is_available();
    println!("cuda available: {cuda}");
    if tch::utils::has_cuda() {
        let v = tch::utils::version_cudart();
        println!("cuda runtime: {}.{}", v / 1000, (v % 1000) / 10);
        if tch::Cuda::cudnn_is_available() {
            println!("cudnn: {}", tch::utils::version_cudnn());
        }
    }
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cpu threads: {}", tch::get_num_threads());
    println!(
        "CUDA_VISIBLE_DEVICES={}",
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "(unset)".into())
    );
}

fn help() {
    println!("liandan-train [lr-range | overfit-check | doctor | help] [--name=value ...]\n\nparameters (name, default, meaning):");
    for (n, d, h) in PARAMS {
        println!("  --{n:<18} {d:<10} {h}");
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("doctor") | Some("--version") | Some("-V") => {
            doctor();
            return;
        }
        Some("help") | Some("--help") | Some("-h") => {
            help();
            return;
        }
        Some(m @ ("lr-range" | "overfit-check" | "bench" | "train")) => {
            let m = m.to_string();
            args.remove(0);
            m
        }
        _ => "train".to_string(),
    };
    let p = match Params::parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(64);
        }
    };
    install_signal_handlers();
    let num = |n: &str| p.usize(n).unwrap_or(0);
    let data = match data::load(
        &p.str("task"),
        &p.str("data"),
        &p.str("labels"),
        num("samples"),
        num("classes"),
        p.f64("noise").unwrap_or(0.0),
        p.i64("seed").unwrap_or(0),
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(65);
        }
    };
    let r = match mode.as_str() {
        "lr-range" => train::lr_range(&p, data),
        "overfit-check" => train::overfit(&p, data),
        "bench" => train::bench(&p, data),
        _ => train::train(&p, data),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
