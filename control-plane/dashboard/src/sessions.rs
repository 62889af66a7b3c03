//! Sign-in links and the sessions they open.
//!
//! An operator asks for a link over mutual TLS (`wardctl dashboard
//! login`); the link carries a random secret that opens one session in
//! the operator's name, once, within [`Settings::link`]. A session is a
//! second random secret in a cookie; it ends after [`Settings::session`]
//! from sign-in, or after [`Settings::idle`] without a request, or at
//! sign-out. Only SHA-256 digests of the secrets are kept, so that what
//! this process holds cannot be replayed as a cookie or a link.
//!
//! Both tables are bounded: an operator certificate asking for links in a
//! loop fills [`MAX_LINKS`] and is refused, and no one else's session is
//! dropped for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Links not yet used, at most.
pub const MAX_LINKS: usize = 256;
/// Sessions open at once, at most.
pub const MAX_SESSIONS: usize = 1024;

/// How long links and sessions last.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// From issue to the last moment a link opens a session.
    pub link: Duration,
    /// From sign-in to the end of a session, however busy.
    pub session: Duration,
    /// Without a request for this long, a session ends.
    pub idle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            link: Duration::from_secs(60),
            session: Duration::from_secs(8 * 3600),
            idle: Duration::from_secs(30 * 60),
        }
    }
}

/// A link for an operator: the secret to put in the URL and when it stops
/// working.
#[derive(Debug)]
pub struct Link {
    pub secret: String,
    pub expires: OffsetDateTime,
}

/// An open session: whose, and when it ends at the latest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub operator: String,
    pub expires: OffsetDateTime,
}

/// Why a link opened no session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "this sign-in link is unknown, already used or expired: run `wardctl dashboard login` for a new one"
    )]
    Link,
    #[error("too many sign-in links are waiting to be used ({MAX_LINKS}); try again in a minute")]
    TooManyLinks,
    #[error("too many dashboard sessions are open ({MAX_SESSIONS})")]
    TooManySessions,
}

struct Entry {
    operator: String,
    /// Links: when it stops working. Sessions: the end however busy.
    expires: OffsetDateTime,
    /// Sessions: the last request.
    used: OffsetDateTime,
}

type Digest32 = [u8; 32];

#[derive(Default)]
struct Tables {
    links: HashMap<Digest32, Entry>,
    sessions: HashMap<Digest32, Entry>,
}

/// The links and sessions of one replica.
pub struct Sessions {
    settings: Settings,
    tables: Mutex<Tables>,
}

fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn span(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

impl Sessions {
    pub fn new(settings: Settings) -> Sessions {
        Sessions {
            settings,
            tables: Mutex::default(),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn purge(&self, t: &mut Tables, now: OffsetDateTime) {
        let idle = span(self.settings.idle);
        t.links.retain(|_, e| e.expires > now);
        t.sessions
            .retain(|_, e| e.expires > now && e.used + idle > now);
    }

    /// A new link for `operator`.
    pub fn issue(&self, operator: &str, now: OffsetDateTime) -> Result<Link, Refused> {
        let mut t = self.tables();
        self.purge(&mut t, now);
        if t.links.len() >= MAX_LINKS {
            return Err(Refused::TooManyLinks);
        }
        let secret = new_secret();
        let expires = now + span(self.settings.link);
        t.links.insert(
            digest(&secret),
            Entry {
                operator: operator.to_owned(),
                expires,
                used: now,
            },
        );
        Ok(Link { secret, expires })
    }

    /// Whose a link is, if it is still good, without using it.
    pub fn pending(&self, link: &str, now: OffsetDateTime) -> Option<String> {
        let mut t = self.tables();
        self.purge(&mut t, now);
        t.links.get(&digest(link)).map(|e| e.operator.clone())
    }

    /// Uses a link: the session secret for the cookie, and the session.
    /// A link works once.
    pub fn sign_in(&self, link: &str, now: OffsetDateTime) -> Result<(String, Session), Refused> {
        let mut t = self.tables();
        self.purge(&mut t, now);
        // Taken out whatever follows: a link is never good twice.
        let entry = t.links.remove(&digest(link)).ok_or(Refused::Link)?;
        if t.sessions.len() >= MAX_SESSIONS {
            return Err(Refused::TooManySessions);
        }
        let secret = new_secret();
        let session = Session {
            operator: entry.operator,
            expires: now + span(self.settings.session),
        };
        t.sessions.insert(
            digest(&secret),
            Entry {
                operator: session.operator.clone(),
                expires: session.expires,
                used: now,
            },
        );
        Ok((secret, session))
    }

    /// The session a cookie's secret opens, if it is still open; a request
    /// with it counts as use.
    pub fn session(&self, secret: &str, now: OffsetDateTime) -> Option<Session> {
        let mut t = self.tables();
        self.purge(&mut t, now);
        let e = t.sessions.get_mut(&digest(secret))?;
        e.used = now;
        Some(Session {
            operator: e.operator.clone(),
            expires: e.expires,
        })
    }

    /// Ends a session (sign-out).
    pub fn end(&self, secret: &str) -> Option<String> {
        self.tables()
            .sessions
            .remove(&digest(secret))
            .map(|e| e.operator)
    }

    /// Sessions open now.
    pub fn open(&self, now: OffsetDateTime) -> usize {
        let mut t = self.tables();
        self.purge(&mut t, now);
        t.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + seconds)
    }

    fn sessions() -> Sessions {
        Sessions::new(Settings {
            link: Duration::from_secs(60),
            session: Duration::from_secs(3600),
            idle: Duration::from_secs(600),
        })
    }

    #[test]
    fn a_link_opens_one_session_in_its_operators_name_and_never_a_second() {
        let s = sessions();
        let link = s.issue("operator:alice", at(0)).unwrap();
        assert_eq!(link.expires, at(60));
        let (cookie, session) = s.sign_in(&link.secret, at(5)).unwrap();
        assert_eq!(session.operator, "operator:alice");
        assert_eq!(session.expires, at(3605));
        assert_eq!(s.session(&cookie, at(6)), Some(session));
        // The same link again: refused, and the session it opened stays.
        assert_eq!(s.sign_in(&link.secret, at(7)), Err(Refused::Link));
        assert!(s.session(&cookie, at(8)).is_some());
    }

    #[test]
    fn an_expired_link_opens_nothing() {
        let s = sessions();
        let link = s.issue("operator:alice", at(0)).unwrap();
        assert_eq!(s.sign_in(&link.secret, at(60)), Err(Refused::Link));
    }

    #[test]
    fn guessed_or_altered_secrets_open_nothing() {
        let s = sessions();
        let link = s.issue("operator:alice", at(0)).unwrap();
        let mut altered = link.secret.clone().into_bytes();
        altered[0] = if altered[0] == b'a' { b'b' } else { b'a' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(s.sign_in(&altered, at(1)), Err(Refused::Link));
        assert_eq!(s.sign_in("", at(1)), Err(Refused::Link));
        let (cookie, _) = s.sign_in(&link.secret, at(2)).unwrap();
        // The link's secret is not a cookie, nor is a cookie with a byte off.
        assert!(s.session(&link.secret, at(3)).is_none());
        assert!(s.session(&cookie[1..], at(3)).is_none());
        assert!(s.session(&cookie, at(3)).is_some());
    }

    #[test]
    fn sessions_end_at_their_time_when_idle_and_at_sign_out() {
        let s = sessions();
        let busy = s.issue("operator:alice", at(0)).unwrap();
        let (busy, _) = s.sign_in(&busy.secret, at(0)).unwrap();
        let idle = s.issue("operator:bob", at(0)).unwrap();
        let (idle, _) = s.sign_in(&idle.secret, at(0)).unwrap();
        let out = s.issue("operator:carol", at(0)).unwrap();
        let (out, _) = s.sign_in(&out.secret, at(0)).unwrap();
        assert_eq!(s.end(&out).as_deref(), Some("operator:carol"));
        assert!(s.session(&out, at(1)).is_none());
        // A request every 5 minutes keeps a session up to its end, no longer.
        for minute in (5..60).step_by(5) {
            assert!(
                s.session(&busy, at(minute * 60)).is_some(),
                "minute {minute}"
            );
        }
        assert!(s.session(&busy, at(3600)).is_none());
        // Ten minutes without a request end the other.
        assert!(s.session(&idle, at(600)).is_none());
        assert_eq!(s.open(at(1)), 0);
    }

    #[test]
    fn a_flood_of_links_is_bounded_and_takes_no_open_session() {
        let s = sessions();
        let link = s.issue("operator:alice", at(0)).unwrap();
        let (cookie, _) = s.sign_in(&link.secret, at(0)).unwrap();
        let mut issued = 0;
        let refused = loop {
            match s.issue("operator:stolen", at(1)) {
                Ok(_) => issued += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(issued, MAX_LINKS);
        assert_eq!(refused, Refused::TooManyLinks);
        assert!(s.session(&cookie, at(2)).is_some());
        // Expired links make room again.
        assert!(s.issue("operator:alice", at(61)).is_ok());
    }
}
