//! TSIG against vectors made by another implementation (dnspython 2.9:
//! an update signed at a fixed time, and the signed answer to it), and
//! the checks of `[acme.dns01]`.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use base64::Engine as _;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;

use super::rfc2136::{add_message, challenge_name, check_update_answer, delete_message, sign};
use super::*;
use crate::config::ConfigError;

/// The key of the vectors: `skiff-acme.`, hmac-sha256, bytes 0..32.
const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// dnspython: `UpdateMessage("skiff.test.", id=0x1234)`, adding
/// `_acme-challenge.app.skiff.test. 60 TXT "abc123"`, signed with the key
/// at time 1700000000, fudge 300.
const REQUEST: &str = "12342800000100000001000105736b696666047465737400000600010f5f61636d652d6368616c6c656e676503617070c00c001000010000003c0007066162633132330a736b6966662d61636d650000fa00ff00000000003d0b686d61632d7368613235360000006553f100012c00206a55d6ba393d7e5c0498210e597a08ea8c9f55fc830d8e3e58324fbc0554fb73123400000000";
/// dnspython: `make_response` to that request, signed with the key.
const RESPONSE: &str = "1234a800000100000000000105736b696666047465737400000600010a736b6966662d61636d650000fa00ff00000000003d0b686d61632d7368613235360000006553f100012c002031a9bbfb7d24a52d86af6b819ea68dde85f2e41f505903bca605c46416230366123400000000";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn settings() -> Dns01Settings {
    Dns01Settings {
        server: "127.0.0.1:53".into(),
        zone: settings::fqdn("skiff.test").unwrap(),
        key_name: settings::fqdn("skiff-acme").unwrap(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret: TsigSecret::new(
            base64::engine::general_purpose::STANDARD
                .decode(SECRET)
                .unwrap(),
        ),
        propagation_timeout: Duration::from_secs(5),
        exchange_timeout: Duration::from_secs(5),
    }
}

/// The vector's update, signed here at the vector's time.
fn signed_request() -> (Message, Vec<u8>, hickory_proto::rr::TSigVerifier) {
    let s = settings();
    let name = challenge_name(&s, "*.app.skiff.test").unwrap();
    let mut message = add_message(&s, &name, "abc123");
    message.metadata.id = 0x1234;
    let (bytes, verifier) = sign(&s, &mut message, 1_700_000_000).unwrap();
    (message, bytes, verifier)
}

#[test]
fn an_update_is_signed_byte_for_byte_as_another_implementation_signs_it() {
    let (_, bytes, _) = signed_request();
    assert_eq!(hex(&bytes), REQUEST);
}

#[test]
fn a_signed_answer_from_another_implementation_verifies() {
    let (_, _, mut verifier) = signed_request();
    check_update_answer(&settings(), 0x1234, &unhex(RESPONSE), &mut verifier).unwrap();
}

#[test]
fn a_tampered_or_unsigned_answer_is_refused() {
    let (_, _, mut verifier) = signed_request();
    let mut tampered = unhex(RESPONSE);
    let at = tampered.len() - 10;
    tampered[at] ^= 1;
    let e = check_update_answer(&settings(), 0x1234, &tampered, &mut verifier).unwrap_err();
    assert!(matches!(e, Dns01Error::Unsigned { .. }), "{e}");

    let (_, _, mut verifier) = signed_request();
    let plain = Message::response(0x1234, OpCode::Update).to_vec().unwrap();
    let e = check_update_answer(&settings(), 0x1234, &plain, &mut verifier).unwrap_err();
    assert!(
        e.to_string().contains("not signed by key skiff-acme"),
        "{e}"
    );
}

#[test]
fn refused_and_not_authoritative_answers_say_what_to_fix() {
    for (code, says) in [
        (
            ResponseCode::Refused,
            "check that key skiff-acme may update zone skiff.test",
        ),
        (
            ResponseCode::NotAuth,
            "is not authoritative for zone skiff.test",
        ),
    ] {
        let (_, _, mut verifier) = signed_request();
        let mut answer = Message::response(0x1234, OpCode::Update);
        answer.metadata.response_code = code;
        let e = check_update_answer(
            &settings(),
            0x1234,
            &answer.to_vec().unwrap(),
            &mut verifier,
        )
        .unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn challenge_names_must_be_in_the_zone() {
    let s = settings();
    assert_eq!(
        challenge_name(&s, "*.app.skiff.test").unwrap().to_string(),
        "_acme-challenge.app.skiff.test."
    );
    assert_eq!(
        challenge_name(&s, "skiff.test").unwrap().to_string(),
        "_acme-challenge.skiff.test."
    );
    let e = challenge_name(&s, "*.example.com").unwrap_err();
    assert!(e.to_string().contains("not in zone skiff.test"), "{e}");
    // A deletion names the same record.
    let name = challenge_name(&s, "*.app.skiff.test").unwrap();
    let m = delete_message(&s, &name, "abc123");
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].name, name);
    assert_eq!(
        m.authorities[0].dns_class,
        hickory_proto::rr::DNSClass::NONE
    );
}

/// A config with a secret file of `mode` holding `text`.
fn config(dir: &std::path::Path, text: &str, mode: u32) -> Dns01Config {
    let path = dir.join("tsig.key");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    Dns01Config {
        server: Some("ns1.skiff.test".into()),
        zone: Some("skiff.test".into()),
        key_name: Some("skiff-acme".into()),
        algorithm: None,
        secret_file: Some(path),
        propagation_timeout: None,
    }
}

fn refused(c: &Dns01Config) -> (&'static str, String) {
    match c.settings() {
        Err(ConfigError::Invalid { key, message }) => (key, message),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn a_good_config_reads_a_plain_secret_or_a_tsig_keygen_clause() {
    let dir = tempfile::tempdir().unwrap();
    let s = config(dir.path(), &format!("{SECRET}\n"), 0o600)
        .settings()
        .unwrap();
    assert_eq!(s.server, "ns1.skiff.test:53");
    assert_eq!(s.zone.to_string(), "skiff.test.");
    assert_eq!(s.key_name.to_string(), "skiff-acme.");
    assert_eq!(s.algorithm, TsigAlgorithm::HmacSha256);
    assert_eq!(s.secret, settings().secret);
    assert_eq!(s.propagation_timeout, Duration::from_secs(120));
    assert!(
        !format!("{s:?}").contains(SECRET),
        "the secret is not printed"
    );

    let clause =
        format!("key \"skiff-acme\" {{\n\talgorithm hmac-sha512;\n\tsecret \"{SECRET}\";\n}};\n");
    let mut c = config(dir.path(), &clause, 0o400);
    c.algorithm = Some("HMAC-SHA512".into());
    c.server = Some("[::1]:5353".into());
    c.propagation_timeout = Some("30s".into());
    let s = c.settings().unwrap();
    assert_eq!(s.secret, settings().secret);
    assert_eq!(s.algorithm, TsigAlgorithm::HmacSha512);
    assert_eq!(s.server, "[::1]:5353");
    assert_eq!(s.propagation_timeout, Duration::from_secs(30));
}

#[test]
fn a_secret_file_others_may_read_is_refused_with_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let (key, message) = refused(&config(dir.path(), SECRET, 0o644));
    assert_eq!(key, "acme.dns01.secret_file");
    assert!(message.contains("mode 0644"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}

#[test]
fn missing_or_senseless_keys_are_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), SECRET, 0o600);

    let mut c = good.clone();
    c.key_name = None;
    let (key, message) = refused(&c);
    assert_eq!(key, "acme.dns01.key_name");
    assert!(message.contains("is not set"), "{message}");

    let mut c = good.clone();
    c.algorithm = Some("hmac-md5".into());
    let (key, message) = refused(&c);
    assert_eq!(key, "acme.dns01.algorithm");
    assert!(message.contains("use hmac-sha256"), "{message}");

    for server in [
        "ns1.skiff.test:0",
        "ns1.skiff.test:dns",
        "[::1",
        "a b:53",
        ":53",
    ] {
        let mut c = good.clone();
        c.server = Some(server.into());
        let (key, message) = refused(&c);
        assert_eq!(key, "acme.dns01.server", "{server}");
        assert!(message.contains("host:port"), "{message}");
    }

    let mut c = good.clone();
    c.zone = None;
    assert_eq!(refused(&c).0, "acme.dns01.zone");

    let mut c = good.clone();
    for wait in ["soon", "0s", "1h"] {
        c.propagation_timeout = Some(wait.into());
        assert_eq!(refused(&c).0, "acme.dns01.propagation_timeout", "{wait}");
    }

    let (key, message) = refused(&config(dir.path(), "not base64 !", 0o600));
    assert_eq!(key, "acme.dns01.secret_file");
    assert!(message.contains("no base64 secret"), "{message}");

    let mut c = good;
    c.secret_file = Some(dir.path().join("missing"));
    let (key, message) = refused(&c);
    assert_eq!(key, "acme.dns01.secret_file");
    assert!(message.contains("cannot be read"), "{message}");
}

/// The bytes of the vector's answer the MAC does not cover: the TSIG
/// RR's CLASS and TTL, which the MAC computation replaces by ANY and 0
/// (RFC 8945 §4.3.3) and nothing here reads.
const UNCOVERED: std::ops::Range<usize> = 42..48;
/// The bytes of the vector's answer the MAC covers in canonical (lower)
/// case: the TSIG RR's owner name (the key) and its algorithm name.
const CASELESS: [std::ops::Range<usize>; 2] = [28..40, 50..63];

/// The header's reserved Z bit (byte 3): hickory re-encodes the header
/// to verify the MAC, which drops it; nothing reads it.
const Z_BIT: u8 = 0x40;

/// `answer` as the MAC sees it: the letters of the caseless names
/// lowered, the Z bit cleared.
fn canonical(answer: &[u8]) -> Vec<u8> {
    let mut out = answer.to_vec();
    for range in CASELESS {
        out[range].make_ascii_lowercase();
    }
    out[3] &= !Z_BIT;
    out
}

proptest::proptest! {
    /// Whatever a server (or someone on the path) answers, the check
    /// says no without panicking, unless it is the signed answer.
    #[test]
    fn any_other_answer_is_refused_without_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        flips in proptest::collection::vec((0usize..200, 1u8..=255), 1..4),
    ) {
        let (_, _, mut verifier) = signed_request();
        proptest::prop_assert!(check_update_answer(&settings(), 0x1234, &bytes, &mut verifier).is_err());
        let mut answer = unhex(RESPONSE);
        for (at, flip) in flips {
            let mut at = at % answer.len();
            if UNCOVERED.contains(&at) {
                at = 0;
            }
            answer[at] ^= flip;
        }
        // Flips that cancel out, only change the case of a name the MAC
        // covers in lower case, or the Z bit, leave the signed answer.
        proptest::prop_assume!(canonical(&answer) != unhex(RESPONSE));
        let (_, _, mut verifier) = signed_request();
        proptest::prop_assert!(check_update_answer(&settings(), 0x1234, &answer, &mut verifier).is_err());
    }
}
