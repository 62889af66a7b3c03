//! Reading YAML within bounds: the policy language, the agent's
//! configuration and wardctl's configuration all read YAML through here.
//!
//! A YAML text can ask for far more than its size: aliases replay what an
//! anchor holds (nine lines of `[*a, *a, …]` expand to hundreds of millions
//! of values, the "billion laughs"), and each level of nesting costs the
//! reader stack and time. Every read is therefore held to [`Limits`]: the
//! size of the text, how deep it nests, how many values it holds and how
//! many values its aliases may replay. A text past one is refused at once,
//! with a message naming the limit.
//!
//! YAML is read as YAML 1.2, as the documents are written for: `yes`, `on`,
//! `0755` and `1_000` are strings, not booleans or numbers; timestamps are
//! strings; `<<` is an ordinary key; a tag (`!foo`) is refused; a key given
//! twice in a mapping is an error.

use std::fmt;

use serde::de::{Deserialize, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DuplicateKeyPolicy, Error, MergeKeyPolicy, MessageFormatter};

use crate::error::Location;

/// How much one YAML text may ask of its reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// What the text is, for messages: `a policy source`.
    pub what: &'static str,
    /// Size of the text.
    pub max_bytes: usize,
    /// Sequences and mappings nested in one another.
    pub max_depth: usize,
    /// Values (scalars, sequences, mappings), counting those aliases replay.
    pub max_values: usize,
    /// Parser events aliases may replay, all aliases together.
    pub max_alias_replays: usize,
}

/// The largest policy source read, in bytes: the limit of a gRPC message
/// (64 MiB), which a source must fit in to reach an agent in a snapshot.
pub const MAX_POLICY_SOURCE_BYTES: usize = 64 << 20;

/// The limits of a policy source. Size is the whole source's; the others
/// hold for each of its documents, which are read one by one. A document
/// of the language nests four levels at most (`spec.ports[0]`); a
/// segment with tens of thousands of CIDRs stays well within the values.
pub const POLICY_LIMITS: Limits = Limits {
    what: "a policy source",
    max_bytes: MAX_POLICY_SOURCE_BYTES,
    max_depth: 32,
    max_values: 250_000,
    max_alias_replays: 10_000,
};

/// A YAML text that could not be read: where, when known, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", location.map(|at| format!("{at}: ")).unwrap_or_default())]
pub struct YamlError {
    /// Line and column in the text read.
    pub location: Option<Location>,
    /// What is wrong, without the location.
    pub message: String,
}

/// Reads one YAML document into `T`, within `limits`.
pub fn from_str<T: DeserializeOwned>(text: &str, limits: &Limits) -> Result<T, YamlError> {
    check_size(text, limits)?;
    serde_saphyr::from_str_with_options(text, options(limits)).map_err(|e| error(&e, limits))
}

/// Refuses a text longer than `limits.max_bytes`, before reading any of it.
pub fn check_size(text: &str, limits: &Limits) -> Result<(), YamlError> {
    if text.len() > limits.max_bytes {
        return Err(YamlError {
            location: None,
            message: format!(
                "{} bytes is too large for {} (at most {} bytes)",
                text.len(),
                limits.what,
                limits.max_bytes
            ),
        });
    }
    Ok(())
}

fn options(limits: &Limits) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.max_depth;
    // Flow nesting (`[[[`) is left to the parser's own, higher limit, so
    // that nesting too deep in any style is reported as `max_depth`.
    budget.max_nodes = limits.max_values;
    budget.max_total_scalar_bytes = limits.max_bytes;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = limits.max_alias_replays;
    // In every mapping, typed or not (labels too), as serde_yaml did.
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.merge_keys = MergeKeyPolicy::AsOrdinary;
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.reject_unsupported_tags = true;
    options.with_snippet = false;
    options
}

/// The error as this project words it: limits named, location apart.
fn error(error: &Error, limits: &Limits) -> YamlError {
    let location = error
        .location()
        .filter(|at| at.line() > 0)
        .map(|at| Location {
            line: at.line() as usize,
            column: at.column() as usize,
        });
    // Aliases and snippets wrap the error that was found.
    let mut original = error;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = original {
        original = error;
    }
    let what = limits.what;
    let message = match original {
        Error::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => format!(
                "nested more than {} levels deep, the limit for {what}",
                limits.max_depth
            ),
            BudgetBreach::Nodes { .. } => format!(
                "more than {} values, aliases expanded, the limit for {what}",
                limits.max_values
            ),
            BudgetBreach::ScalarBytes { .. } => {
                format!(
                    "more than {} bytes of text, the limit for {what}",
                    limits.max_bytes
                )
            }
            other => format!("over a limit for {what}: {other:?}"),
        },
        Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate entry with key {key:?}")
        }
        Error::DuplicateMappingKey { key: None, .. } => "duplicate entry in a mapping".to_owned(),
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. } => format!(
            "aliases expand to more than {} values, the limit for {what}",
            limits.max_alias_replays
        ),
        other => serde_saphyr::DefaultMessageFormatter
            .format_message(other)
            .into_owned(),
    };
    YamlError { location, message }
}

