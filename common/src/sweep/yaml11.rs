//! Sweep files read as W&B reads them: YAML with PyYAML's YAML 1.1 rules.
//!
//! `wandb sweep` loads a file with PyYAML's `safe_load`, so a plain `on` is the
//! boolean `True`, `010` is 8, `1_000` is 1000, `1:30` is 90 and `1e-5` (an
//! exponent without a dot) stays the *string* "1e-5". YAML 1.2 parsers disagree
//! on every one of those, and a value read differently is a different command
//! line for the job. So the events of a trusted YAML parser (`granit-parser`,
//! the one `serde-saphyr` is built on) are turned into values here with
//! PyYAML's implicit resolvers; only plain scalars are resolved, quoted ones
//! stay strings, and the standard `!!str`, `!!int`, `!!float`, `!!bool` and
//! `!!null` tags are honoured. Anchors, aliases and `<<` merge keys work as in
//! PyYAML; a later duplicate key wins.

use granit_parser::{Event, Parser, ScalarStyle, Span};
use regex::Regex;
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::sync::LazyLock;

/// Why a file is not YAML that W&B could load.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

/// PyYAML's implicit resolvers (`yaml/resolver.py`), anchored.
static BOOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
        .expect("static regex")
});
static FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?",
        r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?",
        r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
        r"|[-+]?\.(?:inf|Inf|INF)",
        r"|\.(?:nan|NaN|NAN))$"
    ))
    .expect("static regex")
});
static INT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?0b[0-1_]+",
        r"|[-+]?0[0-7_]+",
        r"|[-+]?(?:0|[1-9][0-9_]*)",
        r"|[-+]?0x[0-9a-fA-F_]+",
        r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"
    ))
    .expect("static regex")
});
static NULL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:~|null|Null|NULL|)$").expect("static regex"));

const CORE_TAG: &str = "tag:yaml.org,2002:";

/// Loads the first document of `text` as PyYAML's `safe_load` would.
pub fn load(text: &str) -> Result<Value, YamlError> {
    let mut opts = granit_parser::Options::default();
    opts.set_emit_comments(false);
    let mut loader = Loader {
        parser: Parser::new_from_str_with_options(text, opts),
        anchors: HashMap::new(),
        nodes: 0,
    };
    loop {
        match loader.next()? {
            None => return Ok(Value::Null),
            Some((Event::StreamEnd, _)) => return Ok(Value::Null),
            Some((Event::DocumentStart(..), _)) => break,
            Some(_) => {}
        }
    }
    let v = match loader.next()? {
        None | Some((Event::DocumentEnd, _)) | Some((Event::StreamEnd, _)) => {
            return Ok(Value::Null)
        }
        Some((ev, span)) => loader.node(ev, span)?,
    };
    // PyYAML's safe_load takes exactly one document.
    loop {
        match loader.next()? {
            None | Some((Event::StreamEnd, _)) => return Ok(v),
            Some((Event::DocumentStart(..), span)) => {
                return Err(YamlError {
                    line: line_of(&span),
                    message: "a second YAML document (`---`); a sweep file holds one".into(),
                })
            }
            Some(_) => {}
        }
    }
}

struct Loader<'a> {
    parser: Parser<'a, granit_parser::StrInput<'a>>,
    /// Anchored values with their size in nodes.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes built so far, aliases counted at their full size: a file of a
    /// few lines must not expand into a billion values (an alias bomb).
    nodes: usize,
}

/// Most values one sweep file may expand to, aliases included.
const MAX_NODES: usize = 1_000_000;

fn size_of(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(size_of).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(size_of).sum::<usize>(),
        _ => 1,
    }
}

fn line_of(span: &Span) -> Option<usize> {
    Some(span.start.line())
}

