//! The embedded MQTT broker (rumqttd) for `posbridge demo` and the tests. Not used by
//! `posbridge run`, which talks to the shop's or the cloud's broker.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Start rumqttd on a free loopback port in its own thread; returns the port.
///
/// rumqttd binds the address itself, so the port is found by binding port 0 first and
/// releasing it: a small window in which another process could take it, acceptable for a
/// demo and tests.
pub fn start_embedded() -> std::io::Result<u16> {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = ServerSettings {
        name: "v4-1".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            // Above commands.max_bytes so oversize commands reach the agent and are rejected
            // there (mqtt-api.md: nothing is dropped silently).
            max_payload_size: 4 * 1024 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut v4 = HashMap::new();
    v4.insert("1".to_string(), server);
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded broker stopped");
        }
    })?;
    // Wait until it accepts connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(listen).is_ok() {
            return Ok(port);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "embedded broker did not start listening",
    ))
}
