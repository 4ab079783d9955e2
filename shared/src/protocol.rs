//! The agent link: one WebSocket over mutually authenticated TLS 1.3.
//!
//! Every message is a JSON text frame holding an [`Envelope`]: the protocol
//! version, a sender-assigned id, the id of the request it answers (if any),
//! and a body that is an [`AgentMessage`] or a [`CoordinatorMessage`].
//!
//! The agent speaks first with [`Hello`] (the protocol versions and
//! capabilities it has, and its host facts); the coordinator answers with
//! [`Welcome`] (the version and capabilities both sides will use). After
//! that both sides send heartbeats every `heartbeat_interval_ms` and close a
//! link that has been silent for [`MISSED_HEARTBEATS`] intervals. Requests
//! that need an answer (plans, certificate renewal) are answered with a
//! message whose `re` is the request's id; a query is answered by a
//! stream of such messages.
//!
//! A frame or message over the limits below, text that is not a valid
//! envelope, or an unknown protocol version closes that one connection with
//! a reason; nothing else is affected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// ALPN id offered by agents on the link; the coordinator requires a client
/// certificate from every connection that offers it.
pub const ALPN_LINK: &[u8] = b"skiff-link/1";
/// Path of the WebSocket endpoint.
pub const LINK_PATH: &str = "/v1/link";
/// Largest WebSocket frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Largest WebSocket message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// WebSocket close code the coordinator sends when the node was removed
/// from the cluster; the agent stops reconnecting.
pub const CLOSE_REMOVED: u16 = 4403;
/// A link with nothing received for this many heartbeat intervals is closed.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Capability: the agent renews its certificate over the link. Every other
/// capability is a plan section's ([`crate::sections::SectionKind::CAPABILITY`]).
pub const CAP_CERT_RENEWAL: &str = "cert-renewal.v1";

/// A message on the link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// Protocol version of this envelope.
    pub v: u32,
    /// Sender-assigned id, increasing per connection.
    pub id: u64,
    /// The id of the request this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<u64>,
    pub body: B,
}

/// Messages an agent sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message on every connection (boxed: it is by far the largest).
    Hello(Box<Hello>),
    Heartbeat(Heartbeat),
    /// Answer to a request from the coordinator.
    Ack(Ack),
    /// Asks for a new client certificate for the same key.
    RenewCertificate {
        csr_pem: String,
    },
    /// A controller's observed state, sent on connect and whenever it
    /// changes, only for sections whose capability both sides have.
    Report(SectionMessage),
    /// Part of the answer to a [`CoordinatorMessage::Query`]: its `re` is
    /// the query's id. The section's own type says when the answer ends
    /// (for `logs`, [`crate::sections::logs::LogChunk::end`]).
    Answer(SectionMessage),
}

/// Messages a coordinator sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoordinatorMessage {
    /// Answer to [`Hello`].
    Welcome(Welcome),
    Heartbeat(Heartbeat),
    /// Answer to a request from the agent that needs no data back.
    Ack(Ack),
    /// Answer to [`AgentMessage::RenewCertificate`].
    Certificate {
        cert_pem: String,
        not_after_ms: u64,
    },
    /// The host's desired state ([`crate::plan::HostPlan`], signed); the
    /// agent answers with an [`Ack`] once it stored it.
    Plan(crate::signing::SignedPlan),
    /// Values a section's controller needs apart from the plan (secret
    /// values, registry credentials), sent just before the plan that needs
    /// them and again when they change. Never logged, never stored in the plan.
    Deliver(SectionMessage),
    /// A question for a section's controller (`skiff logs`), answered by
    /// a stream of [`AgentMessage::Answer`]s whose `re` is this message's
    /// id. Sent only to agents with the section's capability.
    Query(SectionMessage),
    /// The coordinator no longer wants answers to query `query` (the
    /// reader left); the agent stops it. Answers already sent are dropped.
    Cancel {
        query: u64,
    },
}

