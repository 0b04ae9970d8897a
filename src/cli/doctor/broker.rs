//! The broker checks: TCP and MQTT CONNECT to `mqtt.url` with the agent's credentials and
//! TLS files under a client id of its own (`{client_id}-doctor`, clean session, so the
//! agent's session is never disturbed), then what the agent left retained there — its
//! status (`agent` check) and its terminals' states, which the terminal checks read.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, Outgoing, QoS};
use serde_json::Value;

use super::Check;
use crate::api::Topics;
use crate::config::{Config, MqttEndpoint};

/// TCP connect and MQTT CONNECT, each.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to collect retained messages after SUBACK.
const RETAINED_QUIET: Duration = Duration::from_millis(400);
const RETAINED_MAX: Duration = Duration::from_secs(2);

/// What the broker check learned, for the checks that follow.
#[derive(Debug, Clone)]
pub(super) struct BrokerView {
    pub(super) check: Check,
    reached: bool,
    /// Retained `{root}/status`.
    status: Option<Value>,
    /// Retained `{root}/terminals/{id}`, by id.
    pub(super) terminals: std::collections::BTreeMap<String, Value>,
}

/// One check per broker (`broker`, or `broker[i]` for each of `mqtt.urls`), and the view
/// of the first one reached where the agent's status is retained (else the first reached):
/// a cluster may keep retained messages on one node only.
pub(super) async fn brokers(cfg: &Config) -> (Vec<Check>, BrokerView) {
    let endpoints = match cfg.mqtt.endpoints() {
        Ok(e) => e,
        Err(e) => {
            let check = Check::fail("broker", e.to_string(), "fix mqtt.url / mqtt.urls");
            return (vec![check.clone()], BrokerView::failed(check));
        }
    };
    let many = endpoints.len() > 1;
    let mut views = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let (name, key) = match many {
            true => (format!("broker[{i}]"), format!("mqtt.urls[{i}]")),
            false => ("broker".to_string(), "mqtt.url".to_string()),
        };
        let mut view = BrokerView::failed(Check::ok(name.clone(), ""));
        match broker_inner(cfg, ep, &name, &key, &mut view).await {
            Ok(detail) => {
                view.reached = true;
                view.check = Check::ok(name, detail);
            }
            Err(c) => view.check = c,
        }
        views.push(view);
    }
    let checks = views.iter().map(|v| v.check.clone()).collect();
    let pick = views
        .iter()
        .position(|v| v.reached && v.status.is_some())
        .or_else(|| views.iter().position(|v| v.reached))
        .unwrap_or(0);
    (checks, views.swap_remove(pick))
}

impl BrokerView {
    fn failed(check: Check) -> BrokerView {
        BrokerView { check, reached: false, status: None, terminals: Default::default() }
    }
}

