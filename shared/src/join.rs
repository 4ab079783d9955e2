//! Join tokens and the join exchange.
//!
//! A join token reads `SKIFF-1-<ca sha256, 64 hex>-<id, 16 hex>-<secret, 40 hex>`.
//! The fingerprint lets a new agent check the coordinator's CA before it sends
//! anything; the id is public (it names the token in listings); the secret
//! (160 bits) is what the coordinator stores hashed.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::protocol::HostFacts;

const PREFIX: &str = "SKIFF-1-";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 40;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: [u8; 32],
    /// Public id, 16 lowercase hex digits.
    pub id: String,
    /// Secret, 40 lowercase hex digits.
    pub secret: String,
}

// The secret must never reach a log line through `{:?}`.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &hex::encode(self.ca_fingerprint))
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a string is not a join token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenParseError {
    #[error("join token must start with {PREFIX:?}; copy the whole output of `skiff token create`")]
    Prefix,
    #[error(
        "join token has the wrong shape: expected SKIFF-1-<64 hex>-<16 hex>-<40 hex>; copy the whole output of `skiff token create`"
    )]
    Shape,
}

impl JoinToken {
    /// Makes a new token for the CA with `ca_fingerprint`, with a random id and secret.
    ///
    /// # Errors
    /// Fails only when the system random source is unavailable.
    pub fn generate(ca_fingerprint: [u8; 32]) -> Result<Self, ring::error::Unspecified> {
        Ok(Self {
            ca_fingerprint,
            id: hex::encode(crate::random_bytes::<{ ID_HEX / 2 }>()?),
            secret: hex::encode(crate::random_bytes::<{ SECRET_HEX / 2 }>()?),
        })
    }

    /// The SHA-256 of the secret, hex encoded: what the coordinator stores.
    pub fn secret_hash(secret: &str) -> String {
        hex::encode(crate::sha256(secret.as_bytes()))
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FromStr for JoinToken {
    type Err = TokenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenParseError::Prefix)?;
        let mut parts = rest.split('-');
        let (Some(fp), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenParseError::Shape);
        };
        if !is_lower_hex(fp, 64) || !is_lower_hex(id, ID_HEX) || !is_lower_hex(secret, SECRET_HEX) {
            return Err(TokenParseError::Shape);
        }
        let mut ca_fingerprint = [0u8; 32];
        hex::decode_to_slice(fp, &mut ca_fingerprint).map_err(|_| TokenParseError::Shape)?;
        Ok(Self {
            ca_fingerprint,
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}-{}-{}",
            hex::encode(self.ca_fingerprint),
            self.id,
            self.secret
        )
    }
}

/// Path of the join endpoint on the coordinator's agent port.
pub const JOIN_PATH: &str = "/v1/join";

/// What a new agent sends to join, over TLS to a CA it has pinned.
/// `Debug` leaves out the token's secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token_id: String,
    pub secret: String,
    /// PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub facts: HostFacts,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token_id", &self.token_id)
            .field("secret", &"<redacted>")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// The coordinator's answer to a successful join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    /// The cluster's id, which every plan carries.
    #[serde(default)]
    pub cluster_id: String,
    /// The agent's client certificate, PEM.
    pub cert_pem: String,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// The plan-signing public key, base64 of the 32 raw ed25519 bytes.
    pub plan_public_key: String,
}

/// An error body from the agent port's HTTP endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Rules for node names and label keys and values, shared by the agent's
/// command line and the coordinator's API so both refuse the same input.
pub mod names {
    /// Checks a name of `kind` (node, secret, ...): 1-63 characters of
    /// `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
    pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid {kind} name {name:?}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ))
        }
    }

    /// Checks a node name (see [`check_name`]).
    pub fn check_node_name(name: &str) -> Result<(), String> {
        check_name("node", name)
    }

    /// Checks a label key and value.
    pub fn check_label(key: &str, value: &str) -> Result<(), String> {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key.as_bytes()[0].is_ascii_alphanumeric()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !key_ok {
            return Err(format!(
                "invalid label key {key:?}: use 1-63 letters, digits, '.', '_', '-' or '/', starting with a letter or digit"
            ));
        }
        if value.len() > 255 || value.chars().any(char::is_control) {
            return Err(format!(
                "invalid value for label {key:?}: at most 255 characters, no control characters"
            ));
        }
        Ok(())
    }

    /// Parses `key=value`, checking both parts.
    pub fn parse_label(s: &str) -> Result<(String, String), String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid label {s:?}: expected key=value"))?;
        check_label(k, v)?;
        Ok((k.to_owned(), v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_round_trips_and_hides_secret_in_debug() {
        let t = JoinToken::generate([7u8; 32]).unwrap();
        let s = t.to_string();
        assert!(s.starts_with("SKIFF-1-0707"));
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        let request = JoinRequest {
            token_id: t.id.clone(),
            secret: t.secret.clone(),
            csr_pem: String::new(),
            name: "web-1".into(),
            labels: BTreeMap::new(),
            facts: HostFacts::default(),
        };
        let shown = format!("{request:?}");
        assert!(
            shown.contains("web-1") && !shown.contains(&t.secret),
            "{shown}"
        );
    }

    #[test]
    fn token_rejects_bad_shapes() {
        let good = JoinToken::generate([1u8; 32]).unwrap().to_string();
        assert_eq!("nope".parse::<JoinToken>(), Err(TokenParseError::Prefix));
        assert_eq!(
            good[..good.len() - 1].parse::<JoinToken>(),
            Err(TokenParseError::Shape)
        );
        assert_eq!(
            format!("{good}-x").parse::<JoinToken>(),
            Err(TokenParseError::Shape)
        );
        assert!(good.to_uppercase().parse::<JoinToken>().is_err());
    }

    proptest! {
        #[test]
        fn token_parser_never_panics(s in ".{0,200}") {
            let _ = s.parse::<JoinToken>();
        }

        #[test]
        fn generated_tokens_always_parse(fp in any::<[u8; 32]>()) {
            let t = JoinToken::generate(fp).unwrap();
            prop_assert_eq!(t.to_string().parse::<JoinToken>().unwrap(), t);
        }
    }

    #[test]
    fn names_and_labels() {
        assert!(names::check_node_name("web-1.example").is_ok());
        assert!(names::check_node_name("-x").is_err());
        assert!(names::check_node_name("").is_err());
        assert!(names::check_node_name("a b").is_err());
        assert_eq!(
            names::parse_label("zone=eu-1").unwrap(),
            ("zone".into(), "eu-1".into())
        );
        assert!(names::parse_label("zone").is_err());
        assert!(names::parse_label("=x").is_err());
        assert!(names::parse_label("k=a\nb").is_err());
    }
}