/// A report or delivery for one plan section. The link routes it by
/// `section` and never looks inside `body`: the section's controller
/// parses it as its own type ([`crate::sections`]).
#[derive(Clone, Serialize, Deserialize)]
pub struct SectionMessage {
    pub section: String,
    pub body: serde_json::Value,
}

impl std::fmt::Debug for SectionMessage {
    /// The section only: deliveries carry secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectionMessage")
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl SectionMessage {
    /// A message of section kind `K`.
    ///
    /// # Errors
    /// When `body` cannot be serialised.
    pub fn of<K: crate::sections::SectionKind, T: Serialize>(body: &T) -> serde_json::Result<Self> {
        Ok(Self {
            section: K::NAME.to_owned(),
            body: serde_json::to_value(body)?,
        })
    }
}

/// The agent's opening message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the agent speaks.
    pub protocol_versions: Vec<u32>,
    pub agent_version: String,
    pub capabilities: Vec<String>,
    pub facts: HostFacts,
    /// Generation of the last plan the agent accepted, if any.
    #[serde(default)]
    pub plan_generation: Option<u64>,
}

/// The coordinator's answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub node_id: String,
    /// Capabilities both sides have.
    pub capabilities: Vec<String>,
    pub heartbeat_interval_ms: u64,
    pub coordinator_version: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's wall clock, Unix milliseconds.
    pub sent_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Ack {
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
        }
    }
    pub fn err(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
        }
    }
}

/// What an agent reports about its host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// The host's interface addresses, loopback excluded.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Where the other hosts reach this host's mesh port, when it is not
    /// the address its link to the coordinator comes from (the agent's
    /// `mesh_endpoint` setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_endpoint: Option<String>,
    /// Docker Engine version, when the engine answered.
    #[serde(default)]
    pub docker_version: Option<String>,
    /// Docker Engine API version negotiated with the engine.
    #[serde(default)]
    pub docker_api_version: Option<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disk {
    pub mount: String,
    pub filesystem: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Why a received text is not a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not a valid envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION})")]
    Version { got: u32 },
}

/// Decodes one text frame into an envelope, checking the version.
pub fn decode<B: serde::de::DeserializeOwned>(text: &str) -> Result<Envelope<B>, DecodeError> {
    let env: Envelope<B> = serde_json::from_str(text)?;
    if env.v != PROTOCOL_VERSION {
        return Err(DecodeError::Version { got: env.v });
    }
    Ok(env)
}

/// Encodes an envelope for sending.
///
/// # Errors
/// When `body` cannot be serialised; never for the message types here,
/// which hold no maps with non-string keys.
pub fn encode<B: Serialize>(id: u64, re: Option<u64>, body: &B) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct Out<'a, B> {
        v: u32,
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<u64>,
        body: &'a B,
    }
    serde_json::to_string(&Out {
        v: PROTOCOL_VERSION,
        id,
        re,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_version_check() {
        let text = encode(
            3,
            Some(2),
            &AgentMessage::Heartbeat(Heartbeat { sent_at_ms: 5 }),
        )
        .unwrap();
        let env: Envelope<AgentMessage> = decode(&text).unwrap();
        assert_eq!((env.id, env.re), (3, Some(2)));
        assert!(matches!(
            env.body,
            AgentMessage::Heartbeat(Heartbeat { sent_at_ms: 5 })
        ));

        let future = text.replace("\"v\":1", "\"v\":99");
        assert!(matches!(
            decode::<AgentMessage>(&future),
            Err(DecodeError::Version { got: 99 })
        ));
        assert!(decode::<AgentMessage>("{\"v\":1,\"id\":1,\"body\":{\"type\":\"nope\"}}").is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(s in ".{0,400}") {
            let _ = decode::<AgentMessage>(&s);
            let _ = decode::<CoordinatorMessage>(&s);
        }
    }
}
