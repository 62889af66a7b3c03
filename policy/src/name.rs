//! Names that have been checked: a node's name, and the rule every
//! Wardline name follows (segments, policies, the labels of a DNS name).
//!
//! The rule is a DNS label (RFC 1123), lowercase: 1 to 63 of `a-z`, `0-9`
//! and `-`, starting and ending with a letter or digit. It is written once,
//! in [`NameProblem::of`]; the policy parser, the site PKI and the agent's
//! configuration all ask it, so they can never disagree about a name.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

/// The longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;

/// A node's name, checked to be a DNS label: the `metadata.name` of an
/// agent's configuration, the common name of its certificate, the node a
/// snapshot is compiled for. Built only through [`FromStr`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(Arc<str>);

/// Why a text is not a DNS label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameProblem {
    /// The text is empty.
    Empty,
    /// An uppercase letter.
    Uppercase(char),
    /// A character other than a lowercase letter, a digit or `-`.
    NotAllowed(char),
    /// Longer than [`MAX_LABEL_LEN`] characters.
    TooLong(usize),
    /// Starts with `-`.
    LeadingHyphen,
    /// Ends with `-`.
    TrailingHyphen,
}

/// A text that is not a valid node name, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a DNS label: {problem}")]
pub struct NameError {
    /// The text given.
    pub name: String,
    /// What is wrong with it.
    pub problem: NameProblem,
}

impl NameProblem {
    /// Why `text` is not a DNS label, or `None` if it is one.
    pub fn of(text: &str) -> Option<NameProblem> {
        if text.is_empty() {
            return Some(NameProblem::Empty);
        }
        if let Some(c) = text.chars().find(char::is_ascii_uppercase) {
            return Some(NameProblem::Uppercase(c));
        }
        if let Some(c) = text
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Some(NameProblem::NotAllowed(c));
        }
        if text.len() > MAX_LABEL_LEN {
            return Some(NameProblem::TooLong(text.len()));
        }
        if text.starts_with('-') {
            return Some(NameProblem::LeadingHyphen);
        }
        if text.ends_with('-') {
            return Some(NameProblem::TrailingHyphen);
        }
        None
    }
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Empty => f.write_str("it is empty"),
            NameProblem::Uppercase(c) => write!(f, "uppercase {c:?}; names are lowercase"),
            NameProblem::NotAllowed(c) => write!(
                f,
                "{c:?} is not allowed; use lowercase letters, digits and '-'"
            ),
            NameProblem::TooLong(n) => write!(f, "{n} characters; at most {MAX_LABEL_LEN}"),
            NameProblem::LeadingHyphen => f.write_str("must start with a letter or digit"),
            NameProblem::TrailingHyphen => f.write_str("must end with a letter or digit"),
        }
    }
}

impl NodeName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match NameProblem::of(text) {
            None => Ok(NodeName(Arc::from(text))),
            Some(problem) => Err(NameError {
                name: text.to_owned(),
                problem,
            }),
        }
    }
}

impl Deref for NodeName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> String {
        name.0.as_ref().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_node_names() {
        for good in ["a", "pacs", "gw-icu", "a1-b2", &"x".repeat(63)] {
            assert_eq!(NameProblem::of(good), None, "{good}");
            let name: NodeName = good.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(name.as_str(), good);
        }
    }

    #[test]
    fn each_problem_is_named() {
        for (bad, message) in [
            ("", "it is empty"),
            ("GW", "uppercase 'G'; names are lowercase"),
            (
                "a_b",
                "'_' is not allowed; use lowercase letters, digits and '-'",
            ),
            (
                "a.b",
                "'.' is not allowed; use lowercase letters, digits and '-'",
            ),
            (&"x".repeat(64), "64 characters; at most 63"),
            ("-a", "must start with a letter or digit"),
            ("a-", "must end with a letter or digit"),
        ] {
            let err = bad
                .parse::<NodeName>()
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(
                err.to_string(),
                format!("{bad:?} is not a DNS label: {message}")
            );
        }
    }
}
