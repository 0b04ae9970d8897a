//! `posbridge cloud …` against a running agent: a payment by decimal amount, its status,
//! a refusal's exit code, no result in time; `reconcile` and `watch`.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::process::Output;

use common::*;
use tokio_util::sync::CancellationToken;

async fn cloud(port: u16, agent: &str, args: &[&str]) -> Output {
    let broker = format!("mqtt://127.0.0.1:{port}");
    tokio::process::Command::new(agent_bin())
        .args(["cloud", "--broker", &broker, "--agent", agent])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run posbridge cloud")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_pay_status_and_exit_codes() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let (addr, stats) = approving_ip_sim(Some(5), 50, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = AgentSpec::new("cli-shop", broker.port()).ip("ip-1", addr);
    let (_watch, _agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;

    // A payment by decimal amount: 12.50 AZN = 1250 minor units; evt progress on stderr.
    let pay = ["pay", "--terminal", "ip-1", "--amount", "12.50", "--currency", "azn"];
    let out = cloud(broker.port(), "cli-shop", &[&["--id", "cli-pay-1"], &pay[..]].concat()).await;
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let r = stdout_json(&out);
    assert_eq!((r["id"].as_str(), r["state"].as_str()), (Some("cli-pay-1"), Some("succeeded")));
    assert_eq!((r["amount"].as_i64(), r["currency"].as_str()), (Some(1250), Some("AZN")), "{r}");
    assert!(t.contains("in_progress"), "progress from evt: {t}");
    assert_eq!(stats.executions("cli-pay-1"), 1);

    // Its stored outcome by status.
    let out = cloud(broker.port(), "cli-shop", &["status", "--target", "cli-pay-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout_json(&out)["target"]["state"], "succeeded");

    // A refusal has its own exit code; nothing reached the terminal.
    let nope = ["pay", "--terminal", "nope", "--minor", "100", "--currency", "AZN"];
    let out = cloud(broker.port(), "cli-shop", &nope).await;
    assert_eq!(out.status.code(), Some(4), "{}", output_text(&out));
    assert_eq!(stdout_json(&out)["error"]["code"], "unknown_terminal");

    // A bad amount is refused before anything is sent.
    let bad = ["pay", "--terminal", "ip-1", "--amount", "1.234", "--currency", "AZN"];
    let out = cloud(broker.port(), "cli-shop", &bad).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(output_text(&out).contains("--amount"), "{}", output_text(&out));

    // No agent behind the id: no result within --wait, its own exit code.
    let out = cloud(broker.port(), "nobody", &["--wait", "1", "ping"]).await;
    assert_eq!(out.status.code(), Some(8), "{}", output_text(&out));
    stop.cancel();
}

/// `cloud reconcile` finds the agent's `unknown` payment and learns its real outcome from
/// the terminal; `cloud watch` lists the agent with its terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_reconcile_and_watch() {
    let broker = embedded();
    let stop = CancellationToken::new();
    // The terminal answers after 1.5 s, past the agent's 300 ms timeout: `unknown`.
    let (addr, stats) = approving_ip_sim(None, 1_500, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = [("op_timeout", "300ms"), ("recovery_window", "300ms")];
    let spec = AgentSpec::new("cli-rec", broker.port()).ip_with("ip-1", addr, &slow);
    let (cloud_pos, _agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    assert_unknown(&cloud_pos.ask(pay("rec-1", "ip-1", 700)).await);
    assert!(stats.executed("rec-1", std::time::Duration::from_secs(10)).await, "terminal done");

    let out = cloud(broker.port(), "cli-rec", &["reconcile"]).await;
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let line = stdout_json(&out);
    assert_eq!(
        (line["id"].as_str(), line["now"].as_str()),
        (Some("rec-1"), Some("succeeded")),
        "{t}"
    );
    assert!(line["transaction_id"].is_string(), "{line}");
    assert!(t.contains("1 reconciled, 0 still unknown"), "{t}");
    // The payment was not run again by asking about it.
    assert_eq!(stats.executions("rec-1"), 1);

    // watch needs no --agent; it sees the agent from its retained status and terminals.
    let b = format!("mqtt://127.0.0.1:{}", broker.port());
    let out = tokio::process::Command::new(agent_bin())
        .args(["cloud", "--broker", &b, "watch", "--for", "2", "--json"])
        .output()
        .await
        .expect("run posbridge cloud watch");
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
    let agents = v["agents"].as_array().cloned().unwrap_or_default();
    let me = agents.iter().find(|a| a["agent"] == "cli-rec").unwrap_or_else(|| panic!("{last}"));
    assert_eq!(me["state"], "online", "{me}");
    assert!(me["terminals"].as_str().is_some_and(|t| t.starts_with("ip-1:")), "{me}");
    stop.cancel();
}

/// `posbridge cloud` over TLS with a login, as a vendor runs it against a real broker:
/// the broker verified against a CA file, a client certificate, a username and a password
/// from a file. A wrong password is refused without the password appearing anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_over_mqtts_with_a_login() {
    let Some((pki, tls_port)) = common::tls::pki_and_port() else { return };
    let m = pki.mosquitto(tls_port, "pos", "s3cret-pos");
    wait_port(tls_port);
    let stop = CancellationToken::new();
    let (addr, _stats) = approving_ip_sim(None, 0, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The agent on the broker's plain loopback listener; the CLI on its TLS one.
    let spec = AgentSpec::new("cli-tls", m.port).ip("ip-1", addr);
    let (_cloud, _agent) = Cloud::with_agent(&spec, d, &[]).await;
    pki.write_client_files(d);
    std::fs::write(d.join("pw"), "s3cret-pos\n").expect("pw");
    std::fs::write(d.join("bad-pw"), "wrong-pos\n").expect("pw");
    let run = |pw: &str| {
        let broker = format!("mqtts://127.0.0.1:{tls_port}");
        let p = |f: &str| d.join(f).display().to_string();
        let args = [
            "cloud",
            "--broker",
            &broker,
            "--agent",
            "cli-tls",
            "--username",
            "pos",
            "--password-file",
            &p(pw),
            "--ca-file",
            &p("ca.pem"),
            "--client-cert-file",
            &p("client.pem"),
            "--client-key-file",
            &p("client.key"),
            "--wait",
            "5",
            "ping",
        ]
        .map(String::from);
        tokio::process::Command::new(agent_bin()).args(args).env_remove("RUST_LOG").output()
    };
    let out = run("pw").await.expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(stdout_json(&out)["state"], "succeeded");
    let out = run("bad-pw").await.expect("run");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no MQTT connection"), "{text}");
    assert!(!text.contains("wrong-pos") && !text.contains("s3cret-pos"), "{text}");
    stop.cancel();
}
