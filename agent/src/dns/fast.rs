//! The hot path: a plain query (one question of class IN, at most an EDNS
//! OPT record) for a name the records answer is read and answered here
//! straight from and into bytes, with no allocation but the answer's.
//! Anything else (forwarded names, other opcodes, odd packets) returns
//! `None` and takes [`super::reply::handle`], which gives the same answers
//! through hickory's codec: a property test holds both to that.

use std::net::IpAddr;

use skiff_shared::sections::dns::{
    Answer, DEFAULT_TTL_SECS, QueryKind, Question, RecordData, Records, ZONE,
};

const HEADER: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// The largest UDP answer without EDNS, and the most we send with it.
const UDP_PLAIN_MAX: usize = 512;
const UDP_EDNS_MAX: u16 = 1232;

/// A query this path can take.
struct Parsed<'p> {
    id: [u8; 2],
    /// RD and CD, to copy into the answer.
    rd: bool,
    cd: bool,
    /// The question's bytes as sent (name, type, class).
    question: &'p [u8],
    qtype: u16,
    /// The EDNS payload size, if the query had an OPT record.
    edns: Option<u16>,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads a plain query; its name (lower-cased, dotted, no trailing dot)
/// goes into `name`.
fn parse<'p>(p: &'p [u8], name: &mut [u8; 256]) -> Option<(Parsed<'p>, usize)> {
    let flags = u16_at(p, 2)?;
    // QR = 0, opcode 0 (QUERY); one question, no answers or authorities,
    // at most one additional (OPT).
    if flags & 0xF800 != 0 || u16_at(p, 4)? != 1 || u16_at(p, 6)? != 0 || u16_at(p, 8)? != 0 {
        return None;
    }
    let additionals = u16_at(p, 10)?;
    if additionals > 1 {
        return None;
    }
    let mut at = HEADER;
    let mut len = 0usize;
    loop {
        let l = usize::from(*p.get(at)?);
        at += 1;
        if l == 0 {
            break;
        }
        // No compression in a question's name; labels of 63 at most.
        if l > 63 || len + l + 1 > 254 {
            return None;
        }
        if len > 0 {
            *name.get_mut(len)? = b'.';
            len += 1;
        }
        for &b in p.get(at..at + l)? {
            // Plain host-name bytes only; the rest takes the slow path.
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            *name.get_mut(len)? = b.to_ascii_lowercase();
            len += 1;
        }
        at += l;
    }
    let qtype = u16_at(p, at)?;
    if u16_at(p, at + 2)? != CLASS_IN {
        return None;
    }
    let question = p.get(HEADER..at + 4)?;
    at += 4;
    let mut edns = None;
    if additionals == 1 {
        // OPT: root name, type 41, class = payload size, TTL, RDATA.
        if *p.get(at)? != 0 || u16_at(p, at + 1)? != TYPE_OPT {
            return None;
        }
        edns = Some(u16_at(p, at + 3)?);
        let rdlen = usize::from(u16_at(p, at + 9)?);
        at += 11 + rdlen;
    }
    if at != p.len() {
        return None;
    }
    let parsed = Parsed {
        id: [p[0], p[1]],
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
        question,
        qtype,
        edns,
    };
    Some((parsed, len))
}

/// The answer to `packet`, written into `out`, when this path can give
/// it; `None`: take the slow path. The bool says it was refused.
pub fn answer(
    records: &Records,
    packet: &[u8],
    from: IpAddr,
    rotation: u64,
    udp: bool,
    out: &mut Vec<u8>,
) -> Option<bool> {
    let mut buf = [0u8; 256];
    let (q, len) = parse(packet, &mut buf)?;
    let name = std::str::from_utf8(buf.get(..len)?).ok()?;
    let kind = match q.qtype {
        TYPE_A => QueryKind::A,
        TYPE_AAAA => QueryKind::Aaaa,
        TYPE_SRV => QueryKind::Srv,
        _ => QueryKind::Other,
    };
    let answer = records.answer(&Question { name, kind }, from, rotation);
    out.clear();
    let refused = matches!(answer, Answer::Refused);
    let (rcode, authoritative) = match &answer {
        Answer::Forward => return None,
        Answer::Refused => (5u8, false),
        Answer::NxDomain => (3, true),
        Answer::NoData { .. } | Answer::Records(_) => (0, true),
    };
    write(out, &q, rcode, authoritative, &answer, name);
    if udp {
        let max = match q.edns {
            Some(size) => usize::from(size.clamp(512, UDP_EDNS_MAX)),
            None => UDP_PLAIN_MAX,
        };
        if out.len() > max {
            // The header and question alone, flagged truncated: the
            // client asks again over TCP.
            out.clear();
            write(out, &q, rcode, authoritative, &Answer::Forward, "");
            out[2] |= 0x02;
        }
    }
    Some(refused)
}

