//! The cloud POS's side of the contract (`mqtt-api.md`): an MQTT client that sends
//! commands to an agent's `cmd` topic and hands over what the agent publishes, and a
//! [`Signer`] for agents that take signed commands only. The demo's scripted cloud, the
//! test kit's clients and the benchmarks all stand on it.

mod signer;

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

pub use self::signer::Signer;

/// The agent's topic root (`posbridge/{agent_id}`).
pub fn root(agent_id: &str) -> String {
    format!("posbridge/{agent_id}")
}

/// How to connect. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// `false`: keep a session on the broker, so results queue up while this client is away.
    pub clean: bool,
    pub keep_alive: Duration,
    /// The filters subscribed on every connection (QoS 1); empty: publish only.
    pub subscribe: Vec<String>,
    /// Outgoing requests that may wait in the client before `publish` blocks.
    pub capacity: usize,
    /// TLS (`mqtts://`): the rustls client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Username and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("clean", &self.clean)
            .field("subscribe", &self.subscribe)
            .field("tls", &self.tls.is_some())
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl Options {
    /// A client on loopback `port` subscribed to `subscribe`.
    pub fn loopback(port: u16, client_id: &str, subscribe: Option<&str>) -> Options {
        Options {
            host: "127.0.0.1".into(),
            port,
            client_id: client_id.into(),
            clean: true,
            keep_alive: Duration::from_secs(10),
            subscribe: subscribe.into_iter().map(str::to_string).collect(),
            capacity: 1000,
            tls: None,
            credentials: None,
        }
    }
}

/// One message the broker delivered.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// A connected client. Dropping it stops its connection.
pub struct Client {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connect and, with a filter, subscribe; resolves once the subscription is in place
    /// (or, without one, once connected), or fails after `within`. The connection is
    /// kept up (re-subscribing on every new connection) until the client is dropped.
    pub async fn connect(o: Options, within: Duration) -> anyhow::Result<Client> {
        let mut mo = MqttOptions::new(&o.client_id, &o.host, o.port);
        mo.set_keep_alive(o.keep_alive)
            .set_clean_session(o.clean)
            .set_inflight(100)
            .set_max_packet_size(16 << 20, 16 << 20);
        if let Some(tls) = &o.tls {
            mo.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        if let Some((user, password)) = &o.credentials {
            mo.set_credentials(user.clone(), password.clone());
        }
        let (client, mut el) = AsyncClient::new(mo, o.capacity);
        el.network_options.set_tcp_nodelay(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
        // Why the connection is not up yet, for the error after `within`.
        let why: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let (c2, why2) = (client.clone(), why.clone());
        let task = tokio::spawn(async move {
            let note = |text: String| {
                if let Ok(mut w) = why2.lock() {
                    *w = Some(text);
                }
            };
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        if o.subscribe.is_empty() {
                            let _ = ready_tx.send(());
                        } else {
                            let filters = o.subscribe.iter().map(|s| {
                                rumqttc::SubscribeFilter::new(s.clone(), QoS::AtLeastOnce)
                            });
                            let _ = c2.try_subscribe_many(filters);
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                        // A refused filter (0x80) would leave this client waiting for
                        // messages that never come: not ready.
                        let refused = ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                        if refused {
                            note(format!(
                                "the broker refused the subscription to {:?}",
                                o.subscribe
                            ));
                        } else {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Message {
                            topic: p.topic,
                            payload: p.payload,
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        note(e.to_string());
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                }
            }
        });
        let client = Client { client, rx, task };
        if tokio::time::timeout(within, ready_rx.recv()).await.ok().flatten().is_none() {
            let why = why.lock().ok().and_then(|w| w.clone());
            let why = why.map(|w| format!(" (last: {w})")).unwrap_or_default();
            anyhow::bail!("no MQTT connection to {}:{} within {within:?}{why}", o.host, o.port);
        }
        Ok(client)
    }

    /// Publish `payload` to `{root}/cmd` (QoS 1).
    pub async fn send(&self, root: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(format!("{root}/cmd"), QoS::AtLeastOnce, false, payload)
            .await
            .context("publishing the command")
    }

    /// The next message (`None` only once the client is gone).
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message, or `None` after `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<Message> {
        tokio::time::timeout(within, self.next()).await.ok().flatten()
    }

    /// Wait for the agent's `online` status (subscribed to its `status`).
    pub async fn online(&mut self, within: Duration) -> bool {
        let status = |m: &Message| m.topic.ends_with("/status");
        let online = |v: &serde_json::Value| v["state"] == "online";
        self.wait_until(within, |m, v| status(m) && online(v)).await.is_some()
    }

    /// Wait for a message on `{topic}` whose JSON satisfies `pred`, showing every
    /// message to `seen` on the way; `None` after `within`.
    pub async fn wait_for(
        &mut self, topic: &str, within: Duration,
        mut seen: impl FnMut(&Message, &serde_json::Value),
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.wait_until(within, |m, v| {
            seen(m, v);
            m.topic == topic && pred(v)
        })
        .await
    }

    /// The JSON of the first message for which `f` holds; `None` after `within`.
    async fn wait_until(
        &mut self, within: Duration, mut f: impl FnMut(&Message, &serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.next()).await.ok()??;
            let v = serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
            if f(&m, &v) {
                return Some(v);
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
