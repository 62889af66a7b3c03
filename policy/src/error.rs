//! What is wrong with a policy source: every error names the document, the
//! field and the value at fault, so that an operator can find and fix it
//! without reading the parser.
//!
//! ```text
//! document 3 (Segment "infusion-pumps"): spec.cidrs[1]: "198.18.30.0/33" is not a valid CIDR (invalid prefix length)
//! ```

use std::fmt;

use crate::model::DocRef;

/// A line and column (both 1-based) in a policy source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// One problem in a policy source.
///
/// Displays as `document N (Kind "name"): field.path: message`, leaving out
/// whatever is not known: the kind and name of a document whose envelope is
/// broken, the field of a problem with the document as a whole. A YAML syntax
/// error names its line and column instead of a field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{}{message}", DocLabel::new(self.document, self.kind.as_deref(), self.name.as_deref()), Prefix(self.location.as_ref()), Prefix(self.field.as_deref()))]
pub struct PolicyError {
    /// 1-based position of the document among the source's non-empty
    /// documents (those separated by `---`; a document with nothing but
    /// comments does not count).
    pub document: usize,
    /// The document's `kind` (`Segment` or `Policy`), when it is one of them.
    pub kind: Option<String>,
    /// The document's `metadata.name`, when it is a string.
    pub name: Option<String>,
    /// Path of the field at fault, such as `spec.ports[0].endPort`; `None`
    /// when the problem is the document as a whole.
    pub field: Option<String>,
    /// Where in the source, for YAML syntax errors.
    pub location: Option<Location>,
    /// What is wrong, quoting the value at fault.
    pub message: String,
}

impl PolicyError {
    /// An error about the field `field` of the document `doc` (a
    /// [`DocRef`] with an empty kind or name leaves it out).
    pub fn at(doc: &DocRef, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::in_document(doc, message)
        }
    }

    /// An error about the document `doc` as a whole.
    pub fn in_document(doc: &DocRef, message: impl Into<String>) -> Self {
        let known = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            document: doc.index,
            kind: known(&doc.kind),
            name: known(&doc.name),
            field: None,
            location: None,
            message: message.into(),
        }
    }

    /// The document this error is about, as the model names documents
    /// (kind and name empty when not known).
    pub fn doc_ref(&self) -> DocRef {
        DocRef {
            index: self.document,
            kind: self.kind.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
        }
    }
}

/// Every problem found in a policy source, in document order; displayed one
/// per line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The errors, in document order.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no error at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Displays the errors one per line, each prefixed with `source` (the
    /// file the policy was read from): `examples/hospital.yaml: document 3 …`.
    pub fn in_source<'a>(&'a self, source: &'a str) -> impl fmt::Display + 'a {
        InSource {
            errors: self,
            source,
        }
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl From<PolicyError> for PolicyErrors {
    fn from(error: PolicyError) -> Self {
        Self(vec![error])
    }
}

impl From<Vec<PolicyError>> for PolicyErrors {
    fn from(errors: Vec<PolicyError>) -> Self {
        Self(errors)
    }
}

impl IntoIterator for PolicyErrors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `PolicyErrors::in_source`.
struct InSource<'a> {
    errors: &'a PolicyErrors,
    source: &'a str,
}

impl fmt::Display for InSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {error}", self.source)?;
        }
        Ok(())
    }
}

/// A document as error messages name it: `document 3 (Segment "pacs")`,
/// `document 3 (Segment)`, `document 3 ("pacs")` or `document 3`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DocLabel<'a> {
    index: usize,
    kind: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> DocLabel<'a> {
    pub(crate) fn new(index: usize, kind: Option<&'a str>, name: Option<&'a str>) -> Self {
        Self { index, kind, name }
    }

    /// The label of a [`DocRef`], leaving out an empty kind or name.
    pub(crate) fn of(doc: &'a DocRef) -> Self {
        let known = |s: &'a str| (!s.is_empty()).then_some(s);
        Self::new(doc.index, known(&doc.kind), known(&doc.name))
    }
}

impl fmt::Display for DocLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        match (self.kind, self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name:?})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            (None, Some(name)) => write!(f, " ({name:?})"),
            (None, None) => Ok(()),
        }
    }
}

/// `value: `, or nothing when there is no value.
struct Prefix<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Prefix<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => write!(f, "{value}: "),
            None => Ok(()),
        }
    }
}
