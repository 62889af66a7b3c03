//! RFC 5424 messages, framed for TLS transport as RFC 5425 says (octet
//! counting: the message's length in bytes, a space, the message).
//!
//! Written here rather than with a syslog crate: the ones kept up stamp a
//! message with the time it is sent (a flow record has its own time, kept
//! by the SIEM as the event's) and own their transports, and the format is
//! a handful of fields that the tests check against the RFC's grammar.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Facility 13: log audit (RFC 5424, table 1).
const FACILITY_LOG_AUDIT: u8 = 13;

/// The severities Wardline uses (RFC 5424, table 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Alert = 1,
    Warning = 4,
    Notice = 5,
    Informational = 6,
}

/// One message's header fields and body.
pub struct Message<'a> {
    pub time: OffsetDateTime,
    /// The replica's name.
    pub hostname: &'a str,
    pub app: &'a str,
    pub procid: u32,
    /// `flow` or `policy-change`.
    pub msgid: &'a str,
    pub severity: Severity,
    /// UTF-8 (a JSON object).
    pub body: &'a str,
}

/// PRINTUSASCII, at most `max` characters, or the NILVALUE.
fn field(text: &str, max: usize) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if kept.is_empty() { "-".into() } else { kept }
}

/// The timestamp with at most six digits of a second (TIME-SECFRAC), UTC.
fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t
        .replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t);
    // Rfc3339 writes only the digits it needs: at most six here.
    t.format(&Rfc3339).unwrap_or_else(|_| "-".into())
}

impl Message<'_> {
    /// The SYSLOG-MSG: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`
    /// with no structured data and the body as MSG-UTF8 (with its BOM).
    pub fn encode(&self) -> Vec<u8> {
        let pri = u16::from(FACILITY_LOG_AUDIT) * 8 + self.severity as u16;
        let mut out = format!(
            "<{pri}>1 {} {} {} {} {} - ",
            timestamp(self.time),
            field(self.hostname, 255),
            field(self.app, 48),
            self.procid,
            field(self.msgid, 32),
        )
        .into_bytes();
        out.extend_from_slice(b"\xef\xbb\xbf");
        out.extend_from_slice(self.body.as_bytes());
        out
    }

    /// The message framed for TLS (RFC 5425, section 4.3).
    pub fn framed(&self) -> Vec<u8> {
        let msg = self.encode();
        let mut out = format!("{} ", msg.len()).into_bytes();
        out.extend_from_slice(&msg);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_follows_the_grammar_and_is_framed_by_its_length() {
        let m = Message {
            time: OffsetDateTime::parse("2026-12-02T14:35:09.123456789Z", &Rfc3339).unwrap(),
            hostname: "replica 1",
            app: "wardline-control-plane",
            procid: 4242,
            msgid: "flow",
            severity: Severity::Warning,
            body: "{\"a\":\"é\"}",
        };
        let text = String::from_utf8(m.encode()).unwrap();
        // PRI 13*8+4; six digits of a second; a space is no header
        // character; NILVALUE structured data; BOM before the UTF-8 body.
        assert_eq!(
            text,
            "<108>1 2026-12-02T14:35:09.123456Z replica1 wardline-control-plane 4242 flow - \u{feff}{\"a\":\"é\"}"
        );
        let framed = m.framed();
        let (len, rest) = framed.split_at(framed.iter().position(|b| *b == b' ').unwrap());
        let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
        assert_eq!(len, rest.len() - 1, "the length counts the message's bytes");
        assert_eq!(field("", 10), "-");
    }
}
