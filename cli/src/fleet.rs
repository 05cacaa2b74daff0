//! The fleet commands: workers, drain and tokens.

use crate::client::*;
use crate::output::*;
use crate::TextFormat;
use crate::{complete, TokensCmd};
use clap_complete::engine::ArgValueCompleter;
use liandan_common::exit;
use liandan_proto::v1 as pb;
use serde_json::json;

/// `liandan tokens ...`.
pub async fn tokens(url: &Target, cmd: TokensCmd) -> Result<i32, Fail> {
    let mut c = connect(url).await?;
    match cmd {
        TokensCmd::Add {
            name,
            admin,
            output,
        } => {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    name,
                    role: if admin { "admin" } else { "user" }.into(),
                })
                .await?
                .into_inner();
            let info = r.info.unwrap_or_default();
            let js = json!({"name": info.name, "role": info.role, "token": r.token, "created_at": info.created_at, "created_at_iso": json_time(info.created_at)});
            say(
                output,
                format!(
                    "token for {} ({}), shown only now; give it to them privately (a file of mode 600 for LIANDAN_TOKEN_FILE):\n{}",
                    info.name, info.role, r.token
                ),
                js,
            );
        }
        TokensCmd::List { output } => {
            let ts = c
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let rows = ts
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.role.clone(),
                        t.source.clone(),
                        time_cell(t.created_at, output == Format::Csv),
                    ]
                })
                .collect();
            let json = json!(ts
                .iter()
                .map(|t| json!({"name": t.name, "role": t.role, "source": t.source, "created_at": t.created_at, "created_at_iso": json_time(t.created_at)}))
                .collect::<Vec<_>>());
            print(render(
                &Listing {
                    columns: vec!["name", "role", "source", "created"],
                    rows,
                    json,
                    ..Default::default()
                },
                output,
            ));
        }
        TokensCmd::Revoke { name, output } => {
            let t = c
                .revoke_token(pb::RevokeTokenRequest { name })
                .await?
                .into_inner();
            let js = json!({"name": t.name, "role": t.role, "revoked": true});
            say(
                output,
                format!("revoked {}'s token ({}); their sweeps stay", t.name, t.role),
                js,
            );
        }
        TokensCmd::Whoami { output } => {
            let t = c.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            let js = json!({"name": t.name, "role": t.role, "source": t.source});
            let text = if t.source == "none" {
                "the coordinator checks no user tokens (loopback, no user_token_file): everyone is an admin".to_string()
            } else {
                format!("{} ({}, token from {})", t.name, t.role, t.source)
            };
            say(output, text, js);
        }
    }
    Ok(exit::OK)
}

/// The arguments of `liandan workers`.
#[derive(clap::Args, Debug)]
pub struct WorkersArgs {
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Remove a disconnected worker that holds no job from the list (a
    /// machine gone for good); it registers again if it comes back (a
    /// join-token worker under a new id).
    #[arg(long, value_name = "WORKER", add = ArgValueCompleter::new(complete::worker))]
    pub forget: Option<String>,
}

/// The arguments of `liandan drain`.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    #[arg(add = ArgValueCompleter::new(complete::worker))]
    pub worker: String,
    /// Lift the drain: the worker takes jobs again.
    #[arg(long)]
    pub undo: bool,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: TextFormat,
}

/// `liandan drain`.
pub async fn drain(url: &Target, args: DrainArgs) -> R<i32> {
    let DrainArgs {
        worker,
        undo,
        output,
    } = args;
    let w = connect(url)
        .await?
        .drain_worker(pb::DrainWorkerRequest {
            worker_id: worker,
            undo,
        })
        .await?
        .into_inner();
    let js = json!({"worker_id": w.id, "draining": !undo, "running_jobs": w.running_jobs});
    if undo {
        say(output, format!("worker {} takes jobs again", w.id), js);
    } else {
        say(
            output,
            format!(
                "worker {} is draining: no new jobs; {} running job(s) finish (lift with --undo)",
                w.id,
                w.running_jobs.len()
            ),
            js,
        );
    }
    Ok(exit::OK)
}

/// `liandan workers`: the fleet, or with --forget one worker removed.
pub async fn workers(url: &Target, args: WorkersArgs) -> R<i32> {
    let WorkersArgs { output, forget } = args;
    match forget {
        Some(worker) => {
            let w = connect(url)
                .await?
                .forget_worker(pb::ForgetWorkerRequest { worker_id: worker })
                .await?
                .into_inner();
            let text = format!("worker {} ({}) forgotten", w.id, printable(&w.hostname));
            let js = json!({"worker_id": w.id, "forgotten": true});
            match output {
                Format::Json => say(TextFormat::Json, text, js),
                _ => say(TextFormat::Text, text, js),
            }
            Ok(exit::OK)
        }
        None => {
            let ws = connect(url)
                .await?
                .list_workers(pb::ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            // Human sizes and ages in tables; exact bytes and times in CSV.
            let csv = output == Format::Csv;
            let now = now_secs();
            let bytes = |b: u64| if csv { b.to_string() } else { human_bytes(b) };
            let rows = ws
                .iter()
                .map(|w| {
                    let r = w.resources.clone().unwrap_or_default();
                    let state = if w.draining {
                        "draining"
                    } else if w.connected {
                        "connected"
                    } else {
                        "disconnected"
                    };
                    vec![
                        w.id.clone(),
                        printable(&w.hostname),
                        state.into(),
                        format!("{}/{}", w.free_cpu_slots, r.cpu_slots),
                        format!("{}/{}", w.free_gpus, r.gpus.len()),
                        w.running_jobs.len().to_string(),
                        w.disk
                            .map(|d| bytes(d.jobs_bytes))
                            .unwrap_or_else(|| "-".into()),
                        w.disk
                            .map(|d| bytes(d.free_bytes))
                            .unwrap_or_else(|| "-".into()),
                        if csv {
                            exact_time(w.last_seen)
                        } else {
                            human_age(now, w.last_seen)
                        },
                        r.labels.join(","),
                    ]
                })
                .collect();
            let json = json!(ws
                    .iter()
                    .map(|w| {
                        let r = w.resources.clone().unwrap_or_default();
                        json!({"id": w.id, "hostname": w.hostname, "connected": w.connected, "draining": w.draining, "cpu_slots": r.cpu_slots, "free_cpu_slots": w.free_cpu_slots,
                               "gpus": r.gpus.iter().map(|g| json!({"index": g.index, "uuid": g.uuid, "name": g.name, "memory_bytes": g.memory_bytes})).collect::<Vec<_>>(),
                               "free_gpus": w.free_gpus, "running_jobs": w.running_jobs, "labels": r.labels, "last_seen": w.last_seen, "last_seen_iso": json_time(w.last_seen),
                               "disk": w.disk.map(|d| json!({"jobs_bytes": d.jobs_bytes, "free_bytes": d.free_bytes, "attempt_dirs": d.attempt_dirs}))})
                    })
                    .collect::<Vec<_>>());
            print(render(
                &Listing {
                    columns: vec![
                        "worker",
                        "host",
                        "state",
                        "cpu free",
                        "gpu free",
                        "jobs",
                        "job dirs",
                        "disk free",
                        "seen",
                        "labels",
                    ],
                    rows,
                    json,
                    ..Default::default()
                },
                output,
            ));
            Ok(exit::OK)
        }
    }
}
