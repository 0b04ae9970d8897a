//! The only publisher: status and terminal state (retained), progress and telemetry
//! (QoS 0, dropped while offline), and results from the outbox (QoS 1, deleted on PUBACK).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{ConnEvent, Fifo, Tag};
use crate::api::Topics;
use crate::engine::Outbound;
use crate::store::Store;

pub struct Pump {
    pub(crate) store: Store,
    pub(crate) topics: Topics,
    pub(crate) conn_rx: mpsc::UnboundedReceiver<ConnEvent>,
    pub(crate) out_rx: mpsc::UnboundedReceiver<Outbound>,
    pub(crate) outbox_notify: Arc<Notify>,
    /// The retained `online` status payload.
    pub(crate) online: Value,
    /// Cancelled when the agent stops: publish `offline`, disconnect, then cancel `stop_conn`.
    pub(crate) shutdown: CancellationToken,
    pub(crate) stop_conn: CancellationToken,
    /// Bumped by the loop, idle or not; the systemd watchdog checks it moves.
    pub(crate) beat: crate::systemd::Beat,
    /// The retained status left at stop: `offline`, or `degraded` after a store failure.
    pub(crate) final_status: Option<Value>,
    /// Result ids by outbox seq while their PUBACK is awaited (stage timestamps only).
    pub(crate) sent_ids: std::sync::Mutex<std::collections::HashMap<u64, String>>,
    /// Terminals of earlier runs no longer configured: their retained `terminals/{id}` is
    /// cleared (an empty retained message) on every connection, so a monitor never shows
    /// a removed terminal as it last was (on every node of a cluster the agent reaches).
    pub(crate) removed_terminals: Vec<String>,
}

pub(super) struct Conn {
    pub(super) client: AsyncClient,
    pub(super) fifo: Fifo,
}

impl Conn {
    pub(super) async fn publish(
        &self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>, tag: Tag,
    ) -> bool {
        // The tag goes in first: rumqttc reports `Outgoing::Publish` in request order.
        if let Ok(mut f) = self.fifo.lock() {
            f.push_back(tag);
        }
        self.client.publish(topic, qos, retain, payload).await.is_ok()
    }
}

