//! The MQTT connection (rumqttc, MQTT 3.1.1): persistent session, manual PUBACKs after the
//! store has the command, retained `status` with an `offline` will, reconnect with capped
//! exponential backoff, and results published from the outbox and deleted only when the
//! broker acknowledges them.
//!
//! Two tasks:
//! - the **connection task** owns the rumqttc `EventLoop` and does nothing but poll it (a
//!   blocked poll stalls keep-alive and acks; rumqttc #1025). It builds a fresh event loop
//!   for every connection so rumqttc never retransmits on its own: the outbox is the one
//!   source of truth for what still has to go out.
//! - the **pump** (`pump.rs`) is the only task that publishes. It records, in the order it
//!   hands publishes to rumqttc, which outbox entry each one carries; the connection task
//!   matches rumqttc's `Outgoing::Publish(pkid)` events (emitted in the same order) to learn
//!   each entry's packet id, and a `PUBACK` for that id deletes the entry.

mod outbox;
mod pump;
pub mod tls;

pub use pump::Pump;

pub mod gate;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::MqttEndpoint;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::Topics;
use crate::engine::Incoming as Cmd;

/// Queue of outbox tags for publishes handed to the current connection, oldest first.
pub(crate) type Fifo = Arc<Mutex<VecDeque<Tag>>>;

/// What a publish carries, so its PUBACK can be traced back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// QoS 0 or fire-and-forget QoS 1 (retained state): nothing to do on ack.
    None,
    Outbox(u64),
    /// The `offline` status published at shutdown.
    Offline,
}

#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The brokers, tried in order: after a lost connection or a failed attempt the next
    /// one is tried (the first again after the last), each with its own persistent session.
    pub brokers: Vec<MqttEndpoint>,
    pub client_id: String,
    pub keep_alive: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Incoming packet limit: well above `commands.max_bytes`, so an oversize command
    /// reaches the engine and is rejected there instead of failing the connection on every
    /// redelivery (CRATES.md: poison messages).
    pub max_incoming: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// For the `mqtts://` brokers: the rustls client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Events from the connection task to the pump.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    Connected { client: AsyncClient, fifo: Fifo },
    Disconnected,
    Acked(Tag),
}

/// Counters for telemetry.
#[derive(Debug, Default)]
pub struct BusStats {
    pub reconnects: std::sync::atomic::AtomicU64,
    /// Publishes on `cmd` that were not plain QoS 1 (QoS 0 or retained): dropped.
    pub dropped_commands: std::sync::atomic::AtomicU64,
    /// Times the intake queue was full (`bus::gate`): the connection took no more commands
    /// until it had drained, then reconnected for the rest. A sign of a flood, or of a
    /// store too slow for the command rate.
    pub intake_queue_full: std::sync::atomic::AtomicU64,
    pub connected: std::sync::atomic::AtomicBool,
    /// `host:port` of the broker of the current (or last) connection.
    pub broker: Mutex<Option<String>>,
}

impl BusStats {
    /// Until the broker connection is up (checked every 50 ms).
    pub async fn until_connected(&self) {
        while !self.connected.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `offline` status: the will, and what a clean shutdown publishes. It names the
/// version, so a fleet view still tells which version an agent that went away ran.
pub(crate) fn offline_status() -> Vec<u8> {
    serde_json::json!({"v": crate::api::API_VERSION, "state": "offline", "version": crate::VERSION})
        .to_string()
        .into_bytes()
}

pub(crate) fn mqtt_options(cfg: &BusConfig, broker: &MqttEndpoint, topics: &Topics) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id.clone(), broker.host.clone(), broker.port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)))
        .set_clean_session(false)
        .set_manual_acks(true)
        // Generous: the pump keeps fewer than this in flight, so pkids never collide.
        .set_inflight(1000)
        .set_max_packet_size(cfg.max_incoming, 1024 * 1024)
        .set_last_will(LastWill::new(topics.status(), offline_status(), QoS::AtLeastOnce, true));
    if let (true, Some(tls)) = (broker.tls, &cfg.tls) {
        o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        o.set_credentials(u.clone(), p.clone());
    } else if let Some(u) = &cfg.username {
        o.set_credentials(u.clone(), "");
    }
    o
}