async fn broker_inner(
    cfg: &Config, ep: &MqttEndpoint, name: &str, key: &str, view: &mut BrokerView,
) -> Result<String, Check> {
    let fail = |detail: String, fix: &str| Check::fail(name, detail, fix.replace("mqtt.url", key));
    // mqtts://: the same rustls configuration as the agent (CA file, client certificate).
    let tls = if ep.tls {
        Some(
            crate::bus::tls::client_config(&crate::bus::tls::TlsFiles {
                ca_file: cfg.mqtt.ca_file.clone(),
                client_cert_file: cfg.mqtt.client_cert_file.clone(),
                client_key_file: cfg.mqtt.client_key_file.clone(),
            })
            .map_err(|e| {
                fail(
                    format!("{e:#}"),
                    "check mqtt.ca_file / client_cert_file / client_key_file (PEM, readable by the agent)",
                )
            })?,
        )
    } else {
        None
    };
    let target = format!("{}:{}", ep.host, ep.port);
    let started = Instant::now();
    match tokio::time::timeout(
        BROKER_TIMEOUT,
        tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(fail(format!("cannot connect to {target}: {e}"),
                "is the broker running and mqtt.url right? check the network/firewall from this machine (`nc -vz HOST PORT`)",
            ))
        }
        Err(_) => {
            return Err(fail(format!("no answer from {target} within {BROKER_TIMEOUT:?}"),
                "check mqtt.url, routing and firewall (packets are dropped, not refused)",
            ))
        }
    }
    let password = match &cfg.mqtt.password_file {
        None => None,
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| {
                    fail(format!("cannot read mqtt.password_file {}: {e}", p.display()),
                        "run doctor as the agent's user (`sudo -u posbridge posbridge doctor`); the file should be root:posbridge 0640",
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
    };
    // Never the agent's client id: that would kick the agent off and, with a clean
    // session, discard its persistent session (and the commands queued in it).
    let client_id = format!("{}-doctor", cfg.mqtt.client_id);
    let mut opts = MqttOptions::new(client_id.clone(), ep.host.clone(), ep.port);
    opts.set_clean_session(true).set_keep_alive(Duration::from_secs(5));
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            tls,
        )));
    }
    if let Some(u) = &cfg.mqtt.username {
        opts.set_credentials(u.clone(), password.unwrap_or_default());
    }
    let (client, mut el) = AsyncClient::new(opts, 16);
    el.network_options.set_connection_timeout(BROKER_TIMEOUT.as_secs());
    let topics = Topics::new(&cfg.topic_prefix, &cfg.agent_id);
    let connack = tokio::time::timeout(BROKER_TIMEOUT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(a))) => return Ok(a.code),
                Ok(_) => {}
                // rumqttc turns a refusing CONNACK into this error.
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let who = cfg.mqtt.username.as_deref().map(|u| format!(" as {u:?}")).unwrap_or_default();
    match connack {
        Err(_) => {
            return Err(fail(format!("{target} accepted TCP but sent no CONNACK within {BROKER_TIMEOUT:?}"),
                "is it an MQTT listener (not WebSocket; TLS only with mqtts://)? check the port in mqtt.url",
            ))
        }
        Ok(Err(e)) => {
            return Err(fail(format!("MQTT connect to {target} failed: {e}"),
                if ep.tls {
                    "TLS: does mqtt.ca_file hold the broker's CA, does the broker's certificate name the host in mqtt.url, is the client certificate accepted? (broker log)"
                } else {
                    "check the broker's log; is it an MQTT 3.1.1 listener, and not a TLS port (use mqtts:// for that)?"
                },
            ))
        }
        Ok(Ok(ConnectReturnCode::Success)) => {}
        Ok(Ok(code)) => {
            let fix = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    "check mqtt.username and mqtt.password_file against the broker's password file (mosquitto_passwd) and ACL"
                }
                ConnectReturnCode::BadClientId => "check mqtt.client_id (the broker refuses it)",
                _ => "check the broker's log",
            };
            return Err(fail(format!("{target} refused the login{who}: {code:?}"),
                fix,
            ));
        }
    }
    let elapsed = started.elapsed();
    // Read what the agent left retained: its status and terminal states.
    let _ = client.try_subscribe(topics.status(), QoS::AtMostOnce);
    let _ = client.try_subscribe(format!("{}/terminals/+", topics.root()), QoS::AtMostOnce);
    let prefix = format!("{}/terminals/", topics.root());
    let deadline = tokio::time::Instant::now() + RETAINED_MAX;
    let mut subacks = 0;
    loop {
        let wait = if subacks < 2 { BROKER_TIMEOUT } else { RETAINED_QUIET };
        let ev = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = tokio::time::timeout(wait, el.poll()) => ev,
        };
        match ev {
            Err(_) => break,
            Ok(Err(_)) => break,
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => subacks += 1,
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                if p.topic == topics.status() {
                    view.status = Some(v);
                } else if let Some(id) = p.topic.strip_prefix(&prefix) {
                    view.terminals.insert(id.to_string(), v);
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    Ok(format!(
        "MQTT connect to {target}{who} ok in {} ms (client id {client_id})",
        elapsed.as_millis()
    ))
}

pub(super) fn agent_status(cfg: &Config, broker: &BrokerView) -> Check {
    const NAME: &str = "agent";
    let topic = Topics::new(&cfg.topic_prefix, &cfg.agent_id).status();
    if !broker.reached {
        return Check::warn(
            NAME,
            "unknown: the broker was not reached",
            "fix the broker check first",
        );
    }
    let Some(status) = &broker.status else {
        return Check::warn(
            NAME,
            format!("no retained status on {topic}: the agent never connected to this broker (or the ACL hides it)"),
            "systemctl start posbridge; journalctl -u posbridge -n 50",
        );
    };
    if let Some(h) = status.pointer("/store/money_blocked") {
        return Check::fail(
            NAME,
            format!(
                "online, but payments and refunds are REFUSED (store_damaged): the store was found damaged at {}, copy kept at {}",
                h.get("since").and_then(Value::as_str).unwrap_or("?"),
                h.get("moved_aside").and_then(Value::as_str).unwrap_or("?")
            ),
            "reconcile the salvaged commands (`list` with state unknown) on the terminals, then stop the agent and run `posbridge store acknowledge` (README: A store that cannot be opened)",
        );
    }
    match status.get("state").and_then(Value::as_str) {
        Some("online") => Check::ok(
            NAME,
            format!(
                "online, version {}, started {}",
                status.get("version").and_then(Value::as_str).unwrap_or("?"),
                status.get("started_at").and_then(Value::as_str).unwrap_or("?")
            ),
        ),
        Some(state) => Check::warn(
            NAME,
            format!("{state} (retained on {topic})"),
            "systemctl start posbridge; systemctl status posbridge; journalctl -u posbridge -n 50",
        ),
        None => Check::warn(
            NAME,
            format!("unreadable status on {topic}: {status}"),
            "is another program publishing there?",
        ),
    }
}
