//! Plan signing: the coordinator signs the exact bytes of a plan with its
//! ed25519 key; the agent, which pinned the public key at join, verifies
//! the signature over those bytes before it parses them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::plan::HostPlan;

/// A plan as sent: the payload bytes and the signature over them, both base64.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedPlan {
    pub payload: String,
    pub signature: String,
}

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("plan is not signed: payload or signature is not valid base64")]
    Encoding,
    #[error("plan signature is invalid: it was not signed by this cluster's coordinator key")]
    BadSignature,
    #[error("plan payload is not a valid plan: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("plan is for node {got}, not this node ({want})")]
    WrongNode { got: String, want: String },
}

/// Signs `payload` with `key`.
pub fn sign(key: &SigningKey, payload: &[u8]) -> SignedPlan {
    SignedPlan {
        payload: B64.encode(payload),
        signature: B64.encode(key.sign(payload).to_bytes()),
    }
}

/// Verifies the signature and returns the exact payload bytes that were signed.
pub fn verify(key: &VerifyingKey, signed: &SignedPlan) -> Result<Vec<u8>, PlanError> {
    let payload = B64
        .decode(&signed.payload)
        .map_err(|_| PlanError::Encoding)?;
    let sig = B64
        .decode(&signed.signature)
        .map_err(|_| PlanError::Encoding)?;
    let sig = Signature::from_slice(&sig).map_err(|_| PlanError::BadSignature)?;
    key.verify(&payload, &sig)
        .map_err(|_| PlanError::BadSignature)?;
    Ok(payload)
}

/// Verifies, then parses, a plan meant for `node_id`.
pub fn open(key: &VerifyingKey, signed: &SignedPlan, node_id: &str) -> Result<HostPlan, PlanError> {
    open_with_bytes(key, signed, node_id).map(|(plan, _)| plan)
}

/// Verifies, then parses, a plan meant for `node_id`; also returns the
/// exact bytes that were signed.
pub fn open_with_bytes(
    key: &VerifyingKey,
    signed: &SignedPlan,
    node_id: &str,
) -> Result<(HostPlan, Vec<u8>), PlanError> {
    let bytes = verify(key, signed)?;
    let plan: HostPlan = serde_json::from_slice(&bytes)?;
    if plan.node_id != node_id {
        return Err(PlanError::WrongNode {
            got: plan.node_id,
            want: node_id.to_owned(),
        });
    }
    Ok((plan, bytes))
}

/// Encodes a public key as sent at join: base64 of the 32 raw bytes.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Decodes a public key sent at join.
pub fn decode_public_key(s: &str) -> Result<VerifyingKey, String> {
    let bytes = B64
        .decode(s.trim())
        .map_err(|e| format!("plan public key is not base64: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "plan public key must be 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("plan public key is invalid: {e}"))
}

/// Makes a new signing key from the system's secure random source.
pub fn generate_key() -> Result<SigningKey, ring::error::Unspecified> {
    Ok(SigningKey::from_bytes(&crate::random_bytes::<32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_bytes() -> Vec<u8> {
        serde_json::to_vec(&HostPlan {
            cluster_id: "c1".into(),
            epoch: 1,
            node_id: "n1".into(),
            generation: 4,
            issued_at_ms: 1,
            sections: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn signed_plan_opens() {
        let key = generate_key().unwrap();
        let signed = sign(&key, &plan_bytes());
        let plan = open(&key.verifying_key(), &signed, "n1").unwrap();
        assert_eq!(plan.generation, 4);
    }

    #[test]
    fn wrong_key_tampered_payload_and_wrong_node_are_refused() {
        let key = generate_key().unwrap();
        let other = generate_key().unwrap();
        let signed = sign(&key, &plan_bytes());
        assert!(matches!(
            open(&other.verifying_key(), &signed, "n1"),
            Err(PlanError::BadSignature)
        ));

        let mut tampered = signed.clone();
        let mut bytes = plan_bytes();
        let n = bytes.len();
        bytes[n - 2] ^= 1;
        tampered.payload = B64.encode(&bytes);
        assert!(matches!(
            open(&key.verifying_key(), &tampered, "n1"),
            Err(PlanError::BadSignature)
        ));

        let unsigned = SignedPlan {
            payload: signed.payload.clone(),
            signature: String::new(),
        };
        assert!(open(&key.verifying_key(), &unsigned, "n1").is_err());

        assert!(matches!(
            open(&key.verifying_key(), &signed, "n2"),
            Err(PlanError::WrongNode { .. })
        ));
    }

    #[test]
    fn public_key_round_trip() {
        let key = generate_key().unwrap().verifying_key();
        assert_eq!(decode_public_key(&encode_public_key(&key)).unwrap(), key);
        assert!(decode_public_key("abc").is_err());
    }
}