impl<'a> Loader<'a> {
    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, YamlError> {
        loop {
            match self.parser.next_event() {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(YamlError {
                        line: Some(e.marker().line()),
                        message: e.info().to_string(),
                    })
                }
                // Presentation-only events carry no data.
                Some(Ok((Event::Anchor(..), _))) => continue,
                Some(Ok((ev, span))) => {
                    if matches!(ev, Event::StreamStart) {
                        continue;
                    }
                    return Ok(Some((ev, span)));
                }
            }
        }
    }

    fn expect_next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        self.next()?.ok_or(YamlError {
            line: None,
            message: "the document ends in the middle of a value".into(),
        })
    }

    fn count(&mut self, n: usize, span: &Span) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                line: line_of(span),
                message: format!(
                    "the file expands to more than {MAX_NODES} values (aliases of aliases?); a sweep file this large is refused"
                ),
            });
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, v: &Value) {
        if anchor != 0 {
            self.anchors.insert(anchor, (v.clone(), size_of(v)));
        }
    }

    fn node(&mut self, ev: Event<'a>, span: Span) -> Result<Value, YamlError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|t| (t.handle().to_string(), t.suffix().to_string()));
                let v = scalar(&text, style, tag.as_ref(), &span)?;
                self.count(1, &span)?;
                self.remember(anchor, &v);
                Ok(v)
            }
            Event::Alias(id) => {
                let (v, n) = self.anchors.get(&id).cloned().ok_or(YamlError {
                    line: line_of(&span),
                    message: "an alias (*name) refers to an anchor that is not defined before it"
                        .into(),
                })?;
                self.count(n, &span)?;
                Ok(v)
            }
            Event::UnresolvedAlias(name) => Err(YamlError {
                line: line_of(&span),
                message: format!("the alias *{name} has no anchor &{name} before it"),
            }),
            Event::SequenceStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", &span)?;
                let mut items = Vec::new();
                loop {
                    let (ev, sp) = self.expect_next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, sp)?);
                }
                let v = Value::Array(items);
                self.count(1, &span)?;
                self.remember(anchor, &v);
                Ok(v)
            }
            Event::MappingStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", &span)?;
                let mut map = Map::new();
                // `<<` merges are applied under the mapping's own keys, as PyYAML does.
                let mut merged: Vec<Map<String, Value>> = Vec::new();
                loop {
                    let (kev, ksp) = self.expect_next()?;
                    if matches!(kev, Event::MappingEnd) {
                        break;
                    }
                    let is_merge =
                        matches!(&kev, Event::Scalar(t, ScalarStyle::Plain, _, None) if t == "<<");
                    let key = self.node(kev, ksp)?;
                    let (vev, vsp) = self.expect_next()?;
                    let value = self.node(vev, vsp)?;
                    if is_merge {
                        match value {
                            Value::Object(m) => merged.push(m),
                            Value::Array(items) => {
                                // Earlier mappings in the list win over later ones.
                                for it in items.into_iter().rev() {
                                    match it {
                                        Value::Object(m) => merged.push(m),
                                        _ => return Err(merge_error(&ksp)),
                                    }
                                }
                            }
                            _ => return Err(merge_error(&ksp)),
                        }
                        continue;
                    }
                    map.insert(key_string(&key, &ksp)?, value);
                }
                let v = if merged.is_empty() {
                    Value::Object(map)
                } else {
                    let mut out = Map::new();
                    for m in merged.into_iter().rev() {
                        for (k, v) in m {
                            out.entry(k).or_insert(v);
                        }
                    }
                    // The mapping's own keys override merged ones.
                    for (k, v) in map {
                        out.insert(k, v);
                    }
                    Value::Object(out)
                };
                self.count(1, &span)?;
                self.remember(anchor, &v);
                Ok(v)
            }
            other => Err(YamlError {
                line: line_of(&span),
                message: format!("unexpected YAML event {other:?}"),
            }),
        }
    }
}

fn merge_error(span: &Span) -> YamlError {
    YamlError {
        line: line_of(span),
        message: "a `<<` merge key needs a mapping or a list of mappings".into(),
    }
}

fn check_collection_tag(
    tag: Option<&granit_parser::Tag>,
    kind: &str,
    span: &Span,
) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if t.handle() == CORE_TAG && t.suffix() == kind => Ok(()),
        Some(t) => Err(unknown_tag(t.handle(), t.suffix(), span)),
    }
}

