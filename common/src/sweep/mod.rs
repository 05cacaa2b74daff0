//! Sweep specs: parsing and validation ([`spec`]), deterministic expansion
//! into trials and jobs ([`expand`]), and the argv each job runs ([`command`]).
//! No I/O happens here.

pub mod command;
pub mod expand;
pub mod spec;
pub mod yaml11;

pub use expand::{adaptive_trial, canonical_json, expand, ExpandError, Expansion, Job, Trial};
pub use spec::{
    did_you_mean, parse, Format, Goal, Invalid, Method, Param, Parsed, SpecError, SweepSpec,
};

#[cfg(test)]
mod tests;

/// Whether a sweep in the state the coordinator shows (`queued`, `running`,
/// `paused`, `finished`, `failed`: done with nothing succeeded, `cancelled`)
/// is done: every job ended and nothing more will be proposed.
pub fn shown_state_is_done(state: &str) -> bool {
    matches!(state, "finished" | "failed")
}

/// Whether a sweep in a shown state has ended: done, or cancelled.
pub fn shown_state_has_ended(state: &str) -> bool {
    shown_state_is_done(state) || state == "cancelled"
}

/// The canonical stored form of a spec and its hash (identity of a submission).
pub fn spec_identity(spec: &SweepSpec) -> (String, String) {
    let json = serde_json::to_string(spec).unwrap_or_default();
    let hash = blake3::hash(json.as_bytes()).to_hex().to_string();
    (json, hash)
}

/// The sweep's name: the one asked for, else the spec's `name` when usable,
/// else `sweep-` and the start of the spec's hash. The sweep id derives from it.
pub fn resolve_name(spec: &SweepSpec, requested: &str) -> String {
    if !requested.is_empty() {
        return requested.to_string();
    }
    if let Some(n) = spec
        .name
        .as_ref()
        .filter(|n| crate::names::validate("sweep name", n).is_ok())
    {
        return n.clone();
    }
    format!("sweep-{}", &spec_identity(spec).1[..8])
}

/// A spec as the coordinator takes it: parsed, named and expanded.
#[derive(Debug)]
pub struct Checked {
    pub spec: SweepSpec,
    /// The parser's warnings, then the expansion's.
    pub warnings: Vec<String>,
    pub name: String,
    pub sweep_id: crate::ids::SweepId,
    pub expansion: Expansion,
}

/// Everything a submit checks of a spec file, in one place: `validate` and
/// the coordinator's submit both call it, so a file `validate` passes is
/// not refused at submit for its content (the coordinator's own limits,
/// such as `max_spec_bytes` and quotas, aside). `requested` is `--name`.
pub fn check(text: &str, format: Format, requested: &str) -> Result<Checked, Invalid> {
    let parsed = parse(text, format)?;
    let spec = parsed.spec;
    let name = resolve_name(&spec, requested);
    crate::names::validate("sweep name", &name).map_err(|e| SpecError {
        path: "name".into(),
        line: None,
        message: e.to_string(),
    })?;
    let sweep_id = crate::ids::SweepId::for_name(&name);
    let expansion = expand(&spec, &sweep_id).map_err(|e| match e {
        ExpandError::Spec(e) => e,
        other => SpecError {
            path: String::new(),
            line: None,
            message: other.to_string(),
        },
    })?;
    let mut warnings = parsed.warnings;
    warnings.extend(expansion.warnings.iter().cloned());
    Ok(Checked {
        spec,
        warnings,
        name,
        sweep_id,
        expansion,
    })
}