fn write(
    out: &mut Vec<u8>,
    q: &Parsed<'_>,
    rcode: u8,
    authoritative: bool,
    answer: &Answer,
    name: &str,
) {
    out.extend_from_slice(&q.id);
    let mut flags: u16 = 0x8000 | 0x0080; // QR, RA
    if authoritative {
        flags |= 0x0400;
    }
    if q.rd {
        flags |= 0x0100;
    }
    if q.cd {
        flags |= 0x0010;
    }
    flags |= u16::from(rcode);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0; 6]); // counts, set below
    out.extend_from_slice(q.question);
    let (mut answers, mut authorities, mut additionals) = (0u16, 0u16, 0u16);
    match answer {
        Answer::Records(records) => {
            let mut targets: Vec<(&str, std::net::Ipv4Addr, u32)> = Vec::new();
            for r in records {
                // The owner: a pointer to the question's name.
                out.extend_from_slice(&0xC00Cu16.to_be_bytes());
                match &r.data {
                    RecordData::A(ip) => {
                        rr_head(out, TYPE_A, r.ttl, 4);
                        out.extend_from_slice(&ip.octets());
                    }
                    RecordData::Srv {
                        priority,
                        weight,
                        port,
                        target,
                        address,
                    } => {
                        let rdlen = 6 + name_len(target);
                        rr_head(out, TYPE_SRV, r.ttl, rdlen);
                        out.extend_from_slice(&priority.to_be_bytes());
                        out.extend_from_slice(&weight.to_be_bytes());
                        out.extend_from_slice(&port.to_be_bytes());
                        put_name(out, target);
                        if !targets
                            .iter()
                            .any(|(t, a, _)| *t == &**target && a == address)
                        {
                            targets.push((target, *address, r.ttl));
                        }
                    }
                }
                answers = answers.saturating_add(1);
            }
            for (target, address, ttl) in targets {
                put_name(out, target);
                rr_head(out, TYPE_A, ttl, 4);
                out.extend_from_slice(&address.octets());
                additionals = additionals.saturating_add(1);
            }
        }
        Answer::NoData { ttl } if in_zone(name) => {
            soa(out, *ttl);
            authorities = 1;
        }
        Answer::NxDomain if in_zone(name) => {
            soa(out, DEFAULT_TTL_SECS);
            authorities = 1;
        }
        _ => {}
    }
    if q.edns.is_some() {
        opt(out);
        additionals = additionals.saturating_add(1);
    }
    out[6..8].copy_from_slice(&answers.to_be_bytes());
    out[8..10].copy_from_slice(&authorities.to_be_bytes());
    out[10..12].copy_from_slice(&additionals.to_be_bytes());
}

fn in_zone(name: &str) -> bool {
    name == ZONE
        || name
            .strip_suffix(ZONE)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Type, class IN, TTL and RDATA length of a record.
fn rr_head(out: &mut Vec<u8>, kind: u16, ttl: u32, rdlen: usize) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&u16::try_from(rdlen).unwrap_or(0).to_be_bytes());
}