fn unknown_tag(handle: &str, suffix: &str, span: &Span) -> YamlError {
    let shown = if handle == CORE_TAG {
        format!("!!{suffix}")
    } else {
        format!("{handle}{suffix}")
    };
    YamlError {
        line: line_of(span),
        message: format!(
            "the tag {shown} is not one a sweep file may use (W&B loads files with PyYAML's safe_load); remove it"
        ),
    }
}

/// A mapping key as a string. PyYAML allows any scalar key; a sweep file's keys
/// are names, so a number or boolean key is written as it reads.
fn key_string(key: &Value, span: &Span) -> Result<String, YamlError> {
    match key {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "True".into() } else { "False".into() }),
        Value::Null => Ok("None".into()),
        _ => Err(YamlError {
            line: line_of(span),
            message: "a mapping key must be a plain name, not a list or a mapping".into(),
        }),
    }
}

fn scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&(String, String)>,
    span: &Span,
) -> Result<Value, YamlError> {
    let kind = match tag {
        Some((h, s)) if h == CORE_TAG => match s.as_str() {
            "str" | "int" | "float" | "bool" | "null" => Some(s.as_str()),
            _ => return Err(unknown_tag(h, s, span)),
        },
        // The non-specific tag `!` on a plain scalar forces a string.
        Some((h, s)) if h == "!" && s.is_empty() => Some("str"),
        Some((h, s)) => return Err(unknown_tag(h, s, span)),
        None if style != ScalarStyle::Plain => Some("str"),
        None => None,
    };
    let bad = |what: &str| YamlError {
        line: line_of(span),
        message: format!("{text:?} is not a valid {what}"),
    };
    let kind = kind.unwrap_or(if BOOL.is_match(text) {
        "bool"
    } else if INT.is_match(text) {
        "int"
    } else if FLOAT.is_match(text) {
        "float"
    } else if NULL.is_match(text) {
        "null"
    } else {
        "str"
    });
    Ok(match kind {
        "str" => Value::String(text.to_string()),
        "null" => Value::Null,
        "bool" => match text.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" => Value::Bool(true),
            "no" | "false" | "off" => Value::Bool(false),
            _ => return Err(bad("boolean")),
        },
        "int" => int_value(text).ok_or_else(|| bad("integer"))?,
        _ => {
            let x = float_value(text).ok_or_else(|| bad("number"))?;
            Value::Number(Number::from_f64(x).ok_or_else(|| YamlError {
                line: line_of(span),
                message: format!(
                    "{text:?} is not a finite number; sweep values must be finite (JSON has no inf or nan)"
                ),
            })?)
        }
    })
}

/// PyYAML's `construct_yaml_int`: underscores dropped, 0b/0x/leading-0 bases,
/// base-60 with colons.
fn int_value(text: &str) -> Option<Value> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let (neg, digits) = match clean.as_bytes().first() {
        Some(b'-') => (true, &clean[1..]),
        Some(b'+') => (false, &clean[1..]),
        _ => (false, clean.as_str()),
    };
    let magnitude: i128 = if digits == "0" {
        0
    } else if let Some(b) = digits.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if let Some(o) = digits.strip_prefix('0') {
        i128::from_str_radix(o, 8).ok()?
    } else if digits.contains(':') {
        let mut acc: i128 = 0;
        for part in digits.split(':') {
            acc = acc
                .checked_mul(60)?
                .checked_add(part.parse::<i128>().ok()?)?;
        }
        acc
    } else {
        digits.parse::<i128>().ok()?
    };
    let n = if neg { -magnitude } else { magnitude };
    if let Ok(i) = i64::try_from(n) {
        Some(Value::Number(i.into()))
    } else if let Ok(u) = u64::try_from(n) {
        Some(Value::Number(u.into()))
    } else {
        Number::from_f64(n as f64).map(Value::Number)
    }
}

