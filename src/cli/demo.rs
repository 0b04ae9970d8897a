//! `posbridge demo`: an embedded broker, a simulator for every terminal kind, the agent
//! and a scripted cloud POS that signs its commands, in one process on loopback. Prints what crosses the wire and exits
//! 0 only when every step got its expected outcome.

use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::sim::ip::{IpSim, SimOptions};

/// One scripted step: what the cloud sends and what it must get back.
struct Step {
    title: &'static str,
    payload: Vec<u8>,
    /// `None` for a payload with no usable id (the result carries `"id": null`).
    id: Option<String>,
    expect_state: &'static str,
    expect_code: Option<&'static str>,
}

fn cmd(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// The command `v`, whose result (by `v`'s id) is expected to end `expect_state`, with
/// error `expect_code` if one is given.
fn step(
    title: &'static str,
    v: Value,
    expect_state: &'static str,
    expect_code: Option<&'static str>,
) -> Step {
    Step {
        title,
        id: v["id"].as_str().map(String::from),
        payload: cmd(v),
        expect_state,
        expect_code,
    }
}

/// A cloud POS: an MQTT client subscribed to the agent's outbound topics.
pub struct CloudPos {
    pub client: AsyncClient,
    events: EventLoop,
    root: String,
    quiet: bool,
    signer: Option<Signer>,
}

/// Signs commands the way a cloud POS must for an agent with `security.command_keys`
/// (`mqtt-api.md`: Signed commands): naming the agent, with a near deadline, sealed with
/// the cloud's P-256 key. A repeated id sends the very same envelope (a retry).
pub struct Signer {
    pub kid: String,
    pub key: p256::ecdsa::SigningKey,
    pub agent_id: String,
    /// Envelope and signed bytes by id.
    sent: std::collections::HashMap<String, (Vec<u8>, Vec<u8>)>,
}

impl Signer {
    pub fn new(kid: &str, key: p256::ecdsa::SigningKey, agent_id: &str) -> Signer {
        Signer {
            kid: kid.into(),
            key,
            agent_id: agent_id.into(),
            sent: Default::default(),
        }
    }

    /// The envelope for `payload`, and the command bytes it signs.
    fn seal(&mut self, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut inner = payload.to_vec();
        let mut id = None;
        if let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(payload) {
            id = o.get("id").and_then(Value::as_str).map(str::to_string);
            if let Some(prev) = id.as_ref().and_then(|i| self.sent.get(i)) {
                return prev.clone();
            }
            o.entry("agent")
                .or_insert_with(|| Value::String(self.agent_id.clone()));
            o.entry("expires_at").or_insert_with(|| {
                Value::String(crate::api::ts(
                    chrono::Utc::now() + chrono::Duration::minutes(5),
                ))
            });
            inner = Value::Object(o).to_string().into_bytes();
        }
        let env = crate::api::signature::seal(&inner, &self.kid, &self.key)
            .to_string()
            .into_bytes();
        if let Some(id) = id {
            self.sent.insert(id, (env.clone(), inner.clone()));
        }
        (env, inner)
    }
}

impl CloudPos {
    pub async fn connect(port: u16, root: &str, quiet: bool) -> anyhow::Result<CloudPos> {
        let mut o = MqttOptions::new(
            format!("cloud-pos-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(10));
        o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut events) = AsyncClient::new(o, 100);
        events.network_options.set_tcp_nodelay(true);
        client
            .subscribe(format!("{root}/#"), QoS::AtLeastOnce)
            .await?;
        let mut pos = CloudPos {
            client,
            events,
            root: root.to_string(),
            quiet,
            signer: None,
        };
        // Wait for the subscription to be in place.
        pos.next_matching(Duration::from_secs(5), |ev| {
            matches!(ev, Incoming::SubAck(_))
        })
        .await
        .context("subscribing the cloud POS")?;
        Ok(pos)
    }

    /// Sign every command from now on.
    pub fn sign_with(&mut self, signer: Signer) {
        self.signer = Some(signer);
    }

    pub async fn send(&mut self, payload: Vec<u8>) -> anyhow::Result<()> {
        let (payload, shown) = match self.signer.as_mut() {
            Some(s) => {
                let (env, inner) = s.seal(&payload);
                (
                    env,
                    format!(
                        "{} (signed, kid {})",
                        String::from_utf8_lossy(&inner),
                        s.kid
                    ),
                )
            }
            None => (
                payload.clone(),
                String::from_utf8_lossy(&payload).into_owned(),
            ),
        };
        if !self.quiet {
            println!("  cloud → {}/cmd  {shown}", self.root);
        }
        self.client
            .publish(
                format!("{}/cmd", self.root),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
        Ok(())
    }

    async fn next_matching(
        &mut self,
        within: Duration,
        mut f: impl FnMut(&Incoming) -> bool,
    ) -> anyhow::Result<Incoming> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.poll())
                .await
                .context("timed out waiting for the agent")??;
            if let Event::Incoming(i) = ev {
                if f(&i) {
                    return Ok(i);
                }
            }
        }
    }

    /// Wait for a message on `{root}/{sub}` whose JSON satisfies `pred`; print the traffic.
    pub async fn wait_for(
        &mut self,
        sub: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let topic = format!("{}/{}", self.root, sub);
        let root = self.root.clone();
        let quiet = self.quiet;
        let mut found = None;
        self.next_matching(within, |i| {
            let Incoming::Publish(p) = i else {
                return false;
            };
            let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
            if !quiet && !p.topic.ends_with("/cmd") {
                let short = p.topic.strip_prefix(&root).unwrap_or(&p.topic);
                println!("  agent → {short:<22} {v}");
            }
            if p.topic == topic && pred(&v) {
                found = Some(v);
                true
            } else {
                false
            }
        })
        .await?;
        found.context("no message")
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
        crate::sim::token::SimOptions {
            seed: Some(7),
            ..Default::default()
        },
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
    let mut pos = CloudPos::connect(port, root, quiet).await?;
    pos.sign_with(Signer::new("demo-cloud", cloud_key, "demo-shop"));
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(crate::agent::run(cfg, agent_stop.clone()));
    pos.wait_for("status", Duration::from_secs(10), |v| {
        v["state"] == "online"
    })
    .await
    .context("agent never came online")?;

    let past = crate::api::ts(chrono::Utc::now() - chrono::Duration::minutes(5));
    let steps = [
        step(
            "payment (approved)",
            json!({"v":1,"id":"demo-pay-1","op":"payment","terminal":"ip-1","amount":1500,"currency":"AZN"}),
            "succeeded",
            None,
        ),
        step(
            "payment (declined by the terminal)",
            json!({"v":1,"id":"demo-pay-2","op":"payment","terminal":"ip-1","amount":2500,"currency":"AZN"}),
            "failed",
            None,
        ),
        step(
            "duplicate id (answered from the store, never charged again)",
            json!({"v":1,"id":"demo-pay-1","op":"payment","terminal":"ip-1","amount":1500,"currency":"AZN"}),
            "succeeded",
            None,
        ),
        step(
            "refund by original",
            json!({"v":1,"id":"demo-refund-1","op":"refund","terminal":"ip-1","amount":500,"original":"demo-pay-1"}),
            "succeeded",
            None,
        ),
        step(
            "fiscal sale on the Token register (basket, kuruş)",
            json!({"v":1,"id":"demo-fiscal-1","op":"payment","terminal":"token-1",
                "amount":2000,"currency":"TRY","basket":{
                "items":[{"name":"Su","price":500,"quantity":1,"section_no":1},
                         {"name":"Armut","price":1500,"quantity":1,"section_no":1}],
                "payments":[{"type":1,"amount":2000,"description":"nakit"}]}}),
            "succeeded",
            None,
        ),
        step(
            "fiscal basket that does not add up (rejected before the register)",
            json!({"v":1,"id":"demo-fiscal-2","op":"payment","terminal":"token-1",
                "amount":2000,"currency":"TRY","basket":{
                "items":[{"name":"Su","price":500,"quantity":1,"section_no":1}],
                "payments":[{"type":1,"amount":2000}]}}),
            "rejected",
            Some("bad_request"),
        ),
        step(
            "Kaspi Smart POS: QR payment (approved; 1 511 ₸ = 151100 tiyn)",
            json!({"v":1,"id":"demo-kaspi-1","op":"payment","terminal":"kaspi-1","amount":151100,"currency":"KZT"}),
            "succeeded",
            None,
        ),
        step(
            "Kaspi Smart POS: amount in tiyn (rejected before the terminal: whole tenge only)",
            json!({"v":1,"id":"demo-kaspi-2","op":"payment","terminal":"kaspi-1","amount":150050,"currency":"KZT"}),
            "rejected",
            Some("invalid_amount"),
        ),
        Step {
            title: "malformed command",
            payload: br#"{"v":1,"id":"demo-bad","op":"payment","amount":"#.to_vec(),
            id: None,
            expect_state: "rejected",
            expect_code: Some("bad_request"),
        },
        step(
            "expired command (deadline already past)",
            json!({"v":1,"id":"demo-late-1","op":"payment","terminal":"ip-1","amount":100,"currency":"AZN","expires_at":past}),
            "expired",
            Some("expired"),
        ),
        step(
            "paywall sale (test mode, mock Paywall cloud)",
            json!({"v":1,"id":"demo-pw-1","op":"payment","terminal":"paywall-1","amount":2200,"currency":"TRY",
                       "products":[{"name":"Saç Tıraşı","amount":2200,"quantity":1,"tax_group_id":10,"unit_code_id":1}]}),
            "succeeded",
            None,
        ),
        step(
            "paywall sale whose products do not add up (refused before any request)",
            json!({"v":1,"id":"demo-pw-2","op":"payment","terminal":"paywall-1","amount":2200,"currency":"TRY",
                       "products":[{"name":"Su","amount":500,"quantity":1,"tax_group_id":10,"unit_code_id":1}]}),
            "rejected",
            Some("bad_request"),
        ),
        step(
            "kuveyt pay-by-link (payment_url on evt, customer pays)",
            json!({"v":1,"id":"demo-kv-1","op":"payment","terminal":"kuveyt-1","amount":15000,"currency":"TRY"}),
            "succeeded",
            None,
        ),
        step(
            "unknown terminal",
            json!({"v":1,"id":"demo-pay-9","op":"payment","terminal":"nope","amount":100,"currency":"AZN"}),
            "rejected",
            Some("unknown_terminal"),
        ),
    ];

    let mut ok = true;
    let mut first_txn = None;
    for (n, step) in steps.iter().enumerate() {
        println!("\n[{}] {}", n + 1, step.title);
        if step.id.as_deref() == Some("demo-pay-2") {
            control.set_fail_rate(1.0);
        } else {
            control.set_fail_rate(0.0);
        }
        pos.send(step.payload.clone()).await?;
        let want_id = step.id.clone().map(Value::String).unwrap_or(Value::Null);
        let res = pos
            .wait_for("result", Duration::from_secs(15), |v| v["id"] == want_id)
            .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                println!("  ✗ no result: {e:#}");
                ok = false;
                continue;
            }
        };
        let state_ok = res["state"] == step.expect_state;
        let code_ok = step.expect_code.is_none_or(|c| res["error"]["code"] == c);
        let mut extra_ok = true;
        if step.id.as_deref() == Some("demo-pay-1") {
            let txn = res["payment"]["transaction_id"].clone();
            match &first_txn {
                None => first_txn = Some(txn),
                Some(t) => extra_ok = *t == txn && stats.executions("demo-pay-1") == 1,
            }
        }
        if state_ok && code_ok && extra_ok {
            println!(
                "  ✓ {} {}",
                res["state"],
                res["error"]["code"].as_str().unwrap_or("")
            );
        } else {
            println!(
                "  ✗ expected {} {:?}, got {}",
                step.expect_state, step.expect_code, res
            );
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
    let offline = pos
        .wait_for("status", Duration::from_secs(5), |v| {
            v["state"] == "offline"
        })
        .await
        .is_ok();
    if !offline {
        println!("  ✗ agent did not publish offline on shutdown");
        ok = false;
    }
    shutdown.cancel();
    let _ = sim_task.await;
    let _ = token_task.await;
    let _ = kaspi_task.await;
    println!(
        "\n{}",
        if ok {
            "demo: all steps passed"
        } else {
            "demo: FAILED"
        }
    );
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
