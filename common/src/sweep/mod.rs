//! Sweep specs: parsing and validation ([`spec`]), deterministic expansion
//! into trials and jobs ([`expand`]), and the argv each job runs ([`command`]).
//! No I/O happens here.

pub mod command;
pub mod expand;
pub mod spec;

pub use expand::{canonical_json, expand, ExpandError, Expansion, Job, Trial};
pub use spec::{parse, Format, Goal, Method, Param, Parsed, SpecError, SweepSpec};

#[cfg(test)]
mod tests;