impl Pump {
    pub async fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut cursor = 0u64;
        let mut inflight: HashSet<u64> = HashSet::new();
        let mut terminals: BTreeMap<String, Value> = BTreeMap::new();
        let mut beat = tokio::time::interval(crate::systemd::BEAT_INTERVAL);
        loop {
            self.beat.bump();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = beat.tick() => continue,
                ev = self.conn_rx.recv() => match ev {
                    Some(ConnEvent::Connected { client, fifo }) => {
                        let c = Conn { client, fifo };
                        c.publish(self.topics.status(), QoS::AtLeastOnce, true, self.online.to_string().into_bytes(), Tag::None).await;
                        for (id, payload) in &terminals {
                            c.publish(self.topics.terminal(id), QoS::AtLeastOnce, true, payload.to_string().into_bytes(), Tag::None).await;
                        }
                        for id in &self.removed_terminals {
                            c.publish(self.topics.terminal(id), QoS::AtLeastOnce, true, Vec::new(), Tag::None).await;
                        }
                        conn = Some(c);
                        cursor = 0;
                        inflight.clear();
                    }
                    Some(ConnEvent::Disconnected) => {
                        conn = None;
                        inflight.clear();
                        continue;
                    }
                    Some(ConnEvent::Acked(Tag::Outbox(seq))) => {
                        if crate::stages::enabled() {
                            if let Some(id) = self.sent_ids.lock().ok().and_then(|mut m| m.remove(&seq)) {
                                crate::stages::mark(&id, "result_acked");
                            }
                        }
                        if let Err(e) = self.store.outbox_remove(seq) {
                            tracing::error!(seq, error = %e, "could not delete acknowledged outbox entry");
                        }
                        inflight.remove(&seq);
                    }
                    Some(ConnEvent::Acked(_)) => continue,
                    None => break,
                },
                _ = self.outbox_notify.notified() => {}
                o = self.out_rx.recv() => {
                    match o {
                        Some(Outbound::Evt(e)) => {
                            if let Some(c) = &conn {
                                c.publish(self.topics.evt(), QoS::AtMostOnce, false, e.to_bytes(), Tag::None).await;
                            }
                        }
                        Some(Outbound::Telemetry(v)) => {
                            if let Some(c) = &conn {
                                c.publish(self.topics.telemetry(), QoS::AtMostOnce, false, v.to_string().into_bytes(), Tag::None).await;
                            }
                        }
                        Some(Outbound::StoreFailed(reason)) => {
                            self.store_failed(&reason, &mut terminals, conn.as_ref()).await;
                        }
                        Some(Outbound::HoldLifted) => {
                            if let Some(store) = self.online.get_mut("store").and_then(Value::as_object_mut) {
                                store.remove("money_blocked");
                            }
                            if let Some(c) = &conn {
                                c.publish(self.topics.status(), QoS::AtLeastOnce, true, self.online.to_string().into_bytes(), Tag::None).await;
                            }
                        }
                        Some(Outbound::Terminal { id, payload }) => {
                            if let Some(c) = &conn {
                                c.publish(self.topics.terminal(&id), QoS::AtLeastOnce, true, payload.to_string().into_bytes(), Tag::None).await;
                            }
                            terminals.insert(id, payload);
                        }
                        None => break,
                    }
                    continue;
                }
            }
            if let Some(c) = &conn {
                self.drain(c, &mut cursor, &mut inflight).await;
            }
        }
        // The stop may overtake the pump's reading of `StoreFailed` (the agent stops at
        // once on a store failure): the last status says `degraded` all the same.
        if self.final_status.is_none() {
            if let Some(reason) = self.store.failure() {
                self.store_failed(&reason, &mut terminals, conn.as_ref()).await;
            }
        }
        self.goodbye(conn).await;
        self.stop_conn.cancel();
    }

    /// The store failed: the retained status becomes `degraded` with the reason (now, and
    /// as the last status at stop), and every terminal's state `error`.
    async fn store_failed(
        &mut self, reason: &str, terminals: &mut BTreeMap<String, Value>, conn: Option<&Conn>,
    ) {
        let since = Value::String(crate::api::ts(chrono::Utc::now()));
        let mut degraded = self.online.clone();
        degraded["state"] = Value::String("degraded".into());
        degraded["reason"] = Value::String(format!("store failure: {reason}"));
        degraded["since"] = since.clone();
        self.online = degraded.clone();
        self.final_status = Some(degraded.clone());
        for (id, payload) in terminals.iter_mut() {
            payload["state"] = Value::String(crate::api::TerminalState::Error.as_str().into());
            payload["last_error"] = Value::String(format!("agent store failure: {reason}"));
            payload["since"] = since.clone();
            if let Some(c) = conn {
                c.publish(
                    self.topics.terminal(id),
                    QoS::AtLeastOnce,
                    true,
                    payload.to_string().into_bytes(),
                    Tag::None,
                )
                .await;
            }
        }
        if let Some(c) = conn {
            c.publish(
                self.topics.status(),
                QoS::AtLeastOnce,
                true,
                degraded.to_string().into_bytes(),
                Tag::None,
            )
            .await;
        }
    }

    /// Clean shutdown: publish `offline` (retained) and wait briefly for its PUBACK, then
    /// disconnect so the broker does not fire the will as well.
    async fn goodbye(&mut self, conn: Option<Conn>) {
        let Some(c) = conn else { return };
        let last = match &self.final_status {
            Some(v) => v.to_string().into_bytes(),
            None => super::offline_status(),
        };
        c.publish(self.topics.status(), QoS::AtLeastOnce, true, last, Tag::Offline).await;
        let wait = async {
            while let Some(ev) = self.conn_rx.recv().await {
                match ev {
                    ConnEvent::Acked(Tag::Offline) => return,
                    ConnEvent::Acked(Tag::Outbox(seq)) => {
                        let _ = self.store.outbox_remove(seq);
                    }
                    ConnEvent::Disconnected => return,
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(3), wait).await.is_err() {
            tracing::warn!("broker did not acknowledge the offline status in time");
        }
        let _ = c.client.disconnect().await;
        // Give the connection task a moment to write the DISCONNECT packet.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(ev) = self.conn_rx.recv().await {
                if matches!(ev, ConnEvent::Disconnected) {
                    return;
                }
            }
        })
        .await;
    }
}
