//! A policy source that asks the YAML reader for far more than its size is
//! refused at once, naming the limit it passed (`wardline_policy::yaml`).

use wardline_policy::yaml::{MAX_POLICY_SOURCE_BYTES, POLICY_LIMITS};
use wardline_policy::{PolicyError, parse};

/// The only error of `source`.
#[track_caller]
fn only_error(source: &str) -> PolicyError {
    let errors = match parse(source) {
        Ok(set) => panic!("accepted: {set:#?}"),
        Err(errors) => errors.0,
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().expect("one error")
}

/// Nine anchors, each a list of nine aliases of the one before: 9^9 (some
/// 387 million) values from under 600 bytes.
pub const BILLION_LAUGHS: &str = "\
apiVersion: wardline/v1
kind: Segment
metadata: {name: laughs}
spec:
  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
";

#[test]
fn an_alias_bomb_is_refused_naming_the_alias_limit() {
    assert!(BILLION_LAUGHS.len() < 600, "{}", BILLION_LAUGHS.len());
    let error = only_error(BILLION_LAUGHS);
    assert_eq!(error.document, 1);
    assert!(error.location.is_some(), "{error}");
    assert!(
        error.to_string().ends_with(&format!(
            "invalid YAML: aliases expand to more than {} values, the limit for a policy source",
            POLICY_LIMITS.max_alias_replays
        )),
        "{error}"
    );
}

#[test]
fn an_alias_bomb_in_a_later_document_is_that_document_s_error() {
    let source = format!(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: pacs}}\nspec: {{cidrs: [198.18.40.0/24]}}\n---\n{BILLION_LAUGHS}"
    );
    let error = only_error(&source);
    assert_eq!(error.document, 2);
    assert!(error.message.contains("aliases expand"), "{error}");
    // Lines are the source's: the first alias replayed beyond the limit
    // is in the second document, past line 6.
    assert!(error.location.is_some_and(|at| at.line > 6), "{error}");
}

/// The message for nesting deeper than the limit.
fn too_deep() -> String {
    format!(
        "invalid YAML: nested more than {} levels deep, the limit for a policy source",
        POLICY_LIMITS.max_depth
    )
}

#[test]
fn a_hundred_nested_lists_are_refused_naming_the_depth_limit() {
    let source = format!(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: deep}}\nspec: {{cidrs: {}{}}}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let error = only_error(&source);
    assert_eq!(error.message, too_deep(), "{error}");
    assert_eq!(error.location.map(|at| at.line), Some(4), "{error}");
}

#[test]
fn a_hundred_nested_mappings_are_refused_naming_the_depth_limit() {
    let block: String = (0..100)
        .map(|level| format!("{}k{level}:\n", "  ".repeat(level)))
        .collect();
    let error = only_error(&block);
    assert_eq!(error.message, too_deep(), "{error}");

    let flow = format!("{}x{}\n", "{a: ".repeat(100), "}".repeat(100));
    let error = only_error(&flow);
    assert_eq!(error.message, too_deep(), "{error}");
}

#[test]
fn a_source_over_the_size_limit_is_refused_unread() {
    // Valid YAML throughout: only its size is wrong.
    let mut source = String::from("apiVersion: wardline/v1\n");
    let filler = "# filler\n";
    source.push_str(&filler.repeat((MAX_POLICY_SOURCE_BYTES - source.len()) / filler.len() + 1));
    assert!(source.len() > MAX_POLICY_SOURCE_BYTES);
    let error = only_error(&source);
    assert_eq!(
        error.to_string(),
        format!(
            "document 1: {} bytes is too large for a policy source (at most {MAX_POLICY_SOURCE_BYTES} bytes)",
            source.len()
        )
    );
}

#[test]
fn the_limits_leave_room_for_real_policies() {
    // Nesting to the limit is YAML the reader takes (the language then
    // refuses the shape); a source at the size limit is read.
    // The document's mapping and spec's are two levels.
    let depth = POLICY_LIMITS.max_depth - 2;
    let source = format!(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: deep}}\nspec: {{cidrs: {}{}}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let error = only_error(&source);
    assert_eq!(error.field.as_deref(), Some("spec.cidrs[0]"), "{error}");

    let mut source = String::from(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pacs}\nspec: {cidrs: [198.18.40.0/24]}\n",
    );
    source.push_str(&"#".repeat(MAX_POLICY_SOURCE_BYTES - source.len()));
    assert_eq!(source.len(), MAX_POLICY_SOURCE_BYTES);
    assert!(parse(&source).is_ok());
}
