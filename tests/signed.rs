//! Signed commands: with `security.command_keys` set, only envelopes signed by a known
//! key run; unsigned, forged, unknown-kid and replayed-with-another-signature commands are
//! `rejected`/`unauthorized` and never reach the terminal. `posbridge sign` produces
//! envelopes the agent accepts.
// The test kit (brokers, simulators, the agent as a child process) is a default
// feature; a `--no-default-features` build of the tests leaves this file out.
#![cfg(feature = "testkit")]

mod common;

use std::process::Command;

use common::*;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use posbridge::api::signature::seal;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn sign_with_cli(key_file: &std::path::Path, kid: &str, cmd: &Value) -> Vec<u8> {
    let out = output_with_stdin(
        Command::new(BIN).args(["sign", "--kid", kid, "--key"]).arg(key_file),
        cmd.to_string().as_bytes(),
    );
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8").trim().as_bytes().to_vec()
}

/// An IP terminal simulator that approves everything, a cloud key pair whose public half
/// is written to `dir/<kid>.pub`, and the agent's spec naming it (`security_extra` adds
/// `[security]` keys). Returns the key, the simulator's stats and the spec.
async fn signed_setup(
    dir: &std::path::Path, broker: u16, kid: &str, security_extra: &str, stop: &CancellationToken,
) -> (SigningKey, posbridge::sim::ip::SimStats, AgentSpec) {
    let (addr, stats) = approving_ip_sim(None, 0, stop).await;
    let (sk, security) = cloud_key(dir, kid);
    let spec = AgentSpec {
        extra: format!("{security}{security_extra}"),
        ..AgentSpec::new("shop-signed", broker).ip("ip-1", addr)
    };
    (sk, stats, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_commands_run() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sk, stats, spec) = signed_setup(dir.path(), broker.port(), "cloud-1", "", &stop).await;
    let priv_file = dir.path().join("cloud-1.key");
    let secret = p256::SecretKey::from(&sk);
    std::fs::write(&priv_file, secret.to_pkcs8_pem(LineEnding::LF).expect("pkcs8").as_bytes())
        .expect("write key");
    let (cloud, _agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;

    // Signed by the CLI with the configured key: runs.
    let cmd = signed_pay("s-1", 1200);
    let env = sign_with_cli(&priv_file, "cloud-1", &cmd);
    cloud.send_raw(env.clone()).await;
    let r = cloud.result("s-1").await;
    assert_eq!(r["state"], "succeeded", "{r}");

    // Unsigned: refused, id not trusted.
    cloud.send(pay("s-2", "ip-1", 100)).await;
    let r = cloud
        .wait("result", std::time::Duration::from_secs(10), |v| {
            v["error"]["code"] == "unauthorized"
                && v["raw"].as_str().is_some_and(|s| s.contains("s-2"))
        })
        .await;
    assert_eq!(r["id"], Value::Null);
    assert_eq!(r["state"], "rejected");

    // Forged: the signed bytes changed after signing.
    let mut forged: Value = serde_json::from_slice(&env).expect("json");
    forged["signed"] = json!(base64_url(&pay("s-3", "ip-1", 999_999).to_string()));
    cloud.send(forged).await;
    cloud.refusal("bad signature").await;

    // Unknown kid.
    let other = SigningKey::generate();
    cloud.send(seal(pay("s-4", "ip-1", 100).to_string().as_bytes(), "cloud-9", &other)).await;
    cloud.refusal("unknown kid").await;

    // Replay of the identical envelope: never executed again, the stored result returns.
    cloud.send_raw(env).await;
    let all =
        cloud.wait_n("result", std::time::Duration::from_secs(10), 2, |v| v["id"] == "s-1").await;
    assert_eq!(all[0], all[1]);
    // Same id, different (validly signed) body: a forgery/replay attempt, refused.
    let reuse = signed_pay("s-1", 5);
    cloud.send(seal(reuse.to_string().as_bytes(), "cloud-1", &sk)).await;
    cloud.refusal("already used by a different signed command").await;

    assert_eq!(stats.executions("s-1"), 1);
    for id in ["s-2", "s-3", "s-4"] {
        assert_eq!(stats.executions(id), 0, "{id} must never reach the terminal");
    }
    stop.cancel();
}

/// A payment as a signing cloud sends it: naming this agent, with a near deadline.
fn signed_pay(id: &str, amount: i64) -> Value {
    let mut c = pay(id, "ip-1", amount);
    c["agent"] = json!("shop-signed");
    c["expires_at"] = json!(in_minutes(5));
    c
}

fn in_minutes(m: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::minutes(m))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `mqtt-api.md`: Signed commands — a signed command must name this agent and carry an
/// `expires_at` at most `security.max_command_age` ahead; anything else is refused
/// (`unauthorized`) and never reaches the terminal. Keys given twice are refused in any
/// payload. A command naming another agent is refused unsigned too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commands_are_bound_to_one_agent_and_a_near_deadline() {
    let broker = embedded();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sk, stats, spec) =
        signed_setup(dir.path(), broker.port(), "k", "max_command_age = \"10m\"\n", &stop).await;
    let (cloud, _agent) = Cloud::with_agent(&spec, dir.path(), &[]).await;
    let send = |v: Value| {
        let env = seal(v.to_string().as_bytes(), "k", &sk);
        let c = &cloud;
        async move { c.send(env).await }
    };
    let mut other_shop = signed_pay("b-1", 100);
    other_shop["agent"] = json!("shop-next-door");
    let mut no_agent = signed_pay("b-2", 100);
    no_agent.as_object_mut().map(|o| o.remove("agent"));
    let mut no_deadline = signed_pay("b-3", 100);
    no_deadline.as_object_mut().map(|o| o.remove("expires_at"));
    let mut far = signed_pay("b-4", 100);
    far["expires_at"] = json!(in_minutes(60));
    for (cmd, why) in [
        (other_shop, "meant for agent"),
        (no_agent, "field agent: required"),
        (no_deadline, "field expires_at: required"),
        (far, "max_command_age"),
    ] {
        let id = cmd["id"].as_str().unwrap_or_default().to_string();
        send(cmd).await;
        let r = cloud.result(&id).await;
        assert_eq!(r["state"], "rejected", "{r}");
        assert_eq!(r["error"]["code"], "unauthorized", "{r}");
        assert!(r["error"]["message"].as_str().unwrap_or("").contains(why), "{r}");
        assert_eq!(stats.executions(&id), 0);
    }
    // Within the rules: runs.
    send(signed_pay("b-5", 100)).await;
    assert_eq!(cloud.result("b-5").await["state"], "succeeded");
    // A key given twice (which one would count?): refused before anything else.
    let env = seal(
        br#"{"v":1,"id":"b-6","op":"payment","terminal":"ip-1","amount":1,"amount":99999,"currency":"AZN"}"#,
        "k",
        &sk,
    );
    cloud.send(env).await;
    cloud.refusal("twice").await;
    assert_eq!(stats.executions("b-6"), 0);
    stop.cancel();
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// The config `dir/c.toml` of agent `a`: a broker nothing answers on, the store in
/// `dir/store`, then `rest`.
fn offline_config(dir: &std::path::Path, rest: &str) -> std::path::PathBuf {
    write_config(
        dir,
        "c.toml",
        &format!(
            "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[store]\npath = \"{}\"\n{rest}",
            dir.join("store").display()
        ),
    )
}

