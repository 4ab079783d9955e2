use super::*;

pub(crate) fn spec(service: &str, slot: u32) -> ContainerSpec {
    ContainerSpec {
        revision: 1,
        command: Some(vec!["sleep".into(), "1000".into()]),
        ..ContainerSpec::new("shop", service, slot, "skiff-test/busybox:1")
    }
}

/// A spec with every kind of field set. Its fingerprint is pinned: a
/// change here means every agent upgrade would replace every container
/// in the fleet. New fields must be skipped when empty or default.
fn representative() -> ContainerSpec {
    let mut s = spec("web", 2);
    s.revision = 9;
    s.image = "registry.example.com/shop/web@sha256:0123456789abcdef".into();
    s.entrypoint = Some(vec!["/entry".into()]);
    s.env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two".into())]);
    s.labels = BTreeMap::from([("team".into(), "shop".into())]);
    s.ports = vec![PortSpec {
        target: 8080,
        published: 18080,
        protocol: Protocol::Tcp,
        host_ip: Some("127.0.0.1".into()),
    }];
    s.mounts = vec![MountSpec {
        kind: MountKind::Volume,
        source: "shop_data".into(),
        target: "/data".into(),
        read_only: false,
    }];
    s.healthcheck = Some(HealthSpec {
        test: vec!["CMD".into(), "true".into()],
        interval_ms: 2000,
        timeout_ms: 1000,
        retries: 3,
        start_period_ms: 0,
    });
    s.restart = RestartSpec::OnFailure { max_attempts: 3 };
    s.resources = ResourceSpec {
        cpu_limit_millis: Some(500),
        memory_limit_bytes: Some(64 << 20),
        memory_reservation_bytes: None,
        pids_limit: None,
    };
    s.stop_grace_ms = Some(5000);
    s.user = Some("1000".into());
    s.working_dir = Some("/srv".into());
    // As planned before secret versions had ids: an agent upgrade
    // keeps such containers too.
    s.secrets = vec![SecretMount {
        name: "key".into(),
        version: 2,
        digest: "d".repeat(64),
        id: String::new(),
        check: String::new(),
        target: "/run/secrets/key".into(),
    }];
    s.probe = Some(ProbeSpec {
        http_path: Some("/ok".into()),
        port: 8080,
        interval_ms: 1000,
        timeout_ms: 500,
        retries: 2,
        start_period_ms: 0,
    });
    s.configs = vec![ConfigFile {
        name: "conf".into(),
        target: "/etc/app.conf".into(),
        content: "x=1\n".into(),
        mode: 0o444,
        uid: 0,
        gid: 0,
    }];
    s.networks = vec![NetworkAttach {
        name: "default".into(),
        external: false,
        internal: false,
        aliases: vec!["web".into()],
    }];
    s
}

#[test]
fn the_fingerprint_of_a_representative_spec_is_pinned() {
    assert_eq!(representative().fingerprint(), "0f03b5d92924d4f8439a62aa");
    let mut minimal = spec("web", 1);
    minimal.command = None;
    assert_eq!(minimal.fingerprint(), "1270b11f3d57d74f3cfd9863");
}

fn keyed_mount(value: &[u8]) -> SecretMount {
    let id = secret_id().unwrap();
    SecretMount {
        name: "db".into(),
        version: 3,
        digest: String::new(),
        check: secret_check(&id, value),
        id,
        target: "/run/secrets/db".into(),
    }
}

