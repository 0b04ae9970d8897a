//! MQTT over TLS against a real mosquitto: server verified against a CA file, mutual TLS
//! with a client certificate, username + password file. Certificates are made by the test.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use posbridge::sim::ip::{IpSim, SimOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use tokio_util::sync::CancellationToken;

struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key: String,
    client_pem: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "posbridge test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");

    let server_key = KeyPair::generate().expect("server key");
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    sp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let server = sp
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server cert");

    let client_key = KeyPair::generate().expect("client key");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("client params");
    cp.distinguished_name
        .push(DnType::CommonName, "posbridge-shop-tls");
    let client = cp
        .signed_by(&client_key, &ca_cert, &ca_key)
        .expect("client cert");
    Pki {
        ca_pem: ca_cert.pem(),
        server_pem: server.pem(),
        server_key: server_key.serialize_pem(),
        client_pem: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn agent_config(
    dir: &std::path::Path,
    tls_port: u16,
    ip: std::net::SocketAddr,
    password_file: &str,
) -> String {
    format!(
        "agent_id = \"shop-tls\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nusername = \"agent\"\npassword_file = \"{password_file}\"\nca_file = \"{d}/ca.pem\"\nclient_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\nkeep_alive = \"5s\"\n[store]\npath = \"{d}/store\"\n[[terminals]]\nid = \"ip-1\"\nkind = \"ip\"\naddr = \"{ip}\"\n",
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_ca_client_cert_and_password() {
    if !mosquitto_available() {
        return;
    }
    let pki = pki();
    let tls_port = free_port();
    let m = Mosquitto::start_with(|d| {
        std::fs::write(d.join("ca.pem"), &pki.ca_pem).expect("ca");
        std::fs::write(d.join("server.pem"), &pki.server_pem).expect("srv");
        std::fs::write(d.join("server.key"), &pki.server_key).expect("srv key");
        let st = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(d.join("passwd"))
            .args(["agent", "s3cret"])
            .status()
            .expect("mosquitto_passwd");
        assert!(st.success());
        format!(
            "listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n",
            d = d.display()
        )
    });
    wait_port(tls_port);

    let sim = IpSim::bind(
        "127.0.0.1:0".parse().expect("addr"),
        SimOptions {
            fail_rate: 0.0,
            ..Default::default()
        },
    )
    .await
    .expect("sim");
    let ip = sim.local_addr();
    let stop = CancellationToken::new();
    let _sim = sim.spawn(stop.clone());

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), &pki.ca_pem).expect("ca");
    std::fs::write(d.join("client.pem"), &pki.client_pem).expect("client");
    std::fs::write(d.join("client.key"), &pki.client_key).expect("client key");
    std::fs::write(d.join("pw"), "s3cret\n").expect("pw");
    std::fs::write(d.join("bad-pw"), "wrong\n").expect("pw");

    // The cloud listens on the plain loopback listener.
    let cloud = Cloud::connect(m.port, "shop-tls", "cloud-tls", false).await;
    let cfg = d.join("posbridge.toml");
    std::fs::write(
        &cfg,
        agent_config(d, tls_port, ip, &d.join("pw").display().to_string()),
    )
    .expect("cfg");
    let mut agent = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("POSBRIDGE__SECURITY__ALLOW_UNSIGNED", "true")
        .stderr(std::fs::File::create(d.join("agent.log")).expect("log"))
        .spawn()
        .expect("agent");
    cloud.online().await;
    cloud.send(pay("tls-1", "ip-1", 100)).await;
    assert_eq!(cloud.result("tls-1").await["state"], "succeeded");
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
    assert!(!log.contains("s3cret"), "the password must never be logged");

    // Wrong password: never online, the log says why, and the password is not logged.
    let cfg2 = d.join("bad.toml");
    std::fs::write(
        &cfg2,
        agent_config(d, tls_port, ip, &d.join("bad-pw").display().to_string())
            .replace("shop-tls", "shop-bad")
            .replace(
                &format!("{}/store", d.display()),
                &format!("{}/store2", d.display()),
            ),
    )
    .expect("cfg");
    let mut bad = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg2)
        .env("POSBRIDGE__SECURITY__ALLOW_UNSIGNED", "true")
        .stderr(std::fs::File::create(d.join("bad.log")).expect("log"))
        .spawn()
        .expect("agent");
    let refused = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let log = std::fs::read_to_string(d.join("bad.log")).unwrap_or_default();
            if log.contains("refused the connection") || log.contains("NotAuthorized") {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the agent reports the refused login");
    assert!(
        !refused.contains("wrong"),
        "the password must never be logged"
    );
    let _ = bad.kill();
    let _ = bad.wait();
    stop.cancel();
}

/// A server certificate from an unknown CA is refused (no silent insecure fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_refuses_an_unknown_server_ca() {
    if !mosquitto_available() {
        return;
    }
    let pki = pki();
    let other = pki_ca_only();
    let tls_port = free_port();
    let _m = Mosquitto::start_with(|d| {
        std::fs::write(d.join("server.pem"), &pki.server_pem).expect("srv");
        std::fs::write(d.join("server.key"), &pki.server_key).expect("srv key");
        format!(
            "listener {tls_port} 127.0.0.1\nallow_anonymous true\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
            d = d.display()
        )
    });
    wait_port(tls_port);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), other).expect("ca");
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "agent_id = \"shop-x\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{d}/ca.pem\"\n[store]\npath = \"{d}/store\"\n",
            d = d.display()
        ),
    )
    .expect("cfg");
    let mut agent = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("POSBRIDGE__SECURITY__ALLOW_UNSIGNED", "true")
        .stderr(std::fs::File::create(d.join("agent.log")).expect("log"))
        .spawn()
        .expect("agent");
    let log = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let log = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
            if log.contains("broker connection lost") {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("connection refused");
    assert!(
        log.to_lowercase().contains("certificate") || log.contains("Tls"),
        "{log}"
    );
    assert!(!log.contains("connected to broker"));
    let _ = agent.kill();
    let _ = agent.wait();
}

fn pki_ca_only() -> String {
    let key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.self_signed(&key).expect("ca").pem()
}