/// PyYAML's `construct_yaml_float`.
fn float_value(text: &str) -> Option<f64> {
    let clean: String = text
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    let (sign, body) = match clean.as_bytes().first() {
        Some(b'-') => (-1.0, &clean[1..]),
        Some(b'+') => (1.0, &clean[1..]),
        _ => (1.0, clean.as_str()),
    };
    if body == ".inf" {
        return Some(sign * f64::INFINITY);
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    if body.contains(':') {
        let mut acc = 0.0;
        for part in body.split(':') {
            acc = acc * 60.0 + part.parse::<f64>().ok()?;
        }
        return Some(sign * acc);
    }
    body.parse::<f64>().ok().map(|x| sign * x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_scalars_resolve_as_pyyaml_resolves_them() {
        let cases: &[(&str, Value)] = &[
            ("on", json!(true)),
            ("Off", json!(false)),
            ("yes", json!(true)),
            ("NO", json!(false)),
            ("y", json!("y")),
            ("n", json!("n")),
            ("true", json!(true)),
            ("1e-5", json!("1e-5")),
            ("1.0e-5", json!(1.0e-5)),
            ("1.0e5", json!("1.0e5")),
            ("1.5", json!(1.5)),
            ("1.", json!(1.0)),
            (".5", json!(0.5)),
            ("-.5", json!("-.5")),
            ("010", json!(8)),
            ("0o10", json!("0o10")),
            ("0x1f", json!(31)),
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            ("1:30", json!(90)),
            ("1:30.5", json!(90.5)),
            ("~", Value::Null),
            ("null", Value::Null),
            ("", Value::Null),
            ("3", json!(3)),
            ("-3", json!(-3)),
            ("+3", json!(3)),
            ("1.0", json!(1.0)),
            ("adam", json!("adam")),
            ("2001-12-14", json!("2001-12-14")),
        ];
        for (text, want) in cases {
            let doc = format!("k: {text}\n");
            let got = load(&doc).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            assert_eq!(&got["k"], want, "{text:?}");
            if let Value::Number(n) = want {
                assert_eq!(
                    got["k"].as_number().map(|m| m.is_f64()),
                    Some(n.is_f64()),
                    "{text:?} keeps int vs float"
                );
            }
        }
    }

    #[test]
    fn quoted_and_tagged_scalars() {
        let v = load("a: '1'\nb: \"on\"\nc: !!str 3\nd: !!float 3\ne: !!int '7'\n").expect("yaml");
        assert_eq!(v, json!({"a": "1", "b": "on", "c": "3", "d": 3.0, "e": 7}));
        let e = load("a: !!python/object 3\n").expect_err("unsafe tag");
        assert!(e.message.contains("!!python/object"), "{}", e.message);
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn anchors_aliases_and_merges() {
        let text =
            "base: &b {min: 1, max: 5}\nx: *b\ny:\n  <<: *b\n  max: 9\nlist: &l [1, 2]\nz: *l\n";
        let v = load(text).expect("yaml");
        assert_eq!(v["x"], json!({"min": 1, "max": 5}));
        assert_eq!(v["y"], json!({"min": 1, "max": 9}));
        assert_eq!(v["z"], json!([1, 2]));
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = load(&text).expect_err("a billion values");
        assert!(e.message.contains("more than"), "{}", e.message);
        // A few aliases of a small anchor are fine.
        assert!(load("b: &b [1, 2]\nc: [*b, *b, *b]\n").is_ok());
    }

    #[test]
    fn one_document_only() {
        let e = load("a: 1\n---\nb: 2\n").expect_err("two documents");
        assert!(e.message.contains("second YAML document"), "{}", e.message);
        assert_eq!(
            load("---\na: 1\n...\n").expect("one document"),
            json!({"a": 1})
        );
    }

    #[test]
    fn errors_carry_a_line_and_empty_is_null() {
        assert_eq!(load("").expect("empty"), Value::Null);
        assert_eq!(load("# only a comment\n").expect("comment"), Value::Null);
        let e = load("a: [1, 2\nb: 3\n").expect_err("unclosed");
        assert!(e.line.is_some());
        let e = load("a: .inf\n").expect_err("inf");
        assert!(e.message.contains("finite"), "{}", e.message);
    }

    #[test]
    fn a_later_duplicate_key_wins_in_the_first_position() {
        let v = load("a: 1\nb: 2\na: 3\n").expect("yaml");
        assert_eq!(serde_json::to_string(&v).expect("json"), r#"{"a":3,"b":2}"#);
    }
}
