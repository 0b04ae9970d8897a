//! `posbridge kaspi register <terminal>`: the field engineer's enrolment. Sends
//! `/v2/register` (the cashier presses "Allow" on the terminal), stores the token pair
//! encrypted at rest, and prints what to pin. While the agent runs, it does this on its
//! control socket (`crate::control`), since the store is single-process.

use crate::drivers::http::Transport;
use anyhow::{bail, Context};

use super::client::{CallError, KaspiClient};
use crate::config::{Config, KaspiTerminal, TerminalConfig};
use crate::secrets::Secrets;

pub async fn run(cfg: &Config, terminal: &str) -> anyhow::Result<String> {
    let k = kaspi_terminal(cfg, terminal)?;
    eprintln!(
        "posbridge: asking {} for access as {:?}; press \"Allow\" on the terminal's screen (waiting up to {:?})",
        k.url, k.register_name, k.register_timeout
    );
    // The running agent holds the store: it registers, and payments go on meanwhile.
    let req = serde_json::json!({"op": "kaspi_register", "terminal": terminal});
    if let Some(m) = crate::control::call(&cfg.store.path, &req).await? {
        return Ok(format!("{m} (through the running agent)"));
    }
    let (store, secrets) = crate::control::open_directly(cfg)?;
    let m = register(cfg, terminal, secrets).await?;
    store.commit().await.context("flushing the store")?;
    Ok(m)
}

fn kaspi_terminal<'a>(cfg: &'a Config, terminal: &str) -> anyhow::Result<&'a KaspiTerminal> {
    let Some(TerminalConfig::Kaspi(k)) = cfg.terminals.iter().find(|t| t.id() == terminal) else {
        bail!("terminal {terminal:?} is not a configured kaspi terminal");
    };
    if !k.protected {
        bail!(
            "terminal {terminal:?} has protected = false: the plain HTTP API needs no registration"
        );
    }
    Ok(k)
}

/// Register `terminal` and store its token pair in `secrets` (durable when this returns):
/// the command line's enrolment, or the running agent's on its control socket.
pub async fn register(cfg: &Config, terminal: &str, secrets: Secrets) -> anyhow::Result<String> {
    let k = kaspi_terminal(cfg, terminal)?;
    let client = KaspiClient::new(terminal, k, secrets).map_err(|e| anyhow::anyhow!(e))?;
    let pair = match client.register().await {
        Ok(p) => p,
        Err(CallError::Transport(Transport::MaybeSent(message))) => bail!(
            "no answer within register_timeout ({:?}): did the cashier press \"Allow\"? ({message})",
            k.register_timeout
        ),
        Err(e) => bail!("registration failed: {e}"),
    };
    Ok(format!(
        "terminal {terminal} registered; token valid until {} (renewed automatically by the agent)",
        pair.expiration_date
    ))
}