/// A YAML value as written (a document that is empty, or nothing but
/// comments, is `Null`), for readers that check it field by field
/// rather than into a typed struct: mappings keep their order, and a key
/// given twice is an error.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A whole number, of any size YAML's core schema reads.
    Integer(i128),
    Float(f64),
    String(String),
    Sequence(Vec<Value>),
    Mapping(Mapping),
}

/// A YAML mapping, in the order written. Keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapping(Vec<(Value, Value)>);

impl Mapping {
    /// The value of the string key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(k, _)| k)
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Value, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Mapping {
    type Item = (&'a Value, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Value, Value)>,
        fn(&'a (Value, Value)) -> (&'a Value, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Value {
    /// The value of `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Mapping(mapping) => mapping.get(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Integer(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Integer(n.into()))
    }

    fn visit_i128<E>(self, n: i128) -> Result<Value, E> {
        Ok(Value::Integer(n))
    }

    fn visit_u128<E>(self, n: u128) -> Result<Value, E> {
        // Past i128, a number is as good as a float for every check here.
        Ok(i128::try_from(n).map_or(Value::Float(n as f64), Value::Integer))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::Float(n))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value, E> {
        Ok(Value::String(text.to_owned()))
    }

    fn visit_string<E>(self, text: String) -> Result<Value, E> {
        Ok(Value::String(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // The reader refuses a key given twice, where it is given
        // ([`DuplicateKeyPolicy::Error`], by hash: comparing each key with
        // those before would take quadratic time on a long mapping).
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Mapping(Mapping(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Value, YamlError> {
        from_str(text, &POLICY_LIMITS)
    }

    #[test]
    fn yaml_1_2_scalars() {
        let value = read(
            "a: yes\nb: true\nc: 0x88cc\nd: 2026-01-01T08:00:00Z\ne: ~\nf: 0755\ng: 1_000\nh: 'q'\ni: -5\nj: 80.5\n",
        )
        .unwrap();
        let get = |key| value.get(key).unwrap().clone();
        assert_eq!(get("a"), Value::String("yes".into()));
        assert_eq!(get("b"), Value::Bool(true));
        assert_eq!(get("c"), Value::Integer(0x88cc));
        assert_eq!(get("d"), Value::String("2026-01-01T08:00:00Z".into()));
        assert_eq!(get("e"), Value::Null);
        assert_eq!(get("f"), Value::String("0755".into()));
        assert_eq!(get("g"), Value::String("1_000".into()));
        assert_eq!(get("h"), Value::String("q".into()));
        assert_eq!(get("i"), Value::Integer(-5));
        assert_eq!(get("j"), Value::Float(80.5));
    }

    #[test]
    fn mappings_keep_their_order() {
        let value = read("z: 1\na: {y: 2, b: 3}\n").unwrap();
        let Value::Mapping(top) = &value else {
            panic!("{value:?}")
        };
        let keys: Vec<_> = top.keys().filter_map(Value::as_str).collect();
        assert_eq!(keys, ["z", "a"]);
        let inner: Vec<_> = value.get("a").unwrap().get("y").into_iter().collect();
        assert_eq!(inner, [&Value::Integer(2)]);
    }

    #[test]
    fn a_key_given_twice_is_an_error_where_it_is() {
        let error = read("a: 1\nb: {c: 1, c: 2}\n").unwrap_err();
        assert_eq!(error.message, "duplicate entry with key \"c\"");
        assert_eq!(error.location.map(|at| (at.line, at.column)), Some((2, 11)));
        // In typed structs' maps too.
        let error =
            from_str::<std::collections::BTreeMap<String, u8>>("c: 1\nc: 2\n", &POLICY_LIMITS);
        assert_eq!(
            error.unwrap_err().to_string(),
            "line 2, column 1: duplicate entry with key \"c\""
        );
    }

    #[test]
    fn tags_are_refused() {
        let error = read("a: !secret x\n").unwrap_err();
        assert_eq!(error.location.map(|at| at.line), Some(1), "{error}");
    }

    #[test]
    fn nothing_but_comments_is_null() {
        assert_eq!(read("# nothing\n").unwrap(), Value::Null);
        assert_eq!(read("").unwrap(), Value::Null);
    }
}
