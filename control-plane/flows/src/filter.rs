//! Which flow records a query wants: parsed from the wire once, each bad
//! field refused with a message that names it.

use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;
use wardline_proto::v1;

use wardline_proto::convert::protocol_number;

use crate::record::{VERDICTS, address};

/// The most records one query returns (more: narrow it, or use `last`).
pub const MAX_RESULTS: usize = 100_000;

/// A field of a query that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct QueryError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> QueryError {
    QueryError {
        field,
        message: message.into(),
    }
}

/// One end of a flow, as a query names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Segment(String),
    Addresses(IpNet),
}

impl End {
    fn parse(field: &'static str, text: &str) -> Result<End, QueryError> {
        if text.contains('/') {
            return text
                .parse::<IpNet>()
                .map(|n| End::Addresses(n.trunc()))
                .map_err(|e| refuse(field, format!("{text:?} is not a CIDR ({e})")));
        }
        if let Ok(a) = text.parse::<IpAddr>() {
            return Ok(End::Addresses(IpNet::from(a)));
        }
        let label = !text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if label {
            Ok(End::Segment(text.to_owned()))
        } else {
            Err(refuse(
                field,
                format!("{text:?} is neither a segment name, an address nor a CIDR"),
            ))
        }
    }

    fn matches(&self, segment: &str, address: Option<IpAddr>) -> bool {
        match self {
            End::Segment(s) => s == segment,
            End::Addresses(net) => address.is_some_and(|a| net.contains(&a)),
        }
    }
}

/// A parsed [`v1::ObserveRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub node: Option<String>,
    pub from: Option<End>,
    pub to: Option<End>,
    pub port: Option<u16>,
    pub protocol: Option<u32>,
    pub verdict: Option<String>,
    pub reason: Option<String>,
    pub policy: Option<String>,
    /// The newest this many; 0: all (up to [`MAX_RESULTS`]).
    pub last: usize,
    pub follow: bool,
}

/// A segment name (a DNS label), if any.
pub(crate) fn label(field: &'static str, text: &str) -> Result<Option<String>, QueryError> {
    if text.is_empty() {
        return Ok(None);
    }
    match End::parse(field, text)? {
        End::Segment(s) => Ok(Some(s)),
        End::Addresses(_) => Err(refuse(field, format!("{text:?} is not a segment name"))),
    }
}

/// An instant: RFC 3339, or a duration back from `now` (`10m`, `2h30m`).
pub(crate) fn instant(
    field: &'static str,
    text: &str,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, QueryError> {
    if text.is_empty() {
        return Ok(None);
    }
    wardline_proto::convert::instant(text, now, wardline_proto::convert::Towards::Past)
        .map(Some)
        .map_err(|e| refuse(field, e))
}

fn name(field: &'static str, text: &str) -> Result<Option<String>, QueryError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > 63 || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse(field, format!("{text:?} is not a name")));
    }
    Ok(Some(text.to_owned()))
}

impl Query {
    pub fn parse(req: &v1::ObserveRequest, now: OffsetDateTime) -> Result<Query, QueryError> {
        let since = instant("since", &req.since, now)?;
        let until = instant("until", &req.until, now)?;
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(refuse(
                "since",
                format!("{} is after until ({})", req.since, req.until),
            ));
        }
        let end = |field, text: &str| {
            if text.is_empty() {
                Ok(None)
            } else {
                End::parse(field, text).map(Some)
            }
        };
        let port = match req.port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| refuse("port", format!("{p} is not a port")))?),
        };
        let protocol = match req.protocol.as_str() {
            "" => None,
            p => Some(protocol_number(p).ok_or_else(|| {
                refuse(
                    "protocol",
                    format!("{p:?} is not tcp, udp, sctp, icmp, icmpv6 or a protocol number"),
                )
            })?),
        };
        let verdict = match req.verdict.as_str() {
            "" => None,
            v if VERDICTS.contains(&v) => Some(v.to_owned()),
            v => {
                return Err(refuse(
                    "verdict",
                    format!("{v:?} is not one of {}", VERDICTS.join(", ")),
                ));
            }
        };
        Ok(Query {
            since,
            until,
            node: name("node", &req.node)?,
            from: end("from", &req.from)?,
            to: end("to", &req.to)?,
            port,
            protocol,
            verdict,
            reason: name("reason", &req.reason)?,
            policy: name("policy", &req.policy)?,
            last: (req.last as usize).min(MAX_RESULTS),
            follow: req.follow,
        })
    }

    /// Whether `flow`, judged at `at`, is one of the records wanted.
    pub fn matches(&self, flow: &v1::Flow, at: OffsetDateTime) -> bool {
        self.within(at) && self.matches_but_time(flow)
    }

    /// Whether `at` is within the query's time range.
    pub fn within(&self, at: OffsetDateTime) -> bool {
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at <= u)
    }

    /// Whether `flow` matches everything but the time range (cheaper than
    /// reading its time: checked first).
    pub fn matches_but_time(&self, flow: &v1::Flow) -> bool {
        self.node.as_ref().is_none_or(|n| *n == flow.node) && self.matches_facts(&Facts::of(flow))
    }

    /// Whether a record with these `facts` matches everything but the time
    /// range and the node.
    pub fn matches_facts(&self, f: &Facts<'_>) -> bool {
        self.from
            .as_ref()
            .is_none_or(|e| e.matches(f.src_segment, address(f.src)))
            && self
                .to
                .as_ref()
                .is_none_or(|e| e.matches(f.dst_segment, address(f.dst)))
            && self.port.is_none_or(|p| u32::from(p) == f.dport)
            && self.protocol.is_none_or(|p| p == f.protocol)
            && self.verdict.as_ref().is_none_or(|v| v == f.verdict)
            && self.reason.as_ref().is_none_or(|r| r == f.reason)
            && self.policy.as_ref().is_none_or(|p| p == f.policy)
    }
}

