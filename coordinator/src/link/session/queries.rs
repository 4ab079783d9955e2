//! Queries on a session (`skiff logs`): each is sent with a fresh id, its
//! answers are routed by `re` to the reader's bounded queue, and a reader
//! that falls behind or leaves has its query cut and the agent told to
//! stop it.

use std::collections::HashMap;

use skiff_shared::protocol::{CoordinatorMessage, SectionMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::debug;

use super::{End, Session};
use crate::sessions::QueryRequest;

/// Queries open at once on one link; more are refused.
const MAX_OPEN_QUERIES: usize = 64;

/// Open queries by the id they were sent with: their section and where
/// their answers go.
pub(super) type OpenQueries =
    HashMap<u64, (String, mpsc::Sender<Result<serde_json::Value, String>>)>;

impl Session {
    /// Sends a query with a fresh id and keeps where its answers go.
    pub(super) async fn ask<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        q: QueryRequest,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.open_queries.len() >= MAX_OPEN_QUERIES {
            // The reader learns why; a full queue has no room to say it.
            let _ = q.answers.try_send(Err(format!(
                "this host has {MAX_OPEN_QUERIES} queries open already; retry when one ends"
            )));
            return Ok(());
        }
        let message = CoordinatorMessage::Query(SectionMessage {
            section: q.section.clone(),
            body: q.body,
        });
        let id = self.send(ws, None, &message).await?;
        debug!(query = id, section = %q.section, "Query sent.");
        self.open_queries.insert(id, (q.section, q.answers));
        Ok(())
    }

    /// Routes part of an answer to its reader. An answer to no open query
    /// (one cancelled meanwhile) is dropped; a reader gone or too slow
    /// ends its query, and the agent is told to stop it.
    pub(super) async fn answer<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        re: Option<u64>,
        answer: SectionMessage,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(id) = re else {
            self.link.metrics.malformed.inc();
            return Err(End::Closed(
                CloseCode::Protocol,
                "an answer that answers no query".into(),
            ));
        };
        let Some((section, answers)) = self.open_queries.get(&id) else {
            return Ok(());
        };
        if *section != answer.section {
            self.link.metrics.malformed.inc();
            return Err(End::Closed(
                CloseCode::Protocol,
                format!(
                    "an answer for section {:?} to a query of section {section:?}",
                    answer.section
                ),
            ));
        }
        // Every query's answer ends with a part that says `end: true`.
        let end = answer.body.get("end").and_then(serde_json::Value::as_bool) == Some(true);
        match answers.try_send(Ok(answer.body)) {
            Ok(()) if end => {
                self.open_queries.remove(&id);
                Ok(())
            }
            Ok(()) => Ok(()),
            Err(e) => {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    debug!(
                        query = id,
                        "A query's reader fell behind; the query is cut."
                    );
                }
                // Dropping the sender tells the reader it was cut.
                self.open_queries.remove(&id);
                self.send(ws, None, &CoordinatorMessage::Cancel { query: id })
                    .await
                    .map(|_| ())
                    .map_err(|e| End::Quiet(format!("cancelling a query failed: {e}")))
            }
        }
    }

    /// Cancels the queries whose reader left.
    pub(super) async fn cancel_abandoned<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
    ) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let gone: Vec<u64> = self
            .open_queries
            .iter()
            .filter(|(_, (_, tx))| tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.open_queries.remove(&id);
            debug!(
                query = id,
                "A query's reader left; the agent is told to stop."
            );
            self.send(ws, None, &CoordinatorMessage::Cancel { query: id })
                .await?;
        }
        Ok(())
    }
}

/// The next query handed to the session; never, without a queue.
pub(super) async fn next_query(
    rx: Option<&mut mpsc::Receiver<QueryRequest>>,
) -> Option<QueryRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
