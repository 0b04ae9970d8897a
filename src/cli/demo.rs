//! `posbridge demo`: an embedded broker, a simulator for every terminal kind, the agent
//! and a scripted cloud POS that signs its commands, in one process on loopback. Prints what crosses the wire and exits
//! 0 only when every step got its expected outcome.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pos::{self, Signer};
use crate::sim::ip::{IpSim, SimOptions};

/// The scripted steps: what the cloud sends and what it must get back.
const STEPS: &str = include_str!("demo_steps.json");

/// One scripted step (an entry of `demo_steps.json`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    title: String,
    /// The command; `"expires_at": "$PAST"` stands for a deadline five minutes ago.
    #[serde(default)]
    command: Option<Value>,
    /// Or raw bytes that are not a usable command (the result carries `"id": null`).
    #[serde(default)]
    raw: Option<String>,
    /// The IP terminal declines this one.
    #[serde(default)]
    declines: bool,
    expect: String,
    #[serde(default)]
    code: Option<String>,
}

impl Step {
    fn id(&self) -> Value {
        self.command.as_ref().map_or(Value::Null, |c| c["id"].clone())
    }

    fn payload(&self, past: &str) -> Vec<u8> {
        match (&self.command, &self.raw) {
            (Some(c), _) => {
                let mut c = c.clone();
                if c["expires_at"] == "$PAST" {
                    c["expires_at"] = Value::String(past.to_string());
                }
                c.to_string().into_bytes()
            }
            (None, raw) => raw.clone().unwrap_or_default().into_bytes(),
        }
    }
}

fn steps() -> anyhow::Result<Vec<Step>> {
    serde_json::from_str(STEPS).context("demo_steps.json")
}

/// The scripted cloud POS: a [`pos::Client`] on the agent's topics that signs what it
/// sends and prints what crosses the wire.
struct CloudPos {
    client: pos::Client,
    root: String,
    quiet: bool,
    signer: Signer,
}

impl CloudPos {
    async fn send(&mut self, payload: Vec<u8>) -> anyhow::Result<()> {
        let (env, inner) = self.signer.seal(&payload);
        if !self.quiet {
            let shown = String::from_utf8_lossy(&inner);
            let kid = &self.signer.kid;
            println!("  cloud → {}/cmd  {shown} (signed, kid {kid})", self.root);
        }
        self.client.send(&self.root, env).await
    }

    /// Wait for a message on `{root}/{sub}` whose JSON satisfies `pred`; print the traffic.
    async fn wait_for(
        &mut self, sub: &str, within: Duration, pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let (root, quiet) = (self.root.clone(), self.quiet);
        let show = |m: &pos::Message, v: &Value| {
            if !quiet && !m.topic.ends_with("/cmd") {
                let short = m.topic.strip_prefix(&root).unwrap_or(&m.topic);
                println!("  agent → {short:<22} {v}");
            }
        };
        let topic = format!("{}/{sub}", self.root);
        self.client
            .wait_for(&topic, within, show, pred)
            .await
            .with_context(|| format!("timed out waiting on {topic}"))
    }
}

