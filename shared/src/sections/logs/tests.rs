use super::*;

fn sink(name: &str, url: &str, format: SinkFormat) -> SinkSpec {
    SinkSpec {
        name: name.into(),
        url: url.into(),
        format,
        ca_pem: None,
        buffer_bytes: 64 << 20,
        when_full: FullPolicy::Block,
    }
}

#[test]
fn urls_parse_with_default_ports() {
    let e = sink("a", "tcp://logs.example.com", SinkFormat::Syslog)
        .endpoint()
        .unwrap();
    assert_eq!(
        (e.transport, e.host.as_str(), e.port),
        (Transport::Tcp, "logs.example.com", 601)
    );
    let e = sink("a", "tls://10.0.0.1:7514", SinkFormat::Syslog)
        .endpoint()
        .unwrap();
    assert_eq!((e.transport, e.port), (Transport::Tls, 7514));
    let e = sink("a", "udp://[::1]", SinkFormat::Syslog)
        .endpoint()
        .unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.authority()),
        ("::1", 514, "[::1]:514".into())
    );
    let e = sink("a", "https://otel.example.com", SinkFormat::Otlp)
        .endpoint()
        .unwrap();
    assert_eq!((e.port, e.path.as_str()), (443, "/v1/logs"));
    let e = sink(
        "a",
        "http://127.0.0.1:3100/loki/api/v1/push?x=1",
        SinkFormat::JsonLines,
    )
    .endpoint()
    .unwrap();
    assert_eq!(e.path, "/loki/api/v1/push?x=1");
}

#[test]
fn bad_sinks_are_refused_naming_the_fix() {
    for (s, want) in [
        (
            sink("a", "logs.example.com:514", SinkFormat::Syslog),
            "has no scheme",
        ),
        (sink("a", "ftp://x", SinkFormat::Syslog), "unknown scheme"),
        (
            sink("a", "http://x", SinkFormat::Syslog),
            "format is syslog",
        ),
        (sink("a", "tcp://x", SinkFormat::Otlp), "not an HTTP URL"),
        (
            sink("a", "tcp://x:99999", SinkFormat::Syslog),
            "no valid host and port",
        ),
        (sink("a", "tcp://x:0", SinkFormat::Syslog), "port 0"),
        (
            sink("a", "tcp://bad host", SinkFormat::Syslog),
            "no valid host",
        ),
        (
            sink("a", "https://u:p@x", SinkFormat::JsonLines),
            "credentials",
        ),
        (sink("a", "tcp://x/path", SinkFormat::Syslog), "has a path"),
        (sink("A b", "tcp://x", SinkFormat::Syslog), "not valid"),
    ] {
        let err = s.check().unwrap_err().to_string();
        assert!(err.contains(want), "{:?}: {err}", s.url);
    }
    let mut s = sink("a", "tcp://x", SinkFormat::Syslog);
    s.ca_pem = Some("-----BEGIN CERTIFICATE-----".into());
    assert!(s.check().unwrap_err().to_string().contains("not tls://"));
    let mut s = sink("a", "tls://x", SinkFormat::Syslog);
    s.buffer_bytes = 10;
    assert!(s.check().unwrap_err().to_string().contains("between 1 MiB"));
    let twice = [
        sink("a", "tcp://x", SinkFormat::Syslog),
        sink("a", "udp://y", SinkFormat::Syslog),
    ];
    assert!(
        check_sinks(&twice)
            .unwrap_err()
            .to_string()
            .contains("named twice")
    );
}

#[test]
fn formats_and_policies_parse() {
    assert_eq!(
        "json-lines".parse::<SinkFormat>().unwrap(),
        SinkFormat::JsonLines
    );
    assert!(
        "gelf"
            .parse::<SinkFormat>()
            .unwrap_err()
            .contains("syslog, json_lines or otlp")
    );
    assert_eq!(
        "drop-oldest".parse::<FullPolicy>().unwrap(),
        FullPolicy::DropOldest
    );
    assert!("maybe".parse::<FullPolicy>().is_err());
}

#[test]
fn path_templates_are_checked() {
    assert!(FileSettings::default().check().is_ok());
    for (t, want) in [
        ("var/log/{container}.log", "absolute"),
        ("/var/log/{stack}/", "file name"),
        ("/var/log/../{container}", ".."),
        ("/var/log/{stack}.log", "{container}"),
        ("/var/log/{container}-{nope}.log", "knows only"),
        ("/var/log/{container", "not closed"),
    ] {
        let files = FileSettings {
            path_template: t.into(),
            ..FileSettings::default()
        };
        let err = files.check().unwrap_err().to_string();
        assert!(err.contains(want), "{t}: {err}");
    }
}

#[test]
fn a_stack_with_its_own_sinks_uses_only_those() {
    let mut section = LogsSection {
        host: "h".into(),
        files: FileSettings::default(),
        sinks: vec![sink("all", "udp://x", SinkFormat::Syslog)],
        stack_sinks: BTreeMap::new(),
    };
    section.stack_sinks.insert("quiet".into(), vec![]);
    assert_eq!(section.sinks_for("web").len(), 1);
    assert!(section.sinks_for("quiet").is_empty());
    assert!(section.check().is_ok());
}
