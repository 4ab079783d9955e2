//! One query packet in, what to do with it out: the wire side of
//! [`Records::answer`] (hickory's codec), with no sockets in it.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use skiff_shared::sections::dns::{
    Answer, DEFAULT_TTL_SECS, QueryKind, Question, RecordData, Records, ZONE,
};

/// The largest UDP answer without EDNS (RFC 1035).
const UDP_PLAIN_MAX: usize = 512;
/// The largest UDP answer we send whatever EDNS says (RFC 9715's advice).
const UDP_EDNS_MAX: u16 = 1232;

/// What a packet gets.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: ask upstream, then answer this request.
    Forward(Box<Message>),
    /// Not a query that could be parsed: dropped, counted malformed.
    Malformed,
}

/// Decides what `packet` from `from` gets. Returns the outcome and whether
/// it was refused (the source is not one the records know).
pub fn handle(
    records: &Records,
    packet: &[u8],
    from: IpAddr,
    rotation: u64,
    udp: bool,
) -> (Outcome, bool) {
    let Ok(request) = Message::from_vec(packet) else {
        return (Outcome::Malformed, false);
    };
    if request.metadata.message_type != MessageType::Query {
        return (Outcome::Malformed, false);
    }
    let [query] = request.queries.as_slice() else {
        return (
            Outcome::Reply(encode(
                &error(&request, ResponseCode::FormErr),
                &request,
                udp,
            )),
            false,
        );
    };
    if request.metadata.op_code != OpCode::Query {
        return (
            Outcome::Reply(encode(
                &error(&request, ResponseCode::NotImp),
                &request,
                udp,
            )),
            false,
        );
    }
    let kind = match query.query_type() {
        RecordType::A => QueryKind::A,
        RecordType::AAAA => QueryKind::Aaaa,
        RecordType::SRV => QueryKind::Srv,
        _ => QueryKind::Other,
    };
    let ascii = query.name().to_ascii();
    let answer = if query.query_class() == DNSClass::IN {
        records.answer(&Question { name: &ascii, kind }, from, rotation)
    } else if records.knows(from) {
        // Other classes (CHAOS `version.bind`, ...): not served, not
        // forwarded (the forwarder asks in IN).
        return (
            Outcome::Reply(encode(
                &error(&request, ResponseCode::NotImp),
                &request,
                udp,
            )),
            false,
        );
    } else {
        Answer::Refused
    };
    let mut response = response(&request);
    match answer {
        Answer::Refused => {
            response.metadata.response_code = ResponseCode::Refused;
            return (Outcome::Reply(encode(&response, &request, udp)), true);
        }
        Answer::Forward => return (Outcome::Forward(Box::new(request)), false),
        Answer::NxDomain => {
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
            add_soa(&mut response, &ascii, DEFAULT_TTL_SECS);
        }
        Answer::NoData { ttl } => {
            response.metadata.authoritative = true;
            add_soa(&mut response, &ascii, ttl);
        }
        Answer::Records(records) => {
            response.metadata.authoritative = true;
            add_records(&mut response, query.name(), &records);
        }
    }
    (Outcome::Reply(encode(&response, &request, udp)), false)
}

/// A response to `request` with its id, question and flags, no records.
pub fn response(request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(UDP_EDNS_MAX);
        response.set_edns(edns);
    }
    response
}

/// An error response to `request`.
pub fn error(request: &Message, code: ResponseCode) -> Message {
    let mut r = response(request);
    r.metadata.response_code = code;
    r
}

/// The response's bytes; over UDP cut to what the client takes (the
/// truncated flag tells it to ask again over TCP).
pub fn encode(response: &Message, request: &Message, udp: bool) -> Vec<u8> {
    let bytes = match response.to_vec() {
        Ok(b) => b,
        Err(_) => return server_failure(request),
    };
    if !udp {
        return bytes;
    }
    let max = match &request.edns {
        Some(edns) => usize::from(edns.max_payload().clamp(512, UDP_EDNS_MAX)),
        None => UDP_PLAIN_MAX,
    };
    if bytes.len() <= max {
        return bytes;
    }
    response
        .truncate()
        .to_vec()
        .unwrap_or_else(|_| server_failure(request))
}

/// SERVFAIL for `request`, as bytes (the last resort).
pub fn server_failure(request: &Message) -> Vec<u8> {
    let mut r = Message::error_msg(
        request.metadata.id,
        request.metadata.op_code,
        ResponseCode::ServFail,
    );
    r.add_queries(request.queries.iter().cloned());
    r.to_vec().unwrap_or_default()
}

/// The records of an answer; SRV targets' addresses go to the additional
/// section, once each.
fn add_records(
    response: &mut Message,
    qname: &Name,
    records: &[skiff_shared::sections::dns::Record],
) {
    let mut additional: Vec<(Arc<str>, std::net::Ipv4Addr)> = Vec::new();
    for r in records {
        match &r.data {
            RecordData::A(ip) => {
                response.add_answer(Record::from_rdata(qname.clone(), r.ttl, RData::A(A(*ip))));
            }
            RecordData::Srv {
                priority,
                weight,
                port,
                target,
                address,
            } => {
                let Ok(mut name) = Name::from_ascii(&**target) else {
                    continue;
                };
                name.set_fqdn(true);
                response.add_answer(Record::from_rdata(
                    qname.clone(),
                    r.ttl,
                    RData::SRV(SRV::new(*priority, *weight, *port, name)),
                ));
                if !additional.iter().any(|(t, a)| t == target && a == address) {
                    additional.push((target.clone(), *address));
                }
            }
        }
    }
    let ttl = records.first().map_or(DEFAULT_TTL_SECS, |r| r.ttl);
    for (target, address) in additional {
        if let Ok(mut name) = Name::from_ascii(&*target) {
            name.set_fqdn(true);
            response.add_additional(Record::from_rdata(name, ttl, RData::A(A(address))));
        }
    }
}

/// The zone's SOA in the authority section of a negative answer (its
/// minimum is the negative TTL), for names of the zone only.
fn add_soa(response: &mut Message, qname: &str, ttl: u32) {
    let lower = qname.trim_end_matches('.').to_ascii_lowercase();
    if lower != ZONE && !lower.ends_with(&format!(".{ZONE}")) {
        return;
    }
    let (Ok(zone), Ok(mname), Ok(rname)) = (
        Name::from_ascii(format!("{ZONE}.")),
        Name::from_ascii(format!("ns.{ZONE}.")),
        Name::from_ascii(format!("hostmaster.{ZONE}.")),
    ) else {
        return;
    };
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, ttl);
    response.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
}

/// A forwarded query's request, asking for `Query` (for the forwarder).
pub fn question(request: &Message) -> Option<&Query> {
    request.queries.first()
}
