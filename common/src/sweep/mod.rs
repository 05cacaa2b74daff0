//! Sweep specs: parsing and validation ([`spec`]), deterministic expansion
//! into trials and jobs ([`expand`]), and the argv each job runs ([`command`]).
//! No I/O happens here.

pub mod command;
pub mod expand;
pub mod spec;
pub mod yaml11;

pub use expand::{adaptive_trial, canonical_json, expand, ExpandError, Expansion, Job, Trial};
pub use spec::{parse, Format, Goal, Method, Param, Parsed, SpecError, SweepSpec};

#[cfg(test)]
mod tests;

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
