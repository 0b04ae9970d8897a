//! `posbridge cloud …`: the cloud side's command line, for vendors and field engineers who
//! want to send one command to an agent and watch it, without hand-written JSON. Built on
//! [`crate::pos`]: builds the command (a fresh id unless `--id` is given, `expires_at` a
//! minute ahead), signs it when `--key` is given, publishes it, prints live progress from
//! `evt`, then the result. The exit code says the outcome.

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
    /// The broker: `mqtt://host[:port]` (plain MQTT; port 1883).
    #[arg(long)]
    broker: String,
    /// The agent's `agent_id`.
    #[arg(long)]
    agent: String,
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
}

pub async fn run(a: CloudArgs) -> ExitCode {
    match send_and_watch(&a).await {
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
    }
    Ok(Value::Object(c))
}

/// `mqtt://host[:port]` → host and port (the agent's own URL parser; no TLS here yet).
fn broker(url: &str) -> anyhow::Result<(String, u16)> {
    let ep = MqttEndpoint::parse("--broker", url)?;
    if ep.tls {
        bail!("--broker {url:?}: mqtts:// is not supported by `posbridge cloud` yet; use mqtt://");
    }
    Ok((ep.host, ep.port))
}

async fn send_and_watch(a: &CloudArgs) -> anyhow::Result<u8> {
    let (host, port) = broker(&a.broker)?;
    let id = a.id.clone().unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4()));
    let cmd = command(a, &id)?;
    let root = format!("{}/{}", a.prefix, a.agent);
    let client_id = format!("posbridge-cloud-{}", std::process::id());
    let mut opts = pos::Options::loopback(port, &client_id, Some(&format!("{root}/#")));
    opts.host = host;
    let mut client = pos::Client::connect(opts, Duration::from_secs(10)).await?;
    let payload = cmd.to_string().into_bytes();
    let payload = match (&a.key, &a.kid) {
        (Some(key), Some(kid)) => {
            Signer::new(kid, super::tools::signing_key(key)?, &a.agent).seal(&payload).0
        }
        _ => payload,
    };
    eprintln!("→ {root}/cmd {cmd}");
    client.send(&root, payload).await?;
    let (evt, res) = (format!("{root}/evt"), format!("{root}/result"));
    let show = |m: &pos::Message, v: &Value| {
        if m.topic == evt && v["id"] == id.as_str() {
            let sub = v["sub_state"].as_str().unwrap_or("");
            eprintln!("… {} {sub}", v["state"].as_str().unwrap_or("?"));
            if let Some(url) = v["detail"]["payment_url"].as_str() {
                eprintln!("  payment link: {url}");
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

    #[test]
    fn broker_urls() {
        assert_eq!(broker("mqtt://127.0.0.1:1884").unwrap(), ("127.0.0.1".into(), 1884));
        assert_eq!(broker("mqtt://localhost").unwrap(), ("localhost".into(), 1883));
        assert_eq!(broker("mqtt://[::1]:1885").unwrap(), ("::1".into(), 1885));
        assert!(broker("mqtts://h").is_err() && broker("mqtt://").is_err());
    }
}
