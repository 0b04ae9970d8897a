//! The embedded MQTT broker (rumqttd) for `posbridge demo` and the tests. Not used by
//! `posbridge run`, which talks to the shop's or the cloud's broker.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Start rumqttd on a free loopback port in its own thread; returns the port.
///
/// rumqttd binds the address itself, so the port is found by binding port 0 first and
/// releasing it: in that window another socket may take it (rumqttd then only logs its
/// bind error). So the listener on the port must be this process's own, else another
/// broker is started on another port (at most 5 tries).
pub fn start_embedded() -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..5 {
        match start_on_a_free_port() {
            Ok(port) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("embedded broker did not start")))
}

fn start_on_a_free_port() -> std::io::Result<u16> {
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
    // Wait until it accepts connections, on a listening socket of this process.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(listen).is_ok() && listens_here(port) {
            return Ok(port);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "embedded broker did not start listening",
    ))
}

/// Whether a socket of this process listens on 127.0.0.1:`port` (Linux: the listening
/// socket's inode in `/proc/net/tcp` among this process's descriptors). Elsewhere: true.
fn listens_here(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return true };
    let local = format!("0100007F:{port:04X}");
    // Columns: sl local_address rem_address st ... inode (the 10th).
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() > 9 && c[1] == local && c[3] == "0A")
        .map(|c| format!("socket:[{}]", c[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return true };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_listener_of_this_process_counts() {
        let mine = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = mine.local_addr().expect("addr").port();
        assert!(super::listens_here(port));
        drop(mine);
        assert!(!super::listens_here(port));
    }
}
