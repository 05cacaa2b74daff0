//! Shell completion of what only the coordinator knows: sweep ids and names,
//! job ids and worker ids, asked for as the user presses Tab (clap's dynamic
//! completion: the shell calls `COMPLETE=SHELL liandan -- ARGS`). The
//! coordinator is found as every command finds it, from the environment
//! (`LIANDAN_COORDINATOR`, `LIANDAN_TOKEN(_FILE)`, `LIANDAN_CA_CERT`); when it
//! cannot be reached within two seconds nothing is offered.

use crate::client::{all_sweeps, connect, Target};
use clap_complete::engine::CompletionCandidate;
use liandan_proto::v1 as pb;
use std::ffi::OsStr;
use std::time::Duration;

/// Most job ids offered (the newest sweeps' first).
const MAX_JOBS: usize = 5000;

fn target() -> Target {
    Target {
        url: std::env::var("LIANDAN_COORDINATOR")
            .unwrap_or_else(|_| "http://127.0.0.1:7477".into()),
        token_file: std::env::var_os("LIANDAN_TOKEN_FILE").map(Into::into),
        ca_cert: std::env::var_os("LIANDAN_CA_CERT").map(Into::into),
    }
}

/// Runs `ask` against the coordinator, giving up (nothing) after two seconds.
fn ask<F, Fut>(current: &OsStr, ask: F) -> Vec<CompletionCandidate>
where
    F: FnOnce(crate::client::Client) -> Fut,
    Fut: std::future::Future<Output = Vec<(String, String)>>,
{
    let prefix = current.to_string_lossy().to_string();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let found = rt.block_on(async {
        let work = async {
            match connect(&target()).await {
                Ok(c) => ask(c).await,
                Err(_) => Vec::new(),
            }
        };
        tokio::time::timeout(Duration::from_secs(2), work)
            .await
            .unwrap_or_default()
    });
    found
        .into_iter()
        .filter(|(value, _)| value.starts_with(&prefix))
        .map(|(value, help)| CompletionCandidate::new(value).help(Some(help.into())))
        .collect()
}

async fn sweeps(c: &crate::client::Client) -> Vec<pb::Sweep> {
    let mut s = all_sweeps(c).await.unwrap_or_default();
    s.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
    s
}

fn sweep_candidates(s: &[pb::Sweep]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in s {
        out.push((s.id.clone(), format!("{} ({})", s.name, s.state)));
        if s.name != s.id {
            out.push((s.name.clone(), format!("{} ({})", s.id, s.state)));
        }
    }
    out
}

async fn job_candidates(c: &crate::client::Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in sweeps(c).await {
        if out.len() >= MAX_JOBS {
            break;
        }
        let Ok(r) = c
            .clone()
            .list_jobs(pb::ListJobsRequest {
                sweep_id: s.id.clone(),
                state: String::new(),
                page_size: (MAX_JOBS - out.len()) as u32,
                page_token: String::new(),
            })
            .await
        else {
            continue;
        };
        out.extend(
            r.into_inner()
                .jobs
                .into_iter()
                .map(|j| (j.id, format!("{} seed {} ({})", s.name, j.seed, j.state))),
        );
    }
    out
}

/// Sweep ids and names.
pub fn sweep(current: &OsStr) -> Vec<CompletionCandidate> {
    ask(
        current,
        |c| async move { sweep_candidates(&sweeps(&c).await) },
    )
}

/// Job ids of the newest sweeps.
pub fn job(current: &OsStr) -> Vec<CompletionCandidate> {
    ask(current, |c| async move { job_candidates(&c).await })
}

/// A sweep or a job (`cancel`).
pub fn sweep_or_job(current: &OsStr) -> Vec<CompletionCandidate> {
    ask(current, |c| async move {
        let mut out = sweep_candidates(&sweeps(&c).await);
        out.extend(job_candidates(&c).await);
        out
    })
}

/// Worker ids.
pub fn worker(current: &OsStr) -> Vec<CompletionCandidate> {
    ask(current, |mut c| async move {
        c.list_workers(pb::ListWorkersRequest {})
            .await
            .map(|r| {
                r.into_inner()
                    .workers
                    .into_iter()
                    .map(|w| (w.id, crate::output::printable(&w.hostname)))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// `liandan completions SHELL`: the script that registers these
/// completions with the shell (it calls back into this binary).
pub fn registration(shell: clap_complete::Shell) -> Result<String, String> {
    use clap_complete::env::EnvCompleter;
    let completer: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &clap_complete::env::Bash,
        clap_complete::Shell::Zsh => &clap_complete::env::Zsh,
        clap_complete::Shell::Fish => &clap_complete::env::Fish,
        clap_complete::Shell::Elvish => &clap_complete::env::Elvish,
        clap_complete::Shell::PowerShell => &clap_complete::env::Powershell,
        other => return Err(format!("no completions for {other}")),
    };
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "liandan".into());
    let mut buf = Vec::new();
    completer
        .write_registration("COMPLETE", "liandan", "liandan", &exe, &mut buf)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
