//! API tokens: `skiff_<id>_<secret>`, 16 hex digits of public id and 40 of
//! secret. Only the SHA-256 of the secret is stored; the token is shown once.

use std::fmt;

/// The name of the admin token a new coordinator writes to its data dir.
pub const INITIAL_TOKEN_NAME: &str = "initial-admin";

/// A parsed API token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiTokenSecret {
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for ApiTokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokenSecret({}, <redacted>)", self.id)
    }
}

impl fmt::Display for ApiTokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skiff_{}_{}", self.id, self.secret)
    }
}

impl ApiTokenSecret {
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        Ok(Self {
            id: hex::encode(skiff_shared::random_bytes::<8>()?),
            secret: hex::encode(skiff_shared::random_bytes::<20>()?),
        })
    }

    /// Parses a token as given in an `Authorization: Bearer` header.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.trim().strip_prefix("skiff_")?;
        let (id, secret) = rest.split_once('_')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id, 16) && hex(secret, 40)).then(|| Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn hash(&self) -> String {
        hex::encode(skiff_shared::sha256(self.secret.as_bytes()))
    }
}

/// Constant-time comparison of two hex digests.
pub fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_redaction() {
        let t = ApiTokenSecret::generate().unwrap();
        assert_eq!(ApiTokenSecret::parse(&t.to_string()), Some(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(ApiTokenSecret::parse("skiff_x_y"), None);
        assert_eq!(ApiTokenSecret::parse(""), None);
        assert!(same_digest(&t.hash(), &t.hash()));
        assert!(!same_digest(&t.hash(), "00"));
    }
}
