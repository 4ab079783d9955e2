use skiff_shared::sections::logs::Stream;

use super::*;

fn line(ts_ns: i64, text: &str) -> LogLine {
    LogLine {
        ts_ns,
        stream: Stream::Stdout,
        service: "web".into(),
        slot: 1,
        release: 3,
        line: text.into(),
    }
}

fn chunk(lines: Vec<LogLine>, history_done: bool, end: bool) -> Result<serde_json::Value, String> {
    Ok(serde_json::to_value(LogChunk {
        lines,
        history_done,
        end,
        ..LogChunk::default()
    })
    .unwrap())
}

async fn collect(mut rx: mpsc::Receiver<LogEntry>) -> Vec<LogEntry> {
    let mut out = Vec::new();
    while let Some(e) = rx.recv().await {
        out.push(e);
    }
    out
}

fn texts(entries: &[LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match (&e.line, &e.error, e.dropped) {
            (Some(l), _, _) => format!("{}:{l}", e.host),
            (_, Some(err), _) => format!("{}!{err}", e.host),
            (_, _, Some(n)) => format!("{}-{n}", e.host),
            _ => format!("{}?", e.host),
        })
        .collect()
}

#[test]
fn the_history_is_merged_in_time_order_keeping_the_newest() {
    let lines = vec![
        (0, line(30, "a3")),
        (1, line(10, "b1")),
        (0, line(10, "a1")),
        (1, line(40, "b4")),
    ];
    let (merged, dropped) = merge(lines.clone(), 10, 2);
    let order: Vec<&str> = merged.iter().map(|(_, l)| l.line.as_str()).collect();
    assert_eq!(order, ["a1", "b1", "a3", "b4"], "ties go in host order");
    assert_eq!(dropped, [0, 0]);
    let (merged, dropped) = merge(lines, 2, 2);
    assert_eq!(merged.len(), 2);
    assert_eq!(
        dropped,
        [1, 1],
        "the oldest lines are left out and counted per host"
    );
}

#[tokio::test]
async fn two_hosts_history_merged_then_live_lines_as_they_come() {
    let (a_tx, a_rx) = mpsc::channel(16);
    let (b_tx, b_rx) = mpsc::channel(16);
    let (tx, rx) = mpsc::channel(64);
    a_tx.send(chunk(vec![line(1, "a1"), line(5, "a5")], true, false))
        .await
        .unwrap();
    b_tx.send(chunk(vec![line(3, "b3")], false, false))
        .await
        .unwrap();
    let run = tokio::spawn(run(
        vec![("alpha".into(), a_rx), ("beta".into(), b_rx)],
        vec![(
            "gamma".into(),
            "host gamma runs an agent without logs.v1".into(),
        )],
        true,
        Duration::from_secs(60),
        tx,
    ));
    // beta's history ends later, with a line older than alpha's last.
    b_tx.send(chunk(vec![line(4, "b4")], true, false))
        .await
        .unwrap();
    a_tx.send(chunk(vec![line(9, "a9")], false, false))
        .await
        .unwrap();
    b_tx.send(Ok(serde_json::to_value(LogChunk {
        dropped: 7,
        ..LogChunk::default()
    })
    .unwrap()))
        .await
        .unwrap();
    a_tx.send(chunk(Vec::new(), false, true)).await.unwrap();
    drop(b_tx);
    let entries = collect(rx).await;
    run.await.unwrap();
    let got = texts(&entries);
    assert_eq!(got[0], "gamma!host gamma runs an agent without logs.v1");
    assert_eq!(
        got[1..5],
        ["alpha:a1", "beta:b3", "beta:b4", "alpha:a5"],
        "history in time order: {got:?}"
    );
    // Live: what came after the history, in arrival order per host.
    assert!(got.contains(&"alpha:a9".to_owned()), "{got:?}");
    assert!(got.contains(&"beta-7".to_owned()), "{got:?}");
    assert!(
        got.iter()
            .any(|t| t.starts_with("beta!") && t.contains("cut")),
        "a host whose answer closed without its end is reported: {got:?}"
    );
    assert!(!got.iter().any(|t| t.starts_with("alpha!")), "{got:?}");
    let first = &entries[1];
    assert_eq!(first.ts.as_deref(), Some("1970-01-01T00:00:00.000000001Z"));
    assert_eq!(first.service.as_deref(), Some("web"));
    assert_eq!(first.stream.as_deref(), Some("stdout"));
}

#[tokio::test(start_paused = true)]
async fn a_host_late_with_its_history_gets_a_notice_and_the_rest_go_out() {
    let (a_tx, a_rx) = mpsc::channel(16);
    let (_b_tx, b_rx) = mpsc::channel(16);
    let (tx, rx) = mpsc::channel(64);
    a_tx.send(chunk(vec![line(1, "a1")], true, true))
        .await
        .unwrap();
    run(
        vec![("alpha".into(), a_rx), ("beta".into(), b_rx)],
        Vec::new(),
        false,
        Duration::from_secs(10),
        tx,
    )
    .await;
    let got = texts(&collect(rx).await);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("beta!host beta sent no history within 10s"),
        "{got:?}"
    );
    assert_eq!(got[1], "alpha:a1");
}

#[tokio::test]
async fn a_reader_that_leaves_ends_the_read() {
    let (a_tx, a_rx) = mpsc::channel(16);
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    a_tx.send(chunk(vec![line(1, "a1")], true, false))
        .await
        .unwrap();
    // Returns although alpha never ends: the reader is gone.
    run(
        vec![("alpha".into(), a_rx)],
        Vec::new(),
        true,
        Duration::from_secs(60),
        tx,
    )
    .await;
    assert!(
        a_tx.is_closed(),
        "the host's answers are dropped, so its query is cancelled"
    );
}
