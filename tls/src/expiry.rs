//! When a certificate is due for renewal, and when its coming expiry is
//! worth a warning: the one rule that agents (in `/status` and
//! `/metrics`), replicas and `wardctl status` all apply.
//!
//! Times are seconds since the Unix epoch, as certificates carry them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The longest warning ahead of an expiry: a year-long certificate warns
/// for its last 30 days.
pub const WARN_AT_MOST: u64 = 30 * 24 * 60 * 60;

/// When an agent renews a certificate valid from `not_before` to
/// `not_after`: halfway through its lifetime, so that a renewal that fails
/// has the other half to be retried in.
pub fn renew_at(not_before: u64, not_after: u64) -> u64 {
    not_before + not_after.saturating_sub(not_before) / 2
}

/// From when a certificate is warned about: its last quarter of lifetime
/// (past the point its renewal should have happened), at most
/// [`WARN_AT_MOST`].
pub fn warn_from(not_before: u64, not_after: u64) -> u64 {
    let lifetime = not_after.saturating_sub(not_before);
    not_after.saturating_sub((lifetime / 4).min(WARN_AT_MOST))
}

/// The warning for a certificate at `now`, if it is due one: expired, or
/// inside [`warn_from`].
pub fn warning(not_before: u64, not_after: u64, now: u64) -> Option<String> {
    if now >= not_after {
        return Some(format!("expired at {}", rfc3339(not_after)));
    }
    if now >= warn_from(not_before, not_after) {
        return Some(format!(
            "expires in {} (at {})",
            span(not_after - now),
            rfc3339(not_after)
        ));
    }
    None
}

/// Seconds since the epoch now.
pub fn now() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

/// A time for messages and status (RFC 3339).
pub fn rfc3339(at: u64) -> String {
    i64::try_from(at)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{at} seconds after the epoch"))
}

/// A span of seconds in the largest two units: `3d 4h`, `5h 12m`, `40s`.
fn span(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {s}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn a_day_long_certificate_renews_at_noon_and_warns_for_its_last_six_hours() {
        assert_eq!(renew_at(0, DAY), DAY / 2);
        assert_eq!(warning(0, DAY, DAY / 2), None);
        assert_eq!(warn_from(0, DAY), DAY - 6 * 3600);
        let w = warning(0, DAY, DAY - 3600).unwrap_or_default();
        assert!(
            w.starts_with("expires in 1h 0m (at 1970-01-02T00:00:00Z"),
            "{w}"
        );
        let w = warning(0, DAY, DAY).unwrap_or_default();
        assert!(w.starts_with("expired at 1970-01-02T00:00:00Z"), "{w}");
    }

    #[test]
    fn a_year_long_certificate_warns_for_its_last_thirty_days() {
        let year = 365 * DAY;
        assert_eq!(warning(0, year, year - 31 * DAY), None);
        let w = warning(0, year, year - 29 * DAY).unwrap_or_default();
        assert!(w.starts_with("expires in 29d 0h"), "{w}");
    }
}