pub async fn run(quiet: bool) -> anyhow::Result<bool> {
    let port = crate::broker::start_embedded().context("starting the embedded broker")?;
    let shutdown = CancellationToken::new();
    let sim = IpSim::loopback(SimOptions::approving(Some(7), 300))
        .await
        .context("starting the IP terminal simulator")?;
    let sim_addr = sim.local_addr();
    let stats = sim.stats();
    let control = sim.control();
    let sim_task = sim.spawn(shutdown.clone());
    let token_sim = crate::sim::token::TokenSim::loopback(
        crate::sim::token::SimOptions { seed: Some(7), ..Default::default() },
        None,
    )
    .await
    .context("starting the Token register simulator")?;
    let token_addr = token_sim.local_addr();
    let token_task = token_sim.spawn(shutdown.clone());
    let kaspi = crate::sim::kaspi::KaspiSim::bind(
        "127.0.0.1:0".parse()?,
        crate::sim::kaspi::SimOptions {
            seed: Some(7),
            customer_time: Duration::from_millis(600),
            ..Default::default()
        },
    )
    .await
    .context("starting the Kaspi simulator")?;
    let kaspi_url = kaspi.url();
    let kaspi_task = kaspi.spawn(shutdown.clone());

    let dir = tempfile::tempdir().context("temporary store directory")?;
    let cloud_terminals = cloud_mocks(dir.path(), shutdown.clone()).await?;
    // Signed commands are the default: the scripted cloud holds a P-256 key, the agent
    // its public half.
    let cloud_key = {
        use p256::elliptic_curve::Generate;
        p256::ecdsa::SigningKey::generate()
    };
    let pub_pem = {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        cloud_key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the demo cloud key")?
    };
    let pub_file = dir.path().join("demo-cloud.pub");
    std::fs::write(&pub_file, pub_pem).context("writing the demo cloud key")?;
    let cfg = Config::from_toml_str(&format!(
        r#"
agent_id = "demo-shop"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[store]
path = "{store}"
[telemetry]
interval = "5s"
[security]
command_keys = [{{ kid = "demo-cloud", public_key_file = "{pub_file}" }}]
[[terminals]]
id = "ip-1"
kind = "ip"
addr = "{sim_addr}"
[[terminals]]
id = "token-1"
kind = "token"
transport = "tcp"
addr = "{token_addr}"
[[terminals]]
id = "kaspi-1"
kind = "kaspi"
url = "{kaspi_url}"
protected = false
poll_interval = "200ms"
{cloud_terminals}"#,
        store = dir.path().join("store").display(),
        pub_file = pub_file.display()
    ))?;
    let root = "posbridge/demo-shop";
    println!("posbridge demo: broker 127.0.0.1:{port}, IP terminal simulator {sim_addr}, agent demo-shop");
    let client = pos::Client::connect(
        pos::Options::loopback(port, "demo-cloud-pos", Some(&format!("{root}/#"))),
        Duration::from_secs(5),
    )
    .await
    .context("connecting the cloud POS")?;
    let mut pos = CloudPos {
        client,
        root: root.to_string(),
        quiet,
        signer: Signer::new("demo-cloud", cloud_key, "demo-shop"),
    };
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(crate::agent::run(cfg, agent_stop.clone()));
    pos.wait_for("status", Duration::from_secs(10), |v| v["state"] == "online")
        .await
        .context("agent never came online")?;

    let past = crate::api::ts(chrono::Utc::now() - chrono::Duration::minutes(5));
    let steps = steps()?;

    let mut ok = true;
    let mut first_txn = None;
    for (n, step) in steps.iter().enumerate() {
        println!("\n[{}] {}", n + 1, step.title);
        control.set_fail_rate(if step.declines { 1.0 } else { 0.0 });
        pos.send(step.payload(&past)).await?;
        let want_id = step.id();
        let res = pos.wait_for("result", Duration::from_secs(15), |v| v["id"] == want_id).await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                println!("  ✗ no result: {e:#}");
                ok = false;
                continue;
            }
        };
        let state_ok = res["state"] == step.expect.as_str();
        let code_ok = step.code.as_deref().is_none_or(|c| res["error"]["code"] == c);
        let mut extra_ok = true;
        if want_id == "demo-pay-1" {
            let txn = res["payment"]["transaction_id"].clone();
            match &first_txn {
                None => first_txn = Some(txn),
                Some(t) => extra_ok = *t == txn && stats.executions("demo-pay-1") == 1,
            }
        }
        if state_ok && code_ok && extra_ok {
            println!("  ✓ {} {}", res["state"], res["error"]["code"].as_str().unwrap_or(""));
        } else {
            println!("  ✗ expected {} {:?}, got {}", step.expect, step.code, res);
            ok = false;
        }
    }
    println!(
        "\nterminal executed {} operations for {} requests; demo-pay-1 charged {} time(s)",
        stats.total_executions(),
        stats.requests(),
        stats.executions("demo-pay-1")
    );

    agent_stop.cancel();
    match agent.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("agent failed: {e:#}"),
        Err(e) => bail!("agent task failed: {e}"),
    }
    let offline =
        pos.wait_for("status", Duration::from_secs(5), |v| v["state"] == "offline").await.is_ok();
    if !offline {
        println!("  ✗ agent did not publish offline on shutdown");
        ok = false;
    }
    shutdown.cancel();
    let _ = sim_task.await;
    let _ = token_task.await;
    let _ = kaspi_task.await;
    println!("\n{}", if ok { "demo: all steps passed" } else { "demo: FAILED" });
    Ok(ok)
}

/// The Paywall and pay-by-link mocks on loopback, and the terminals that use them (test
/// mode, key files in `dir`).
async fn cloud_mocks(dir: &std::path::Path, shutdown: CancellationToken) -> anyhow::Result<String> {
    use crate::sim::kuveyt::{KuveytSim, KuveytSimOptions};
    use crate::sim::paywall::{PaywallSim, PaywallSimOptions};
    let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let pw = PaywallSim::bind(any, PaywallSimOptions::default())
        .await
        .context("starting the Paywall mock")?;
    let kv = KuveytSim::bind(any, KuveytSimOptions::default())
        .await
        .context("starting the pay-by-link mock")?;
    let (pw_url, kv_url) = (pw.base_url("test"), kv.base_url("test"));
    println!("posbridge demo: Paywall mock {pw_url}, pay-by-link mock {kv_url}");
    pw.spawn(shutdown.clone());
    kv.spawn(shutdown);
    for (name, value) in [("api_key", "test-api-key"), ("secret", "test-secret")] {
        std::fs::write(dir.join(name), value).context("writing demo key files")?;
    }
    let (key, secret) = (dir.join("api_key"), dir.join("secret"));
    Ok(format!(
        "[[terminals]]\nid = \"paywall-1\"\nkind = \"paywall\"\nmode = \"test\"\ntest_url = \"{pw_url}\"\nterminal_guid = \"8ff33705-57c7-42dc-8341-a0053e7f3009\"\napi_key_file = \"{k}\"\nclient_key_file = \"{s}\"\n\
         [[terminals]]\nid = \"kuveyt-1\"\nkind = \"kuveyt\"\nmode = \"test\"\ntest_url = \"{kv_url}\"\npoll_interval = \"2s\"\napi_key_file = \"{k}\"\napi_secret_file = \"{s}\"\n",
        k = key.display(),
        s = secret.display()
    ))
}
