//! `skiff events`: the cluster's recent events, or with `--follow` every
//! new one as it happens.

use std::io::Write;

use skiff_api_types::Event;

use super::path_segment;
use crate::Failure;
use crate::client::{Client, Method};

/// Prints the events (of `stack` only, if given), as text or JSON lines.
pub(crate) async fn run(
    client: &Client,
    follow: bool,
    stack: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut query = format!("/events?follow={follow}");
    if let Some(s) = stack {
        query.push_str(&format!("&stack={}", path_segment(s)?));
    }
    if follow {
        client
            .follow_events(&query, |data| {
                if let Ok(e) = serde_json::from_str::<Event>(data) {
                    print(out, &e, json);
                }
                true
            })
            .await?;
    } else {
        let events: Vec<Event> = client.call(Method::GET, &query, None::<&()>).await?;
        for e in &events {
            print(out, e, json);
        }
    }
    Ok(())
}

/// One event: a JSON line, or `AT  KIND SUBJECT[ on NODE]: MESSAGE`.
fn print(out: &mut impl Write, e: &Event, json: bool) {
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
    } else {
        let subject = e.stack.as_deref().or(e.node.as_deref()).unwrap_or("-");
        let node = match (&e.stack, &e.node) {
            (Some(_), Some(n)) => format!(" on {n}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{}  {:<17} {subject}{node}: {}",
            e.at, e.kind, e.message
        );
    }
    let _ = out.flush();
}
