//! Typed, self-describing ids. Each id is a newtype over a string with a fixed
//! prefix (`sw-`, `tr-`, `job-`, `wk-`), so a job id passed where a sweep id is
//! expected is caught at the edge with a message that says which is which.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// An id string that failed validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid {kind} id {value:?}: expected `{prefix}` followed by 1-64 characters from [a-z0-9-]"
)]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $prefix:literal) => {
        $(#[$meta])*
        ///
        /// Shared, immutable text: a clone is a reference-count increment, so the
        /// coordinator can hold a job id in its map, its sweep's list and its
        /// queue without three copies of the string.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Parses and validates an id that came from outside (a user, a file, the network).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let rest = s.strip_prefix($prefix);
                let ok = matches!(rest, Some(r) if !r.is_empty() && r.len() <= 64
                    && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                if ok {
                    Ok(Self(s.into()))
                } else {
                    Err(IdError { kind: $kind, prefix: $prefix, value: s.chars().take(80).collect() })
                }
            }

            /// Builds an id from a suffix this program generated (already safe).
            pub fn from_suffix(suffix: &str) -> Self {
                let mut s = String::with_capacity($prefix.len() + suffix.len());
                s.push_str($prefix);
                s.push_str(suffix);
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

typed_id!(
    /// A submitted sweep. Derived from the sweep's name, so resubmission under the
    /// same name finds the same sweep.
    SweepId, "sweep", "sw-"
);
typed_id!(
    /// One point of a sweep's parameter space. Derived from the sweep id and the
    /// canonical parameter values, so re-expansion never creates duplicates.
    TrialId, "trial", "tr-"
);
typed_id!(
    /// One (trial, seed): the unit of scheduling.
    JobId, "job", "job-"
);
typed_id!(
    /// A worker daemon; generated once and kept in its state directory.
    WorkerId, "worker", "wk-"
);

/// The attempt number of a job: one execution on a worker. Attempt numbers only
/// grow, and the current one is the fencing token every worker write carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptNo(pub u64);

impl fmt::Display for AttemptNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Hex of the first `n` bytes of a BLAKE3 hash over `parts`, each length-prefixed
/// so that ("ab","c") and ("a","bc") differ.
pub fn short_hash(parts: &[&[u8]], n: usize) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * n);
    for b in &h.finalize().as_bytes()[..n] {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

/// Bytes of hash in derived ids: 64 bits, so a million-job sweep has a chance of
/// about 3e-8 of any two ids colliding (40 bits collided half the time; the
/// scale benchmark found it). Collisions are still checked at submission.
pub const ID_BYTES: usize = 8;

impl SweepId {
    /// The id of the sweep named `name`.
    pub fn for_name(name: &str) -> Self {
        Self::from_suffix(&short_hash(&[b"sweep", name.as_bytes()], ID_BYTES))
    }
}

impl TrialId {
    /// The id of the trial with these canonical parameters in this sweep.
    pub fn for_params(sweep: &SweepId, canonical_params: &str) -> Self {
        Self::from_suffix(&short_hash(
            &[
                b"trial",
                sweep.as_str().as_bytes(),
                canonical_params.as_bytes(),
            ],
            ID_BYTES,
        ))
    }
}

impl JobId {
    /// The id of the job running `trial` with `seed`.
    pub fn for_trial_seed(trial: &TrialId, seed: i64) -> Self {
        Self::from_suffix(&short_hash(
            &[b"job", trial.as_str().as_bytes(), &seed.to_le_bytes()],
            ID_BYTES,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_own_ids_and_rejects_hostile_ones() {
        let cases: &[(&str, bool)] = &[
            ("job-0a1b2c3d4e", true),
            ("job-", false),
            ("job-../../etc", false),
            ("job-a/b", false),
            ("sw-0a1b2c3d4e", false),
            ("JOB-abc", false),
            ("job-ABC", false),
        ];
        for (s, ok) in cases {
            assert_eq!(JobId::parse(s).is_ok(), *ok, "{s}");
        }
        let long = format!("job-{}", "a".repeat(65));
        assert!(JobId::parse(&long).is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let s = SweepId::for_name("demo");
        assert_eq!(s, SweepId::for_name("demo"));
        assert_ne!(s, SweepId::for_name("demo2"));
        let t = TrialId::for_params(&s, r#"{"lr":0.1}"#);
        assert_eq!(JobId::for_trial_seed(&t, 0), JobId::for_trial_seed(&t, 0));
        assert_ne!(JobId::for_trial_seed(&t, 0), JobId::for_trial_seed(&t, 1));
        assert!(JobId::parse(JobId::for_trial_seed(&t, 7).as_str()).is_ok());
    }

    #[test]
    fn short_hash_is_the_hex_prefix_of_the_length_prefixed_blake3() {
        let mut h = blake3::Hasher::new();
        for p in [&b"ab"[..], &b"c"[..]] {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let hex = h.finalize().to_hex();
        assert_eq!(short_hash(&[b"ab", b"c"], 8), &hex.as_str()[..16]);
        assert_ne!(short_hash(&[b"ab", b"c"], 8), short_hash(&[b"a", b"bc"], 8));
    }

    #[test]
    fn ids_serialise_as_strings_and_are_validated_when_read() {
        let j = JobId::parse("job-0a1b").expect("valid");
        assert_eq!(serde_json::to_string(&j).expect("json"), "\"job-0a1b\"");
        let back: JobId = serde_json::from_str("\"job-0a1b\"").expect("read");
        assert_eq!(back, j);
        let err =
            serde_json::from_str::<JobId>("\"sw-0a1b\"").expect_err("a sweep id is not a job id");
        assert!(err.to_string().contains("invalid job id"), "{err}");
    }
}