/// A dotted name's wire length.
fn name_len(name: &str) -> usize {
    name.split('.')
        .filter(|l| !l.is_empty())
        .map(|l| l.len().min(63) + 1)
        .sum::<usize>()
        + 1
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let label = label.get(..label.len().min(63)).unwrap_or("");
        out.push(u8::try_from(label.len()).unwrap_or(0));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The zone's SOA (its minimum is the negative TTL), as `reply` writes it.
fn soa(out: &mut Vec<u8>, ttl: u32) {
    put_name(out, ZONE);
    let mname = format!("ns.{ZONE}");
    let rname = format!("hostmaster.{ZONE}");
    rr_head(out, TYPE_SOA, ttl, name_len(&mname) + name_len(&rname) + 20);
    put_name(out, &mname);
    put_name(out, &rname);
    for v in [1u32, 3600, 600, 86400, ttl] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Our OPT record: payload size, no flags.
fn opt(out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&UDP_EDNS_MAX.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use proptest::prelude::*;

    use super::*;
    use crate::dns::reply::{self, Outcome};
    use skiff_shared::sections::dns::{
        DnsSection, NodeRecord, Policy, PortRecord, Protocol, Replica, ReplicaAddress,
        ServiceRecords,
    };

    fn section() -> DnsSection {
        let rep = |slot: u32, last: u8| Replica {
            slot,
            node: "n1".into(),
            zone: None,
            release: 1,
            addresses: vec![ReplicaAddress {
                network: 1,
                ip: std::net::Ipv4Addr::new(127, 0, 1, last),
            }],
            published: true,
        };
        DnsSection {
            generation: 1,
            node: "n1".into(),
            zone: None,
            listen: vec![],
            services: vec![ServiceRecords {
                stack: "shop".into(),
                service: "web".into(),
                policy: Policy::RoundRobin,
                ttl_secs: 5,
                ports: vec![PortRecord {
                    port: 80,
                    protocol: Protocol::Tcp,
                }],
                replicas: (1..=60).map(|n| rep(n, n as u8)).collect(),
            }],
            nodes: vec![NodeRecord {
                name: "n1".into(),
                address: std::net::Ipv4Addr::new(100, 64, 0, 1),
            }],
        }
    }

    fn query(name: &str, kind: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    proptest! {
        #[test]
        fn the_fast_path_answers_as_the_codec_does(
            name in prop_oneof![
                Just("web.shop.skiff."), Just("WEB.shop.SKIFF"), Just("web."), Just("tasks.web."),
                Just("3.web.shop.skiff."), Just("_80._tcp.web.shop.skiff."), Just("n1.nodes.skiff."),
                Just("nope.shop.skiff."), Just("skiff."), Just("shop.skiff."), Just("example.com."),
            ],
            kind in prop_oneof![Just(RecordType::A), Just(RecordType::AAAA), Just(RecordType::SRV), Just(RecordType::TXT)],
            edns in proptest::option::of(prop_oneof![Just(512u16), Just(1232), Just(4096)]),
            source in prop_oneof![Just("127.0.1.2"), Just("127.0.0.1"), Just("192.0.2.1")],
            rotation in 0u64..100,
            udp in any::<bool>(),
        ) {
            let records = Records::new(&section());
            let packet = query(name, kind, edns);
            let from: IpAddr = source.parse().unwrap();
            let (slow, slow_refused) = reply::handle(&records, &packet, from, rotation, udp);
            let mut out = Vec::new();
            let fast = answer(&records, &packet, from, rotation, udp, &mut out);
            match (slow, fast) {
                (Outcome::Forward(_), None) => {}
                (Outcome::Reply(bytes), Some(refused)) => {
                    prop_assert_eq!(refused, slow_refused);
                    let (a, b) = (Message::from_vec(&bytes).unwrap(), Message::from_vec(&out).unwrap());
                    prop_assert_eq!(a.metadata, b.metadata);
                    prop_assert_eq!(&a.queries, &b.queries);
                    prop_assert_eq!(&a.answers, &b.answers);
                    prop_assert_eq!(&a.authorities, &b.authorities);
                    prop_assert_eq!(&a.additionals, &b.additionals);
                    prop_assert_eq!(a.edns.map(|e| e.max_payload()), b.edns.map(|e| e.max_payload()));
                }
                (slow, fast) => prop_assert!(false, "slow {slow:?}, fast {fast:?}"),
            }
        }

        #[test]
        fn the_fast_path_never_panics(packet in proptest::collection::vec(any::<u8>(), 0..300)) {
            let records = Records::new(&section());
            let mut out = Vec::new();
            let _ = answer(&records, &packet, "127.0.1.2".parse().unwrap(), 0, true, &mut out);
        }
    }
}
