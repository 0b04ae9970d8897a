//! `posbridge cloud …`: the cloud side's command line, for vendors and field engineers who
//! want to send one command to an agent and watch it, without hand-written JSON. Built on
//! [`crate::pos`]: builds the command (a fresh id unless `--id` is given, `expires_at` a
//! minute ahead), signs it when `--key` is given, publishes it, prints live progress from
//! `evt`, then the result. The exit code says the outcome. `watch` shows every agent under
//! the prefix (`watch.rs`); `reconcile` asks an agent about each of its `unknown` outcomes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::config::MqttEndpoint;
use crate::drivers::cloud::money;
use crate::pos::{self, Signer};

/// Exit codes by outcome: `succeeded` 0; anything else non-zero, `unknown` its own.
pub const EXIT_FAILED: u8 = 3;
pub const EXIT_REJECTED: u8 = 4;
pub const EXIT_EXPIRED: u8 = 5;
pub const EXIT_CANCELLED: u8 = 6;
pub const EXIT_UNKNOWN: u8 = 7;
/// No result within `--wait`.
pub const EXIT_NO_RESULT: u8 = 8;

#[derive(Args)]
pub struct CloudArgs {
    /// The broker: `mqtt://host[:port]` (port 1883) or `mqtts://host[:port]` (TLS, 8883).
    #[arg(long)]
    broker: String,
    /// MQTT username.
    #[arg(long)]
    username: Option<String>,
    /// A file holding the MQTT password (first line), or the `POSBRIDGE_CLOUD_PASSWORD`
    /// environment variable: never on the command line.
    #[arg(long, requires = "username")]
    password_file: Option<PathBuf>,
    /// mqtts: a CA certificate (PEM) trusted besides the system roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// mqtts: a client certificate (PEM) for brokers that ask for one.
    #[arg(long, requires = "client_key_file")]
    client_cert_file: Option<PathBuf>,
    /// mqtts: its private key (PEM).
    #[arg(long, requires = "client_cert_file")]
    client_key_file: Option<PathBuf>,
    /// The agent's `agent_id` (every op but `watch`).
    #[arg(long)]
    agent: Option<String>,
    /// The agent's `topic_prefix`.
    #[arg(long, default_value = "posbridge")]
    prefix: String,
    /// The command id; a fresh one when absent. The same id again is a safe retry.
    #[arg(long)]
    id: Option<String>,
    /// Sign with this P-256 private key (PEM), for agents with `security.command_keys`.
    #[arg(long, requires = "kid")]
    key: Option<PathBuf>,
    /// The key id the agent knows `--key`'s public half by.
    #[arg(long, requires = "key")]
    kid: Option<String>,
    /// How long to wait for the result, in seconds.
    #[arg(long, default_value_t = 300)]
    wait: u64,
    #[command(subcommand)]
    op: CloudOp,
}

/// Amounts: `--amount 12.50` (a decimal in the currency's units, at most as many decimals
/// as the currency has) or `--minor 1250` (minor units, as on the wire).
#[derive(Args)]
struct Amount {
    #[arg(long, conflicts_with = "minor")]
    amount: Option<String>,
    #[arg(long)]
    minor: Option<i64>,
}