#[test]
fn unreadable_key_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = offline_config(
        dir.path(),
        &format!(
            "[security]\ncommand_keys = [{{ kid = \"k\", public_key_file = \"{}/missing.pem\" }}]\n",
            dir.path().display()
        ),
    );
    let out = posbridge_with(&["run"], &cfg).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("command_keys[0].public_key_file"));
}

/// Signed commands are the default: with a payment terminal and no cloud keys, `run`
/// refuses to start (and says how to fix it) unless `security.allow_unsigned = true`;
/// `doctor` fails its `security` check the same way.
#[test]
fn unsigned_is_opt_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = offline_config(
        dir.path(),
        "[[terminals]]\nid = \"ip-1\"\nkind = \"ip\"\naddr = \"127.0.0.1:9\"\n",
    );
    let out = posbridge_with(&["run"], &cfg)
        .env_remove("POSBRIDGE__SECURITY__ALLOW_UNSIGNED")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("security.command_keys is empty"), "{err}");
    assert!(err.contains("allow_unsigned"), "{err}");
    assert!(!dir.path().join("store").exists(), "refused before anything was created");
    let doctor = posbridge_with(&["doctor"], &cfg).output().expect("doctor");
    let text = output_text(&doctor);
    assert!(text.contains("security"), "{text}");
    assert!(!doctor.status.success(), "{text}");
}
