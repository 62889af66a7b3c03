//! The control plane's address as clients are given it.

use std::fmt;
use std::str::FromStr;

use http::Uri;

/// A control-plane address, `https://host:port`, parsed as a URI: the host
/// (a name, an IPv4 address or a bracketed IPv6 address) is what the
/// server's certificate is verified against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddress {
    /// As given, for messages.
    text: String,
    uri: Uri,
    host: String,
    port: u16,
}

/// Why a text is not a control-plane address.
#[derive(Debug, thiserror::Error)]
#[error("invalid control-plane address {address:?}: {reason}")]
pub struct AddressError {
    /// The text given.
    pub address: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ServerAddress {
    /// The address as a URI, to dial.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The host, without the brackets of an IPv6 address: the name the
    /// server's certificate must carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for ServerAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| AddressError {
            address: text.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = text
            .parse()
            .map_err(|err: http::uri::InvalidUri| invalid(&format!("not a URI: {err}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid(
                "must start with https:// (there is no plaintext mode)",
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| invalid("names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = match uri.port_u16() {
            Some(0) => return Err(invalid("0 is not a port")),
            Some(port) => port,
            None => {
                // What follows the host, if anything: a port that is no number.
                let authority = uri.authority().map_or("", |a| a.as_str());
                let after_host = authority
                    .rsplit_once(']')
                    .map_or(authority, |(_, rest)| rest);
                return Err(match after_host.rsplit_once(':') {
                    Some((_, port)) if !port.is_empty() => {
                        invalid(&format!("{port:?} is not a port"))
                    }
                    _ => invalid("needs a port, as in https://cp1.example.org:7443"),
                });
            }
        };
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("must be https://host:port, without a path"));
        }
        Ok(Self {
            text: text.to_owned(),
            uri,
            host,
            port,
        })
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_uris() {
        for (text, host, port) in [
            ("https://cp1.example.org:7443", "cp1.example.org", 7443),
            ("https://192.0.2.1:7443/", "192.0.2.1", 7443),
            ("https://[::1]:7443", "::1", 7443),
            ("https://[2001:db8::1]:443", "2001:db8::1", 443),
        ] {
            let address: ServerAddress = text
                .parse()
                .unwrap_or_else(|err| panic!("{text} refused: {err}"));
            assert_eq!((address.host(), address.port()), (host, port), "{text}");
            assert_eq!(address.to_string(), text);
        }
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (text, problem) in [
            ("http://cp1:7443", "https://"),
            ("cp1:7443", "https://"),
            ("https://cp1", "needs a port"),
            ("https://[::1]", "needs a port"),
            ("https://cp1:7443/api", "without a path"),
            ("https://cp1:port", "\"port\" is not a port"),
            ("https://cp1:0", "0 is not a port"),
            ("https://cp 1:7443", "not a URI"),
        ] {
            let err = text
                .parse::<ServerAddress>()
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            let message = err.to_string();
            assert!(
                message.contains(problem) && message.contains(&format!("{text:?}")),
                "{text}: {message}"
            );
        }
    }
}