#[derive(Subcommand)]
enum CloudOp {
    /// A payment on a terminal.
    Pay {
        #[arg(long)]
        terminal: String,
        #[command(flatten)]
        money: Amount,
        /// ISO 4217 code, e.g. TRY, KZT, AZN.
        #[arg(long)]
        currency: String,
    },
    /// A refund of an earlier payment (by its command id).
    Refund {
        #[arg(long)]
        terminal: String,
        #[arg(long)]
        original: String,
        #[command(flatten)]
        money: Amount,
        /// The payment's currency, to read `--amount` in (not sent: a refund is in the
        /// original payment's currency).
        #[arg(long, requires = "amount")]
        currency: Option<String>,
    },
    /// Cancel a queued (or cancellable running) command.
    Cancel {
        #[arg(long)]
        target: String,
    },
    /// The stored outcome of a command; asks the terminal about an `unknown` one.
    Status {
        #[arg(long)]
        target: String,
    },
    /// Recent commands, newest first.
    List {
        /// Only commands in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Is the agent there?
    Ping,
    /// A live table of every agent under `--prefix`: state, version, terminals, outbox,
    /// last error, age of the last heartbeat. Listens only.
    Watch {
        /// Redraw every this many seconds.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        every: u64,
        /// Listen this many seconds, print the table once and exit (for scripts).
        #[arg(long = "for")]
        for_secs: Option<u64>,
        /// Show an agent as `silent` after this many seconds without telemetry (default:
        /// three of the agent's own telemetry intervals, 180 s before its first heartbeat).
        #[arg(long)]
        stale: Option<u64>,
        /// One JSON line per redraw instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the agent about every `unknown` outcome it holds (`list` by state, then
    /// `status` on each, which asks the terminal where it can be asked).
    Reconcile,
}

pub async fn run(a: CloudArgs) -> ExitCode {
    let done = match &a.op {
        CloudOp::Watch { every, for_secs, stale, json } => {
            let o = super::watch::WatchOptions {
                prefix: a.prefix.clone(),
                every: Duration::from_secs(*every),
                stop_after: for_secs.map(Duration::from_secs),
                stale: stale.map(Duration::from_secs),
                json: *json,
            };
            let filters = super::watch::filters(&a.prefix);
            match connect(&a, filters).await {
                Ok(c) => super::watch::watch(c, o).await.map(|()| 0),
                Err(e) => Err(e),
            }
        }
        CloudOp::Reconcile => reconcile(&a).await,
        _ => send_and_watch(&a).await,
    };
    match done {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("posbridge cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `12.50` TRY → 1250, exactly, with the currency's own exponent
/// ([`money::parse_decimal`]); no sign, and a currency whose exponent is not known is
/// refused rather than guessed.
fn minor_units(text: &str, currency: &str) -> anyhow::Result<i64> {
    let Some(exp) = money::exponent(&currency.to_ascii_uppercase()) else {
        bail!("--currency {currency:?}: its decimal places are not known here; give --minor");
    };
    let minor = money::parse_decimal(text, exp).map_err(|e| anyhow::anyhow!("--amount {e}"))?;
    if minor < 0 {
        bail!("--amount {text:?}: must not be negative");
    }
    Ok(minor)
}

impl Amount {
    fn minor(&self, currency: Option<&str>) -> anyhow::Result<Option<i64>> {
        match (&self.amount, currency) {
            (Some(t), Some(c)) => minor_units(t, c).map(Some),
            (Some(_), None) => bail!("--amount needs --currency (or give --minor)"),
            (None, _) => Ok(self.minor),
        }
    }
}

/// The command the arguments describe.
fn command(a: &CloudArgs, id: &str) -> anyhow::Result<Value> {
    let mut c = Map::new();
    c.insert("v".into(), json!(1));
    c.insert("id".into(), json!(id));
    let ahead = crate::api::ts(chrono::Utc::now() + chrono::Duration::minutes(1));
    let mut put = |k: &str, v: Value| c.insert(k.into(), v);
    match &a.op {
        CloudOp::Pay { terminal, money, currency } => {
            let Some(amount) = money.minor(Some(currency))? else {
                bail!("pay needs --amount or --minor")
            };
            put("op", json!("payment"));
            put("terminal", json!(terminal));
            put("amount", json!(amount));
            put("currency", json!(currency.to_ascii_uppercase()));
            put("expires_at", json!(ahead));
        }
        CloudOp::Refund { terminal, original, money, currency } => {
            put("op", json!("refund"));
            put("terminal", json!(terminal));
            put("original", json!(original));
            if let Some(amount) = money.minor(currency.as_deref())? {
                put("amount", json!(amount));
            }
            put("expires_at", json!(ahead));
        }
        CloudOp::Cancel { target } => {
            put("op", json!("cancel"));
            put("target", json!(target));
        }
        CloudOp::Status { target } => {
            put("op", json!("status"));
            put("target", json!(target));
        }
        CloudOp::List { state, limit } => {
            put("op", json!("list"));
            if let Some(s) = state {
                put("state", json!(s));
            }
            if let Some(l) = limit {
                put("limit", json!(l));
            }
        }
        CloudOp::Ping => {
            put("op", json!("ping"));
        }
        CloudOp::Watch { .. } | CloudOp::Reconcile => bail!("not a single command"),
    }
    Ok(Value::Object(c))
}

/// `url` as a QR code in Unicode half blocks, for the customer's phone (feature `qr`);
/// `None` without the feature or when the URL is too long for a QR code.
#[cfg(feature = "qr")]
fn qr(url: &str) -> Option<String> {
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build(),
    )
}

#[cfg(not(feature = "qr"))]
fn qr(_url: &str) -> Option<String> {
    None
}

/// The connection `--broker` and the login and TLS flags describe (the agent's own URL
/// parser and TLS setup).
fn options(a: &CloudArgs, filters: Vec<String>) -> anyhow::Result<pos::Options> {
    let ep = MqttEndpoint::parse("--broker", &a.broker)?;
    let client_id = format!("posbridge-cloud-{}", std::process::id());
    let mut o = pos::Options::loopback(ep.port, &client_id, None);
    o.host = ep.host;
    o.subscribe = filters;
    if ep.tls {
        let files = crate::bus::tls::TlsFiles {
            ca_file: a.ca_file.clone(),
            client_cert_file: a.client_cert_file.clone(),
            client_key_file: a.client_key_file.clone(),
        };
        o.tls = Some(crate::bus::tls::client_config(&files)?);
    } else if a.ca_file.is_some() || a.client_cert_file.is_some() {
        bail!("--ca-file and --client-cert-file are for mqtts:// brokers");
    }
    if let Some(user) = &a.username {
        let password = match (&a.password_file, std::env::var("POSBRIDGE_CLOUD_PASSWORD")) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("--password-file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (None, Ok(p)) => p,
            (None, Err(_)) => String::new(),
        };
        o.credentials = Some((user.clone(), password));
    }
    Ok(o)
}

/// A client on `--broker`, subscribed to `filters`.
async fn connect(a: &CloudArgs, filters: Vec<String>) -> anyhow::Result<pos::Client> {
    let o = options(a, filters)?;
    pos::Client::connect(o, Duration::from_secs(10)).await
}

/// The agent's topic root, and its id.
fn agent_root(a: &CloudArgs) -> anyhow::Result<(String, &str)> {
    let Some(agent) = a.agent.as_deref() else { bail!("this op needs --agent ID") };
    Ok((format!("{}/{agent}", a.prefix), agent))
}

/// Sign `cmd` when `--key` is given, and publish it.
async fn publish(a: &CloudArgs, client: &pos::Client, cmd: &Value) -> anyhow::Result<()> {
    let (root, agent) = agent_root(a)?;
    let payload = cmd.to_string().into_bytes();
    let payload = match (&a.key, &a.kid) {
        (Some(key), Some(kid)) => {
            Signer::new(kid, super::tools::signing_key(key)?, agent).seal(&payload).0
        }
        _ => payload,
    };
    eprintln!("→ {root}/cmd {cmd}");
    client.send(&root, payload).await
}

async fn send_and_watch(a: &CloudArgs) -> anyhow::Result<u8> {
    let id = a.id.clone().unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4()));
    let cmd = command(a, &id)?;
    let (root, _) = agent_root(a)?;
    let (evt, res) = (format!("{root}/evt"), format!("{root}/result"));
    // These two only, not `{root}/#`: a least-privilege cloud login may not read the
    // command topic (docs/fleet.md, deploy/rabbitmq-users.sh).
    let mut client = connect(a, vec![res.clone(), evt.clone()]).await?;
    publish(a, &client, &cmd).await?;
    let show = |m: &pos::Message, v: &Value| {
        if m.topic == evt && v["id"] == id.as_str() {
            let sub = v["sub_state"].as_str().unwrap_or("");
            eprintln!("… {} {sub}", v["state"].as_str().unwrap_or("?"));
            if let Some(url) = v["detail"]["payment_url"].as_str() {
                eprintln!("  payment link: {url}");
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    if let Some(code) = qr(url) {
                        eprintln!("{code}");
                    }
                }
            }
        }
    };
    let within = Duration::from_secs(a.wait);
    let Some(result) = client.wait_for(&res, within, show, |v| v["id"] == id.as_str()).await else {
        eprintln!("posbridge cloud: no result for {id} within {within:?} (ask again: status --target {id})");
        return Ok(EXIT_NO_RESULT);
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(match result["state"].as_str() {
        Some("succeeded") => 0,
        Some("failed") => EXIT_FAILED,
        Some("rejected") => EXIT_REJECTED,
        Some("expired") => EXIT_EXPIRED,
        Some("cancelled") => EXIT_CANCELLED,
        _ => EXIT_UNKNOWN,
    })
}

/// `reconcile`: every `unknown` outcome the agent holds (`list` by state, page by page),
/// then `status` on each, which asks the terminal where it can be asked and records what
/// it learns (`target.reconciled`). Prints one line per command and a JSON summary; exit 0
/// when every one is now known, [`EXIT_UNKNOWN`] when some stay unknown.
async fn reconcile(a: &CloudArgs) -> anyhow::Result<u8> {
    let (root, _) = agent_root(a)?;
    let result_topic = format!("{root}/result");
    let mut client = connect(a, vec![result_topic.clone()]).await?;
    let within = Duration::from_secs(a.wait);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let ask = |n: usize, cmd: Map<String, Value>| {
        let id = format!("cli-rec-{}-{n}", &run[..12]);
        let mut cmd = cmd;
        cmd.insert("v".into(), json!(1));
        cmd.insert("id".into(), json!(id));
        (id, Value::Object(cmd))
    };
    let mut asked = 0;
    let mut unknown: Vec<Value> = Vec::new();
    let mut cursor: Option<Value> = None;
    loop {
        let mut m = Map::new();
        m.insert("op".into(), json!("list"));
        m.insert("state".into(), json!("unknown"));
        m.insert("limit".into(), json!(500));
        if let Some(c) = cursor.take() {
            m.insert("cursor".into(), c);
        }
        asked += 1;
        let (id, cmd) = ask(asked, m);
        publish(a, &client, &cmd).await?;
        let Some(page) =
            client.wait_for(&result_topic, within, |_, _| {}, |v| v["id"] == id.as_str()).await
        else {
            eprintln!("posbridge cloud: no answer to list within {within:?}");
            return Ok(EXIT_NO_RESULT);
        };
        if page["state"] != "succeeded" {
            bail!("list was not answered: {page}");
        }
        unknown.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page.get("next") {
            Some(next) if !next.is_null() => cursor = Some(next.clone()),
            _ => break,
        }
    }
    eprintln!("{} unknown outcome(s) on {root}", unknown.len());
    let mut still = 0;
    for item in &unknown {
        let Some(target) = item["id"].as_str() else { continue };
        let mut m = Map::new();
        m.insert("op".into(), json!("status"));
        m.insert("target".into(), json!(target));
        asked += 1;
        let (id, cmd) = ask(asked, m);
        publish(a, &client, &cmd).await?;
        let answer =
            client.wait_for(&result_topic, within, |_, _| {}, |v| v["id"] == id.as_str()).await;
        let learned = answer.as_ref().and_then(|v| v["target"]["reconciled"]["state"].as_str());
        if learned.is_none() {
            still += 1;
        }
        let line = json!({
            "id": target, "terminal": item["terminal"], "amount": item["amount"],
            "currency": item["currency"], "received_at": item["received_at"],
            "now": learned.unwrap_or("unknown"),
            "transaction_id": answer.as_ref().map(|v| v["target"]["reconciled"]["payment"]["transaction_id"].clone()),
        });
        println!("{line}");
    }
    eprintln!("{} reconciled, {still} still unknown", unknown.len() - still);
    Ok(if still == 0 { 0 } else { EXIT_UNKNOWN })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_become_minor_units_exactly() {
        for (text, minor) in [("12.50", 1250), ("12.5", 1250), ("12", 1200), ("0.07", 7)] {
            assert_eq!(minor_units(text, "AZN").expect(text), minor, "{text}");
        }
        for bad in ["", "1.234", "-1", "1e3", "1,50", ".5", "12.", "99999999999999999999"] {
            assert!(minor_units(bad, "AZN").is_err(), "{bad:?}");
        }
    }

    fn opts(args: &[&str]) -> anyhow::Result<pos::Options> {
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: CloudArgs,
        }
        let t = <T as clap::Parser>::try_parse_from(
            std::iter::once("cloud").chain(args.iter().copied()).chain(["ping"]),
        )?;
        options(&t.a, vec![])
    }

    #[cfg(feature = "qr")]
    #[test]
    fn a_payment_link_renders_as_a_square_qr_code() {
        let code = qr("https://pay.example/l/AbC123?amount=12.50").expect("a QR code");
        let lines: Vec<&str> = code.lines().collect();
        let width = lines[0].chars().count();
        // Two modules per line: a square symbol is half as many lines as it is wide.
        assert!(width >= 21 && lines.iter().all(|l| l.chars().count() == width), "{code}");
        assert_eq!(lines.len(), width.div_ceil(2), "{code}");
        assert!(code.contains('\u{2588}') || code.contains('\u{2580}'), "{code}");
        assert!(qr(&"x".repeat(8000)).is_none(), "too long for any QR code");
    }

    #[test]
    fn broker_urls_logins_and_tls() {
        let o = opts(&["--broker", "mqtt://127.0.0.1:1884"]).expect("plain");
        assert_eq!((o.host.as_str(), o.port, o.tls.is_none()), ("127.0.0.1", 1884, true));
        assert_eq!(opts(&["--broker", "mqtt://[::1]:1885"]).expect("v6").host, "::1");
        assert!(opts(&["--broker", "mqtt://"]).is_err());
        let e =
            opts(&["--broker", "mqtt://h", "--ca-file", "/x.pem"]).expect_err("tls flag on mqtt");
        assert!(e.to_string().contains("mqtts"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\nignored\n").expect("pw");
        let o = opts(&[
            "--broker",
            "mqtt://h",
            "--username",
            "pos",
            "--password-file",
            pw.to_str().unwrap_or_default(),
        ])
        .expect("login");
        assert_eq!(o.credentials, Some(("pos".to_string(), "s3cret".to_string())));
        // A CA file that is not there: a clear error naming it (never a silent plain fallback).
        let e =
            opts(&["--broker", "mqtts://h", "--ca-file", "/nonexistent/ca.pem"]).expect_err("ca");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
