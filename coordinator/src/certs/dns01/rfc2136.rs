//! RFC 2136 dynamic updates signed with TSIG (RFC 8945), and plain TXT
//! queries, over TCP to the zone's primary (RFC 2136 allows TCP, and it
//! spares truncation and retries). Each exchange has a deadline.

use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, update_message};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType, TSigner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::Dns01Settings;

/// The TTL of challenge records: short, they live for one validation.
pub(super) const CHALLENGE_TTL: u32 = 60;
/// The clock difference the server may see in our signatures (RFC 8945
/// recommends 300 s).
const FUDGE: u16 = 300;

/// Why an update or a query failed; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Dns01Error {
    #[error(
        "{name} is not in zone {zone} ([acme.dns01] zone): set zone to one that holds it, or upload a certificate for it"
    )]
    OutsideZone { name: String, zone: String },
    #[error(
        "cannot reach the DNS server {server}: {error}: check [acme.dns01] server, and that the server accepts DNS over TCP"
    )]
    Unreachable { server: String, error: String },
    #[error(
        "the DNS server {server} did not answer the {what} within {}: check [acme.dns01] server", humantime::format_duration(*.wait)
    )]
    Timeout {
        server: String,
        what: &'static str,
        wait: Duration,
    },
    #[error(
        "the DNS server refused the update: check that key {key} may update zone {zone} (BIND: allow-update {{ key \"{key}\"; }}; or an update-policy grant)"
    )]
    Refused { key: String, zone: String },
    #[error(
        "the DNS server does not know key {key} ({algorithm}): check [acme.dns01] key_name and algorithm against the key the server has"
    )]
    BadKey { key: String, algorithm: String },
    #[error(
        "the DNS server says the update's signature is wrong: check that [acme.dns01] secret_file holds the secret of key {key}"
    )]
    BadSig { key: String },
    #[error(
        "the DNS server says the update was signed at a wrong time: this host's clock and the server's differ by more than {FUDGE} s; synchronise them (NTP)"
    )]
    BadTime,
    #[error(
        "the DNS server {server} is not authoritative for zone {zone}: check [acme.dns01] zone, and that server is the zone's primary"
    )]
    NotAuth { server: String, zone: String },
    #[error("the DNS server answered the {what} with {rcode}")]
    Rcode { what: &'static str, rcode: String },
    #[error(
        "the DNS server's answer to the update is not signed by key {key} ({problem}): check that [acme.dns01] secret_file holds the key's secret and that server is the zone's primary"
    )]
    Unsigned { key: String, problem: String },
    #[error("the DNS server's answer cannot be read: {0}")]
    Malformed(String),
    #[error(
        "the DNS server {server} did not serve the TXT record {name} within {}: check that it is the primary of zone {zone}, or raise [acme.dns01] propagation_timeout", humantime::format_duration(*.wait)
    )]
    NotVisible {
        server: String,
        name: String,
        zone: String,
        wait: Duration,
    },
}

/// A name as people write it in configs: without the trailing dot.
pub(super) fn shown(name: &Name) -> String {
    let text = name.to_string();
    text.strip_suffix('.')
        .map_or_else(|| text.clone(), str::to_owned)
}

/// `_acme-challenge.<domain>.` for a domain (a wildcard's `*.` left
/// out), checked to be in the configured zone.
pub(crate) fn challenge_name(settings: &Dns01Settings, domain: &str) -> Result<Name, Dns01Error> {
    let base = domain.strip_prefix("*.").unwrap_or(domain);
    let outside = || Dns01Error::OutsideZone {
        name: domain.to_owned(),
        zone: shown(&settings.zone),
    };
    let name = super::settings::fqdn(&format!("_acme-challenge.{base}")).map_err(|_| outside())?;
    if !settings.zone.zone_of(&name) {
        return Err(outside());
    }
    Ok(name)
}

/// The TXT record set `name 60 TXT "value"`.
fn txt_set(name: &Name, value: &str) -> RecordSet {
    let record = Record::from_rdata(
        name.clone(),
        CHALLENGE_TTL,
        RData::TXT(TXT::new(vec![value.to_owned()])),
    );
    RecordSet::from(record)
}

/// The update adding `name 60 TXT "value"` (to the records there).
pub(super) fn add_message(settings: &Dns01Settings, name: &Name, value: &str) -> Message {
    update_message::append(txt_set(name, value), settings.zone.clone(), false, false)
}

/// The update deleting `name TXT "value"` (and no other TXT record).
pub(super) fn delete_message(settings: &Dns01Settings, name: &Name, value: &str) -> Message {
    update_message::delete_by_rdata(txt_set(name, value), settings.zone.clone(), false)
}

/// The signer for the configured key.
fn signer(settings: &Dns01Settings) -> Result<TSigner, Dns01Error> {
    TSigner::new(
        settings.secret.bytes().to_vec(),
        settings.algorithm.clone(),
        settings.key_name.clone(),
        FUDGE,
    )
    .map_err(|e| Dns01Error::Malformed(e.to_string()))
}

/// The seconds since the epoch, as TSIG counts time.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs `message` at `time` and encodes it; returns the bytes and the
/// verifier of the answer.
pub(super) fn sign(
    settings: &Dns01Settings,
    message: &mut Message,
    time: u64,
) -> Result<(Vec<u8>, hickory_proto::rr::TSigVerifier), Dns01Error> {
    let verifier = message
        .finalize(&signer(settings)?, time)
        .map_err(|e| Dns01Error::Malformed(e.to_string()))?
        .ok_or_else(|| Dns01Error::Malformed("the update could not be signed".into()))?;
    let bytes = message
        .to_vec()
        .map_err(|e| Dns01Error::Malformed(e.to_string()))?;
    Ok((bytes, verifier))
}