#[test]
fn secret_mounts_carry_a_random_id_and_a_keyed_check_not_a_hash() {
    let value = b"hunter2";
    let m = keyed_mount(value);
    assert_eq!(m.id.len(), SECRET_ID_HEX);
    assert_ne!(m.id, keyed_mount(value).id, "random per version");
    assert_ne!(m.check, keyed_mount(value).check, "keyed with the id");
    assert_eq!(m.file_name(), m.id);
    m.verify(value).unwrap();
    assert_eq!(
        m.verify(b"hunter3"),
        Err(SecretMountError::Mismatch {
            name: "db".into(),
            version: 3
        })
    );
    let shown = format!("{m:?}");
    assert!(
        shown.contains(&m.id) && !shown.contains(&m.check),
        "{shown}"
    );
    let json = serde_json::to_string(&m).unwrap();
    assert!(!json.contains("digest"), "{json}");
    assert!(!json.contains(&hex::encode(crate::sha256(value))), "{json}");
    assert_eq!(serde_json::from_str::<SecretMount>(&json).unwrap(), m);

    // Plans made before ids still verify, by digest.
    let legacy = SecretMount {
        digest: hex::encode(crate::sha256(value)),
        id: String::new(),
        check: String::new(),
        ..m.clone()
    };
    assert_eq!(legacy.file_name(), legacy.digest);
    legacy.verify(value).unwrap();
    assert!(legacy.verify(b"other").is_err());

    // Nothing else names a file.
    for (id, check) in [
        ("../../etc/passwd", m.check.as_str()),
        (&m.id[..31], m.check.as_str()),
        (&m.id.to_uppercase(), m.check.as_str()),
        (m.id.as_str(), ""),
    ] {
        let bad = SecretMount {
            id: id.to_owned(),
            check: check.to_owned(),
            ..m.clone()
        };
        assert!(bad.validate().is_err(), "{id} {check}");
        assert!(bad.verify(value).is_err());
    }
    assert!(is_secret_file_name(&m.id) && is_secret_file_name(&legacy.digest));
    assert!(!is_secret_file_name("..") && !is_secret_file_name(".tmp"));
}

#[test]
fn a_secret_check_is_not_in_the_fingerprint_but_its_id_is() {
    let mut a = spec("web", 1);
    a.secrets = vec![keyed_mount(b"one")];
    let mut other_check = a.clone();
    other_check.secrets[0].check = secret_check(&a.secrets[0].id, b"two");
    assert_eq!(a.fingerprint(), other_check.fingerprint());
    let mut other_version = a.clone();
    other_version.secrets[0].id = secret_id().unwrap();
    assert_ne!(a.fingerprint(), other_version.fingerprint());
}

#[test]
fn delivered_values_read_the_old_field_and_never_show_the_value() {
    let v: SecretValue = serde_json::from_str(r#"{"digest":"ab","value":"aHVudGVyMg=="}"#).unwrap();
    assert_eq!(v.id, "ab");
    let shown = format!("{v:?}");
    assert!(
        shown.contains("ab") && !shown.contains("aHVudGVyMg"),
        "{shown}"
    );
}

#[test]
fn runtime_settings_are_part_of_the_spec_and_left_out_when_default() {
    let plain = spec("web", 1);
    let json = serde_json::to_string(&plain).unwrap();
    assert!(
        !json.contains("runtime") && !json.contains("pids_limit"),
        "{json}"
    );
    let mut hardened = plain.clone();
    hardened.runtime.cap_drop = vec!["ALL".into()];
    hardened.runtime.ulimits.insert(
        "nofile".into(),
        Ulimit {
            soft: 65536,
            hard: 65536,
        },
    );
    hardened.runtime.ipc = Some(IpcMode::Private);
    hardened.resources.pids_limit = Some(100);
    assert_ne!(plain.fingerprint(), hardened.fingerprint());
    let json = serde_json::to_string(&hardened).unwrap();
    assert_eq!(
        serde_json::from_str::<ContainerSpec>(&json).unwrap(),
        hardened
    );
}

#[test]
fn fingerprint_follows_the_spec() {
    let a = spec("web", 1);
    assert_eq!(a.fingerprint(), a.clone().fingerprint());
    let mut b = a.clone();
    b.env.insert("A".into(), "1".into());
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.name(), "shop.web.1");
    assert_eq!(a.key(), "shop.web.1@1");
    let mut c = a.clone();
    c.revision = 7;
    assert_eq!(
        a.fingerprint(),
        c.fingerprint(),
        "the revision is not part of what runs"
    );
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<ContainerSpec>(&json).unwrap(), a);
}
