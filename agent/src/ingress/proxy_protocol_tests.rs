use std::time::Duration;

use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

use super::*;

const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Reads a header from `bytes` followed by the payload; returns the
/// result and what was left unread.
async fn parse(header: &[u8]) -> (Result<Option<SocketAddr>, Error>, Vec<u8>) {
    let input = [header, PAYLOAD].concat();
    let mut rest: &[u8] = &input;
    let got = read_header(&mut rest, soon()).await;
    (got, rest.to_vec())
}

fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | cmd);
    h.push(family);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn v2_inet(tlvs: &[u8]) -> Vec<u8> {
    let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1];
    body.extend_from_slice(&51234u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(tlvs);
    v2(1, 0x11, &body)
}

#[tokio::test]
async fn v1_gives_the_client_address_and_leaves_the_payload() {
    let (got, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n").await;
    assert_eq!(got.unwrap(), Some("192.0.2.7:51234".parse().unwrap()));
    assert_eq!(rest, PAYLOAD);
    let (got, rest) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 80\r\n").await;
    assert_eq!(got.unwrap(), Some("[2001:db8::7]:65535".parse().unwrap()));
    assert_eq!(rest, PAYLOAD);
    for unknown in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    ] {
        let (got, rest) = parse(unknown).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, PAYLOAD);
    }
}

#[tokio::test]
async fn v2_gives_the_client_address_and_leaves_the_payload() {
    let (got, rest) = parse(&v2_inet(&[])).await;
    assert_eq!(got.unwrap(), Some("192.0.2.7:51234".parse().unwrap()));
    assert_eq!(rest, PAYLOAD);
    // TLVs after the addresses are skipped whole.
    let (got, rest) = parse(&v2_inet(&[0x04, 0x00, 0x03, b'a', b'b', b'c'])).await;
    assert_eq!(got.unwrap(), Some("192.0.2.7:51234".parse().unwrap()));
    assert_eq!(rest, PAYLOAD);
    let mut six = Vec::new();
    six.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    six.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    six.extend_from_slice(&8443u16.to_be_bytes());
    six.extend_from_slice(&443u16.to_be_bytes());
    let (got, rest) = parse(&v2(1, 0x21, &six)).await;
    assert_eq!(got.unwrap(), Some("[2001:db8::7]:8443".parse().unwrap()));
    assert_eq!(rest, PAYLOAD);
    // LOCAL (a health check from the balancer), with or without addresses.
    for local in [v2(0, 0x00, &[]), v2(0, 0x11, &[1; 12])] {
        let (got, rest) = parse(&local).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(rest, PAYLOAD);
    }
    let (got, _) = parse(&v2(1, 0x00, &[])).await;
    assert_eq!(got.unwrap(), None, "UNSPEC: the connection's own address");
}

#[tokio::test]
async fn a_header_cut_short_is_truncated_at_every_length() {
    let headers = [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n".to_vec(),
        v2_inet(&[0x04, 0x00, 0x01, b'z']),
    ];
    for h in headers {
        for cut in 0..h.len() {
            let mut input: &[u8] = &h[..cut];
            let got = read_header(&mut input, soon()).await;
            assert!(
                matches!(got, Err(Error::Truncated)),
                "cut at {cut}: {got:?}"
            );
        }
    }
}

#[tokio::test]
async fn garbage_is_refused_with_a_clear_error() {
    let (got, _) = parse(b"").await;
    assert!(matches!(got, Err(Error::Missing)), "{got:?}");
    let e = got.unwrap_err().to_string();
    assert!(
        e.contains("proxy_protocol"),
        "the error names the setting: {e}"
    );
    for (input, want) in [
        (&b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n"[..], "TCP5"),
        (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "IPv4"),
        (b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n", "IPv6"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 70000 2\r\n", "ports"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "ports"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "PROXY TCP4|TCP6"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "PROXY TCP4|TCP6"),
    ] {
        let (got, _) = parse(input).await;
        let e = got.unwrap_err().to_string();
        assert!(e.contains(want), "{input:?}: {e}");
    }
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    let (got, _) = parse(&long).await;
    assert!(got.unwrap_err().to_string().contains("longer than 107"));
    let mut bad_version = v2_inet(&[]);
    bad_version[12] = 0x31;
    let (got, _) = parse(&bad_version).await;
    assert!(got.unwrap_err().to_string().contains("version 3"));
    let (got, _) = parse(&v2(2, 0x11, &[0; 12])).await;
    assert!(got.unwrap_err().to_string().contains("command 2"));
    let (got, _) = parse(&v2(1, 0x11, &[0; 8])).await;
    assert!(got.unwrap_err().to_string().contains("12 bytes"));
    let (got, _) = parse(&v2(1, 0x51, &[0; 12])).await;
    assert!(got.unwrap_err().to_string().contains("family 5"));
    let mut sig = v2_inet(&[]);
    sig[9] = b'X';
    let (got, _) = parse(&sig).await;
    assert!(matches!(got, Err(Error::Missing)), "{got:?}");
}

#[tokio::test]
async fn a_header_in_pieces_is_read_and_a_silent_client_times_out() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n";
    let writer = tokio::spawn(async move {
        for piece in header.chunks(5) {
            client.write_all(piece).await.unwrap();
            client.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        client.write_all(b"after").await.unwrap();
        client
    });
    let got = read_header(&mut server, soon()).await.unwrap();
    assert_eq!(got, Some("192.0.2.7:51234".parse().unwrap()));
    let _client = writer.await.unwrap();
    let mut after = [0u8; 5];
    server.read_exact(&mut after).await.unwrap();
    assert_eq!(&after, b"after");

    let (_quiet, mut server) = tokio::io::duplex(64);
    let got = read_header(&mut server, Instant::now() + Duration::from_millis(20)).await;
    assert!(matches!(got, Err(Error::Timeout)), "{got:?}");
}

proptest! {
    #[test]
    fn any_input_gives_an_answer_and_never_reads_past_a_header(input in prop::collection::vec(any::<u8>(), 0..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut rest: &[u8] = &input;
        let got = rt.block_on(read_header(&mut rest, soon()));
        if got.is_ok() {
            let used = input.len() - rest.len();
            let header = &input[..used];
            prop_assert!(header.ends_with(b"\r\n") || header.starts_with(&V2_SIGNATURE));
        }
    }
}