/// Sends a signed update and checks its answer: NOERROR, signed by the
/// same key.
pub(super) async fn update(
    settings: &Dns01Settings,
    mut message: Message,
) -> Result<(), Dns01Error> {
    let (bytes, mut verifier) = sign(settings, &mut message, unix_now())?;
    let answer = exchange(settings, &bytes, "update").await?;
    check_update_answer(settings, message.id, &answer, &mut verifier)
}

/// What an answer to a signed update says (see [`Dns01Error`]).
pub(super) fn check_update_answer(
    settings: &Dns01Settings,
    id: u16,
    answer: &[u8],
    verifier: &mut hickory_proto::rr::TSigVerifier,
) -> Result<(), Dns01Error> {
    let parsed = Message::from_vec(answer).map_err(|e| Dns01Error::Malformed(e.to_string()))?;
    if parsed.id != id || parsed.message_type != MessageType::Response {
        return Err(Dns01Error::Malformed(
            "the answer is not for the update sent".into(),
        ));
    }
    let key = shown(&settings.key_name);
    let zone = shown(&settings.zone);
    let tsig_error = parsed.signature().and_then(|s| s.data.error);
    match (parsed.response_code, tsig_error) {
        (_, Some(TsigError::BadKey)) => {
            return Err(Dns01Error::BadKey {
                key,
                algorithm: settings.algorithm.to_string(),
            });
        }
        (_, Some(TsigError::BadSig)) => return Err(Dns01Error::BadSig { key }),
        (_, Some(TsigError::BadTime)) => return Err(Dns01Error::BadTime),
        (ResponseCode::NoError, _) => {}
        (ResponseCode::Refused, _) => return Err(Dns01Error::Refused { key, zone }),
        (ResponseCode::NotAuth, _) => {
            return Err(Dns01Error::NotAuth {
                server: settings.server.clone(),
                zone,
            });
        }
        (ResponseCode::NotZone, _) => {
            return Err(Dns01Error::OutsideZone {
                name: "the challenge record".into(),
                zone,
            });
        }
        (code, _) => {
            return Err(Dns01Error::Rcode {
                what: "update",
                rcode: code.to_string(),
            });
        }
    }
    if parsed.signature().is_none() {
        return Err(Dns01Error::Unsigned {
            key,
            problem: "no TSIG record".into(),
        });
    }
    verifier
        .verify(answer)
        .map(|_| ())
        .map_err(|e| Dns01Error::Unsigned {
            key,
            problem: e.to_string(),
        })
}

/// Whether the server answers `name TXT` with `value`.
pub(super) async fn serves_txt(
    settings: &Dns01Settings,
    name: &Name,
    value: &str,
) -> Result<bool, Dns01Error> {
    Ok(txt_values(settings, name)
        .await?
        .iter()
        .any(|v| v.as_slice() == value.as_bytes()))
}

/// The TXT values the server answers for `name`, asked directly (not
/// recursively); each value's strings joined.
pub(crate) async fn txt_values(
    settings: &Dns01Settings,
    name: &Name,
) -> Result<Vec<Vec<u8>>, Dns01Error> {
    let mut query = Message::query();
    query.metadata.op_code = OpCode::Query;
    query.metadata.recursion_desired = false;
    let mut q = Query::query(name.clone(), RecordType::TXT);
    q.set_query_class(DNSClass::IN);
    query.add_query(q);
    let bytes = query
        .to_vec()
        .map_err(|e| Dns01Error::Malformed(e.to_string()))?;
    let answer = exchange(settings, &bytes, "TXT query").await?;
    let parsed = Message::from_vec(&answer).map_err(|e| Dns01Error::Malformed(e.to_string()))?;
    if parsed.id != query.id {
        return Err(Dns01Error::Malformed(
            "the answer is not for the query sent".into(),
        ));
    }
    match parsed.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        ResponseCode::Refused | ResponseCode::NotAuth => {
            return Err(Dns01Error::NotAuth {
                server: settings.server.clone(),
                zone: shown(&settings.zone),
            });
        }
        code => {
            return Err(Dns01Error::Rcode {
                what: "TXT query",
                rcode: code.to_string(),
            });
        }
    }
    Ok(parsed
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.txt_data.concat()),
            _ => None,
        })
        .collect())
}

/// One exchange over TCP (two-byte length framing), within the
/// settings' deadline.
async fn exchange(
    settings: &Dns01Settings,
    request: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, Dns01Error> {
    let server = settings.server.clone();
    let wait = settings.exchange_timeout;
    let unreachable = |error: std::io::Error| Dns01Error::Unreachable {
        server: server.clone(),
        error: error.to_string(),
    };
    let run = async {
        let mut stream = TcpStream::connect(&settings.server)
            .await
            .map_err(unreachable)?;
        let len = u16::try_from(request.len())
            .map_err(|_| Dns01Error::Malformed("the message is too long".into()))?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(request);
        stream.write_all(&framed).await.map_err(unreachable)?;
        let len = stream.read_u16().await.map_err(unreachable)?;
        let mut answer = vec![0; usize::from(len)];
        stream.read_exact(&mut answer).await.map_err(unreachable)?;
        Ok(answer)
    };
    tokio::time::timeout(wait, run)
        .await
        .unwrap_or(Err(Dns01Error::Timeout {
            server: settings.server.clone(),
            what,
            wait,
        }))
}
