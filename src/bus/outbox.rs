//! Outbox drain (`mqtt-api.md`: Durability promise 3): results wait in the store's outbox
//! and go out in order at QoS 1 while connected, at most [`MAX_INFLIGHT`] unacknowledged
//! at a time; an entry is deleted only when the broker's PUBACK for it arrives (the pump's
//! `ConnEvent::Acked`), so a result lost with a connection goes out again on the next one.

use std::collections::HashSet;

use rumqttc::QoS;

use super::pump::{Conn, Pump};
use super::Tag;

/// Most outbox entries in flight on one connection (below rumqttc's inflight of 1000, so
/// packet ids never collide).
pub(super) const MAX_INFLIGHT: usize = 500;

impl Pump {
    /// Publish outbox entries from `cursor` on, until the window is full or none are left.
    pub(super) async fn drain(&self, c: &Conn, cursor: &mut u64, inflight: &mut HashSet<u64>) {
        while inflight.len() < MAX_INFLIGHT {
            let batch = match self.store.outbox_from(*cursor, MAX_INFLIGHT - inflight.len()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "outbox read failed");
                    return;
                }
            };
            if batch.is_empty() {
                return;
            }
            for (seq, msg) in batch {
                let topic = format!("{}/{}", self.topics.root(), msg.topic);
                let mut payload = msg.payload.into_bytes();
                if payload.len() > crate::api::result::MAX_RESULT_BYTES {
                    // Written by an older version: a packet this large would fail the
                    // connection and be retried first after every reconnect, blocking
                    // every later result. Publish a small result for the same id instead.
                    tracing::warn!(
                        seq,
                        bytes = payload.len(),
                        "outbox entry over the result size limit; publishing it shrunk"
                    );
                    payload = crate::api::result::shrink_payload(&payload);
                }
                let id = crate::stages::enabled().then(|| result_id(&payload)).flatten();
                if !c.publish(topic, QoS::AtLeastOnce, false, payload, Tag::Outbox(seq)).await {
                    return;
                }
                if let Some(id) = id {
                    crate::stages::mark(&id, "result_sent");
                    if let Ok(mut m) = self.sent_ids.lock() {
                        m.insert(seq, id);
                    }
                }
                inflight.insert(seq);
                *cursor = seq + 1;
            }
        }
    }
}

/// The `id` of a result payload (for the stage timestamps only).
fn result_id(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}
