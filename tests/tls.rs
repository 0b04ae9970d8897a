//! MQTT over TLS against a real mosquitto: server verified against a CA file, mutual TLS
//! with a client certificate, username + password file. Certificates are made by the test.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use common::tls::{pki_and_port, pki_ca_only};
use common::*;
use tokio_util::sync::CancellationToken;

fn agent_config(
    dir: &std::path::Path, tls_port: u16, ip: std::net::SocketAddr, password_file: &str,
) -> String {
    format!(
        "agent_id = \"shop-tls\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nusername = \"agent\"\npassword_file = \"{password_file}\"\nca_file = \"{d}/ca.pem\"\nclient_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\nkeep_alive = \"5s\"\n[store]\npath = \"{d}/store\"\n[[terminals]]\nid = \"ip-1\"\nkind = \"ip\"\naddr = \"{ip}\"\n",
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_ca_client_cert_and_password() {
    let Some((pki, tls_port)) = pki_and_port() else {
        return;
    };
    let m = pki.mosquitto(tls_port, "agent", "s3cret");
    wait_port(tls_port);

    let stop = CancellationToken::new();
    let (ip, _) = approving_ip_sim(None, 0, &stop).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    pki.write_client_files(d);
    std::fs::write(d.join("pw"), "s3cret\n").expect("pw");
    std::fs::write(d.join("bad-pw"), "wrong\n").expect("pw");

    // The cloud listens on the plain loopback listener.
    let cloud = Cloud::connect(m.port, "shop-tls", "cloud-tls", false).await;
    let cfg = write_config(
        d,
        "posbridge.toml",
        &agent_config(d, tls_port, ip, &d.join("pw").display().to_string()),
    );
    let mut agent = run_agent(&cfg, &d.join("agent.log"));
    cloud.online().await;
    cloud.send(pay("tls-1", "ip-1", 100)).await;
    assert_eq!(cloud.result("tls-1").await["state"], "succeeded");
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
    assert!(!log.contains("s3cret"), "the password must never be logged");

    // Wrong password: never online, the log says why, and the password is not logged.
    let cfg2 = write_config(
        d,
        "bad.toml",
        &agent_config(d, tls_port, ip, &d.join("bad-pw").display().to_string())
            .replace("shop-tls", "shop-bad")
            .replace(&format!("{}/store", d.display()), &format!("{}/store2", d.display())),
    );
    let mut bad = run_agent(&cfg2, &d.join("bad.log"));
    let refused = wait_log(&d.join("bad.log"), "the agent reports the refused login", |log| {
        log.contains("refused the connection") || log.contains("NotAuthorized")
    })
    .await;
    assert!(!refused.contains("wrong"), "the password must never be logged");
    let _ = bad.kill();
    let _ = bad.wait();
    stop.cancel();
}

/// A server certificate from an unknown CA is refused (no silent insecure fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_refuses_an_unknown_server_ca() {
    let Some((pki, tls_port)) = pki_and_port() else {
        return;
    };
    let other = pki_ca_only();
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
    let cfg = write_config(d, "c.toml", &format!(
            "agent_id = \"shop-x\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{d}/ca.pem\"\n[store]\npath = \"{d}/store\"\n",
            d = d.display()
        ));
    let mut agent = run_agent(&cfg, &d.join("agent.log"));
    let log = wait_log(&d.join("agent.log"), "connection refused", |log| {
        log.contains("broker connection lost")
    })
    .await;
    assert!(log.to_lowercase().contains("certificate") || log.contains("Tls"), "{log}");
    assert!(!log.contains("connected to broker"));
    let _ = agent.kill();
    let _ = agent.wait();
}
