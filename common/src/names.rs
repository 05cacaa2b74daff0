//! Validation of user-chosen names (sweep names, worker labels) before they are
//! stored or touch a file system: bounded length, no path separators, no `..`.

/// A name that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {value:?}: {why}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// Checks a name: 1-128 characters from letters, digits, `-`, `_`, `.`, not
/// starting with `.`, and never `..`.
pub fn validate(what: &'static str, value: &str) -> Result<(), NameError> {
    let err = |why| {
        Err(NameError {
            what,
            value: value.chars().take(140).collect(),
            why,
        })
    };
    if value.is_empty() {
        return err("it is empty");
    }
    if value.len() > 128 {
        return err("it is longer than 128 characters");
    }
    if value.starts_with('.') || value.contains("..") {
        return err("it may not start with '.' or contain '..'");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return err("use only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_table() {
        let cases = [
            ("demo", true),
            ("my_sweep-1.2", true),
            ("", false),
            ("../x", false),
            ("a/b", false),
            (".hidden", false),
            ("a..b", false),
            ("sp ace", false),
        ];
        for (v, ok) in cases {
            assert_eq!(super::validate("sweep name", v).is_ok(), ok, "{v}");
        }
    }
}