/// Run the connection task until `stop` is cancelled (after the pump has said goodbye).
pub(crate) async fn run_connection(
    cfg: BusConfig, topics: Topics, cmd_tx: mpsc::UnboundedSender<Cmd>,
    pump_tx: mpsc::UnboundedSender<ConnEvent>, stats: Arc<BusStats>, gate: Arc<gate::Gate>,
    stop: CancellationToken,
) {
    let cmd_topic = topics.cmd();
    // Which broker the next attempt goes to.
    let mut node = 0;
    let mut backoff = cfg.backoff_min;
    let mut first = true;
    // When the broker was last lost (None while connected or before the first attempt).
    let mut outage_since: Option<std::time::Instant> = None;
    // When a failed attempt was last logged at `warn`: the first failure of an outage and
    // then one every LOUD_EVERY, the attempts between them at `debug` (they are 5 a second
    // in the first seconds of an outage).
    let mut loud_at: Option<std::time::Instant> = None;
    while !stop.is_cancelled() {
        let broker = &cfg.brokers[node % cfg.brokers.len()];
        let at = format!("{}:{}", broker.host, broker.port);
        let (client, mut el) = AsyncClient::new(mqtt_options(&cfg, broker, &topics), 4096);
        // CRATES.md: 88 ms per QoS 1 round trip without it, 0.14 ms with it.
        el.network_options.set_tcp_nodelay(true);
        el.network_options.set_connection_timeout(10);
        let fifo: Fifo = Arc::new(Mutex::new(VecDeque::new()));
        let mut pkids: HashMap<u16, Tag> = HashMap::new();
        let mut connected = false;
        // The broker refused or was lost (not a reconnect of our own choosing).
        let mut lost = false;
        // The intake queue was full: commands are being skipped (left unacknowledged) until
        // the queue has drained and its PUBACKs are out; then a reconnect brings them again.
        let mut skipping = false;
        // This connection ends only so the broker delivers the skipped commands: the
        // broker is fine, so the next one starts at once (no backoff).
        let mut refill = false;
        // PUBACKs the intake asked for on this connection, and those written out.
        let acks_asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut acks_out = 0u64;
        let drained = |acks_out: u64| {
            gate.queued().0 == 0
                && acks_out >= acks_asked.load(std::sync::atomic::Ordering::Acquire)
        };
        loop {
            if skipping && drained(acks_out) {
                tracing::info!("intake queue drained; reconnecting so the broker delivers the skipped commands");
                refill = true;
                break;
            }
            let ev = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = gate.reconnect_requested() => {
                    tracing::warn!("reconnecting so the broker delivers unacknowledged commands again");
                    break;
                }
                _ = gate.drained(), if skipping => continue,
                ev = el.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        tracing::error!(broker = %at, code = ?ack.code, "broker refused the connection");
                        lost = true;
                        break;
                    }
                    tracing::info!(broker = %at, session_present = ack.session_present, "connected to broker");
                    if !first {
                        stats.reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    first = false;
                    connected = true;
                    stats.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                    backoff = cfg.backoff_min;
                    outage_since = None;
                    if let Ok(mut b) = stats.broker.lock() {
                        *b = Some(at.clone());
                    }
                    // Subscribe every time: cheap, and covers a broker that lost the session
                    // (rumqttc #1014/#1056).
                    if let Err(e) = client.try_subscribe(cmd_topic.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "subscribe request failed");
                        break;
                    }
                    let _ = pump_tx
                        .send(ConnEvent::Connected { client: client.clone(), fifo: fifo.clone() });
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if p.topic != cmd_topic {
                        continue;
                    }
                    if p.qos != QoS::AtLeastOnce || p.retain {
                        // mqtt-api.md 9: commands come at QoS 1 only. A QoS 0 command has
                        // no redelivery to lean on, and a retained one would run again
                        // for every new subscription. Dropped, counted in telemetry.
                        stats.dropped_commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(qos = ?p.qos, retain = p.retain, bytes = p.payload.len(),
                            "command dropped: not a plain QoS 1 publish (mqtt-api.md: commands arrive at QoS 1 only)");
                        if p.qos == QoS::AtLeastOnce {
                            let _ = client.try_ack(&p);
                        }
                        continue;
                    }
                    if skipping {
                        // Not acknowledged: the broker delivers it again after the reconnect.
                        continue;
                    }
                    let Some(slot) = gate.admit(p.payload.len()) else {
                        // Full: not acknowledged, so the broker keeps it (and everything
                        // after it) for the next connection, once the queue has drained.
                        tracing::warn!(queued = ?gate.queued(), "intake queue full; taking no more commands until it drains, then reconnecting so the broker delivers the rest");
                        stats.intake_queue_full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        skipping = true;
                        continue;
                    };
                    let ack_client = client.clone();
                    let asked = acks_asked.clone();
                    let payload = p.payload.to_vec();
                    let cmd = Cmd {
                        payload,
                        ack: Box::new(move || {
                            Box::pin(async move {
                                // Fails only if this connection is gone; the broker then
                                // redelivers and the engine answers the duplicate.
                                if ack_client.ack(&p).await.is_ok() {
                                    asked.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                                }
                            })
                        }),
                        slot: Some(slot),
                        received: crate::stages::now(),
                    };
                    // Never await here: this task is the only one polling the connection,
                    // and the intake's PUBACKs go through it. The gate bounds the queue.
                    if cmd_tx.send(cmd).is_err() {
                        // The intake has stopped (the agent is stopping). Not acknowledged,
                        // so the broker delivers it again to the next session; the
                        // connection stays up for the pump's last status (`offline`, or
                        // `degraded` after a store failure), which leaving here would lose.
                        tracing::debug!("command left unacknowledged: the agent is stopping");
                    }
                }
                Ok(Event::Outgoing(Outgoing::PubAck(_))) => acks_out += 1,
                Ok(Event::Incoming(Incoming::PubAck(a))) => {
                    if let Some(tag) = pkids.remove(&a.pkid) {
                        let _ = pump_tx.send(ConnEvent::Acked(tag));
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let tag =
                        fifo.lock().map(|mut f| f.pop_front()).unwrap_or(None).unwrap_or(Tag::None);
                    if pkid != 0 && tag != Tag::None {
                        pkids.insert(pkid, tag);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let now = std::time::Instant::now();
                    if outage_since.is_none()
                        || loud_at.is_none_or(|t| now.duration_since(t) >= LOUD_EVERY)
                    {
                        let outage_s = outage_since.map_or(0, |s| now.duration_since(s).as_secs());
                        tracing::warn!(broker = %at, error = %e, outage_s, "broker connection lost");
                        loud_at = Some(now);
                    } else {
                        tracing::debug!(broker = %at, error = %e, "broker still unreachable");
                    }
                    lost = true;
                    break;
                }
            }
        }
        if connected {
            stats.connected.store(false, std::sync::atomic::Ordering::Relaxed);
            let _ = pump_tx.send(ConnEvent::Disconnected);
        }
        drop(el);
        if stop.is_cancelled() {
            break;
        }
        if refill {
            continue;
        }
        if lost {
            // The next broker in the list (mqtt.urls; the same one when there is one),
            // with the backoff below between attempts as for one broker. A reconnect of
            // our own (for redelivery) stays on the broker that holds the commands.
            node = (node + 1) % cfg.brokers.len();
        }
        // Capped exponential backoff with jitter so a fleet does not reconnect in lockstep.
        // Short outages (a broker restart, a Wi-Fi blip) are the common case and results
        // wait in the outbox meanwhile: retry fast at first (`backoff_cap`), then back off
        // up to `backoff_max`.
        let since = *outage_since.get_or_insert_with(std::time::Instant::now);
        backoff = backoff.min(backoff_cap(since.elapsed(), cfg.backoff_max));
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
        tracing::debug!(delay_ms = (backoff + jitter).as_millis() as u64, "reconnecting to broker");
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// How often a broker that stays unreachable is logged at `warn`.
const LOUD_EVERY: Duration = Duration::from_secs(30);

/// For this long after the broker is lost, reconnect attempts are at most `BLIP_CAP` apart:
/// a broker restart or a Wi-Fi blip is over within seconds, and the results waiting in the
/// outbox should go out within a fraction of a second of its return. A refused connect
/// costs the broker's host next to nothing.
const BLIP_WINDOW: Duration = Duration::from_secs(10);
const BLIP_CAP: Duration = Duration::from_millis(200);
/// Then, up to this long into an outage, at most `FAST_CAP` apart...
const FAST_WINDOW: Duration = Duration::from_secs(30);
const FAST_CAP: Duration = Duration::from_secs(1);
// ...and then backing off up to `backoff_max` (30 s), so a fleet does not hammer a broker
// that is gone for long.

/// The longest wait before the next attempt, `outage` into an outage.
fn backoff_cap(outage: Duration, max: Duration) -> Duration {
    if outage < BLIP_WINDOW {
        max.min(BLIP_CAP)
    } else if outage < FAST_WINDOW {
        max.min(FAST_CAP)
    } else {
        max
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn short_outages_retry_fast_long_ones_back_off() {
        let max = Duration::from_secs(30);
        // A broker back after a few seconds is found within ~0.2 s (+ 25 % jitter)...
        assert_eq!(backoff_cap(Duration::from_secs(3), max), BLIP_CAP);
        assert_eq!(backoff_cap(Duration::from_millis(9_900), max), BLIP_CAP);
        // ...within ~1 s up to half a minute...
        assert_eq!(backoff_cap(Duration::from_secs(10), max), FAST_CAP);
        assert_eq!(backoff_cap(Duration::from_secs(29), max), FAST_CAP);
        // ...and a broker gone for long is not hammered by a fleet.
        assert_eq!(backoff_cap(Duration::from_secs(31), max), max);
        // A configured maximum below the caps wins.
        let small = Duration::from_millis(150);
        assert_eq!(backoff_cap(Duration::from_secs(1), small), small);
        assert_eq!(backoff_cap(Duration::from_secs(20), small), small);
    }
}
