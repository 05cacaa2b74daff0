//! Where and how an attempt runs: its working directory, its program and
//! interpreter, from the sweep's spec and the worker's configuration.

use super::*;

/// Resolves `liandan-train` to the binary next to this worker, then PATH.
/// The worker's base directory: `base_dir`, or the directory it was started in.
pub(super) fn base_dir(ctx: &WorkerCtx) -> PathBuf {
    if !ctx.cfg.base_dir.as_os_str().is_empty() {
        return ctx.cfg.base_dir.clone();
    }
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
}

/// The job's working directory from `liandan.workdir` (absolute, or relative
/// to the base directory), which must exist: a missing one is a setup error.
pub(super) fn resolve_workdir(
    ctx: &WorkerCtx,
    spec: &SweepSpec,
) -> Result<Option<PathBuf>, String> {
    let Some(w) = spec.liandan.workdir.as_deref() else {
        return Ok(None);
    };
    let w = expand_envvars(w, &job_envvar).map_err(|e| format!("liandan.workdir: {e}"))?;
    let path = base_dir(ctx).join(&w);
    if !path.is_dir() {
        return Err(format!(
            "the working directory {} (liandan.workdir {w:?}, relative to the worker's base_dir {}) does not exist on worker {}; create it there or fix liandan.workdir",
            path.display(),
            base_dir(ctx).display(),
            ctx.id()
        ));
    }
    Ok(Some(path))
}

/// The program as the job runs it. A relative path is taken relative to the
/// workdir (else the worker's base directory, as W&B's agent takes it
/// relative to its own). A path that names no file there (one with a `/`, or
/// a script such as `train.py`) is a setup error naming the path and the
/// worker; a bare command name is left for PATH.
pub(super) fn resolve_program(
    ctx: &WorkerCtx,
    program: Option<&str>,
    workdir: Option<&Path>,
) -> Result<Option<String>, String> {
    let Some(p) = program else {
        return Ok(None);
    };
    if p != TRAINER_PROGRAM {
        let dir = workdir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| base_dir(ctx));
        let path = dir.join(p);
        if path.exists() {
            return Ok(Some(path.display().to_string()));
        }
        let looks_like_a_file = p.contains('/')
            || [".py", ".sh", ".jl", ".R", ".lua", ".rb", ".pl", ".js"]
                .iter()
                .any(|e| p.ends_with(e));
        if looks_like_a_file {
            return Err(format!(
                "the program {} does not exist on worker {} (program {p:?}, relative to {}); copy it there, or set liandan.workdir to the directory that holds it",
                path.display(),
                ctx.id(),
                if workdir.is_some() { "liandan.workdir" } else { "the worker's base_dir" }
            ));
        }
        return Ok(Some(p.to_string()));
    }
    if !ctx.cfg.train_binary.is_empty() {
        return Ok(Some(ctx.cfg.train_binary.clone()));
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(TRAINER_PROGRAM)))
    {
        if sibling.exists() {
            return Ok(Some(sibling.display().to_string()));
        }
    }
    Ok(Some(p.to_string()))
}

/// W&B's `${interpreter}` is `python`; Debian has only `python3` unless
/// python-is-python3 is installed, so fall back to it.
pub(super) fn interpreter() -> &'static str {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    };
    if on_path("python") {
        "python"
    } else {
        "python3"
    }
}

/// Where and how a job runs on this worker, from its sweep's spec.
pub(super) struct Setup {
    pub(super) workdir: Option<PathBuf>,
    pub(super) program: Option<String>,
    pub(super) env: Vec<(String, String)>,
}

/// Resolves the workdir, the program and `liandan.env`; an error is a setup
/// error (the next attempt would find the same), said with the path and worker.
pub(super) fn setup(ctx: &WorkerCtx, spec: &SweepSpec) -> Result<Setup, String> {
    let workdir = resolve_workdir(ctx, spec)?;
    let program = resolve_program(ctx, spec.program.as_deref(), workdir.as_deref())?;
    let mut env = Vec::new();
    for (k, v) in &spec.liandan.env {
        let v = expand_envvars(v, &job_envvar).map_err(|e| format!("liandan.env.{k}: {e}"))?;
        env.push((k.clone(), v));
    }
    Ok(Setup {
        workdir,
        program,
        env,
    })
}
