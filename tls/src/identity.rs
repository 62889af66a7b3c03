//! Who a certificate says its holder is.
//!
//! The site PKI writes a party's identity into the subject of its
//! certificate: the common name (CN) is the party's name (an agent's node
//! name, an operator's login, a control-plane host name) and the
//! organizational unit (OU) its [`Role`]. [`identity_of`] reads that back
//! from a certificate the TLS layer has verified.

use std::fmt;
use std::str::FromStr;

/// Errors reading an identity from a certificate, or a role from its name.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A role name is none of `agent`, `operator`, `control-plane`.
    #[error("unknown role {value:?}: expected agent, operator or control-plane")]
    UnknownRole {
        /// The value given.
        value: String,
    },
    /// A peer certificate cannot be parsed.
    #[error("cannot parse certificate: {reason}")]
    Unparsable {
        /// What went wrong.
        reason: String,
    },
    /// A certificate has no subject common name, or more than one.
    #[error("certificate subject must carry exactly one common name (CN), found {count}")]
    CommonName {
        /// How many were found.
        count: usize,
    },
    /// A certificate has no role (organizational unit), or more than one.
    #[error(
        "certificate subject must carry exactly one organizational unit (OU) naming its role, found {count}"
    )]
    OrganizationalUnit {
        /// How many were found.
        count: usize,
    },
    /// A certificate's organizational unit is not a known role.
    #[error(
        "certificate organizational unit (OU) {ou:?} is not a Wardline role (agent, operator, control-plane)"
    )]
    UnknownOu {
        /// The organizational unit found.
        ou: String,
    },
    /// A subject attribute is not a readable string.
    #[error("certificate subject {attribute} is not a readable string")]
    UnreadableAttribute {
        /// The attribute (CN, OU).
        attribute: &'static str,
    },
}

/// What a certificate holder is allowed to be on the control plane's APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A node's agent: receives policy, reports flows and status.
    Agent,
    /// A person or tool administering the site (`wardctl`).
    Operator,
    /// A control-plane server; also a client of its peers.
    ControlPlane,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Agent, Role::Operator, Role::ControlPlane];

    /// The role's name as written in a certificate's organizational unit.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::ControlPlane => "control-plane",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole {
                value: s.to_owned(),
            })
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The holder's role (the subject's OU).
    pub role: Role,
    /// The holder's name (the subject's CN): node name, operator login or
    /// control-plane host name.
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// Reads who a DER certificate says its holder is: the name from the
/// subject's CN, the role from its OU.
///
/// This does not check the certificate's signature or validity: it is for
/// certificates the TLS layer has already verified against the site CA.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|err| IdentityError::Unparsable {
            reason: err.to_string(),
        })?;
    let subject = cert.subject();

    let names = attribute_values(subject.iter_common_name(), "CN")?;
    let [name] = names.as_slice() else {
        return Err(IdentityError::CommonName { count: names.len() });
    };
    let units = attribute_values(subject.iter_organizational_unit(), "OU")?;
    let [unit] = units.as_slice() else {
        return Err(IdentityError::OrganizationalUnit { count: units.len() });
    };
    let role = Role::ALL
        .into_iter()
        .find(|role| role.as_str() == *unit)
        .ok_or_else(|| IdentityError::UnknownOu {
            ou: (*unit).to_owned(),
        })?;
    if name.is_empty() {
        return Err(IdentityError::CommonName { count: 0 });
    }
    Ok(Identity {
        role,
        name: (*name).to_owned(),
    })
}

/// The string values of some subject attributes.
fn attribute_values<'a>(
    attributes: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    attribute: &'static str,
) -> Result<Vec<&'a str>, IdentityError> {
    attributes
        .map(|value| {
            value
                .as_str()
                .map_err(|_| IdentityError::UnreadableAttribute { attribute })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
        assert!(matches!(
            "admin".parse::<Role>(),
            Err(IdentityError::UnknownRole { .. })
        ));
    }
}