/// What a query compares of a record (but its time and node), whether it
/// is read from the record or from a block's tally of its pairs.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub src_segment: &'a str,
    pub dst_segment: &'a str,
    /// The addresses, as records carry them (4 or 16 bytes).
    pub src: &'a [u8],
    pub dst: &'a [u8],
    pub dport: u32,
    pub protocol: u32,
    pub verdict: &'a str,
    pub reason: &'a str,
    pub policy: &'a str,
}

impl<'a> Facts<'a> {
    pub fn of(flow: &'a v1::Flow) -> Facts<'a> {
        Facts {
            src_segment: &flow.src_segment,
            dst_segment: &flow.dst_segment,
            src: &flow.src,
            dst: &flow.dst,
            dport: flow.dport,
            protocol: flow.protocol,
            verdict: &flow.verdict,
            reason: &flow.reason,
            policy: &flow.policy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::flow;

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse(
            "2026-12-02T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    }

    #[test]
    fn every_bad_field_is_refused_by_name() {
        let cases: Vec<(v1::ObserveRequest, &str)> = vec![
            (
                v1::ObserveRequest {
                    since: "last tuesday".into(),
                    ..Default::default()
                },
                "since",
            ),
            (
                v1::ObserveRequest {
                    until: "soon".into(),
                    ..Default::default()
                },
                "until",
            ),
            (
                v1::ObserveRequest {
                    since: "1m".into(),
                    until: "1h".into(),
                    ..Default::default()
                },
                "since",
            ),
            (
                v1::ObserveRequest {
                    from: "198.18.20.0/33".into(),
                    ..Default::default()
                },
                "from",
            ),
            (
                v1::ObserveRequest {
                    to: "Not A Segment".into(),
                    ..Default::default()
                },
                "to",
            ),
            (
                v1::ObserveRequest {
                    port: 70_000,
                    ..Default::default()
                },
                "port",
            ),
            (
                v1::ObserveRequest {
                    protocol: "quic".into(),
                    ..Default::default()
                },
                "protocol",
            ),
            (
                v1::ObserveRequest {
                    verdict: "blocked".into(),
                    ..Default::default()
                },
                "verdict",
            ),
            (
                v1::ObserveRequest {
                    node: "a b".into(),
                    ..Default::default()
                },
                "node",
            ),
        ];
        for (req, field) in cases {
            let e = Query::parse(&req, now()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn ends_match_by_segment_address_or_cidr() {
        let f = flow(
            "2026-12-02T11:59:00Z",
            "198.18.20.10",
            "198.18.41.10",
            443,
            "allowed",
            1,
        );
        let at = crate::record::time_of(&f).unwrap();
        let q = |req: v1::ObserveRequest| Query::parse(&req, now()).unwrap().matches(&f, at);
        assert!(q(v1::ObserveRequest {
            from: "ws".into(),
            ..Default::default()
        }));
        assert!(q(v1::ObserveRequest {
            from: "198.18.20.10".into(),
            ..Default::default()
        }));
        assert!(q(v1::ObserveRequest {
            to: "198.18.41.0/24".into(),
            port: 443,
            ..Default::default()
        }));
        assert!(!q(v1::ObserveRequest {
            to: "ws".into(),
            ..Default::default()
        }));
        assert!(!q(v1::ObserveRequest {
            from: "2001:db8::/32".into(),
            ..Default::default()
        }));
        assert!(q(v1::ObserveRequest {
            since: "2m".into(),
            protocol: "tcp".into(),
            ..Default::default()
        }));
        assert!(!q(v1::ObserveRequest {
            since: "30s".into(),
            ..Default::default()
        }));
        assert!(!q(v1::ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        }));
        assert!(q(v1::ObserveRequest {
            policy: "ws-ehr".into(),
            ..Default::default()
        }));
    }
}
