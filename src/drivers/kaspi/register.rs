//! `posbridge kaspi register <terminal>`: the field engineer's enrolment. Sends
//! `/v2/register` (the cashier presses "Allow" on the terminal), stores the token pair
//! encrypted at rest, and prints what to pin. The agent must be stopped: the store is
//! single-process.

use crate::drivers::http::Transport;
use anyhow::{bail, Context};

use super::client::{CallError, KaspiClient};
use crate::config::{Config, TerminalConfig};

pub async fn run(cfg: &Config, terminal: &str) -> anyhow::Result<String> {
    let Some(TerminalConfig::Kaspi(k)) = cfg.terminals.iter().find(|t| t.id() == terminal) else {
        bail!("terminal {terminal:?} is not a configured kaspi terminal");
    };
    if !k.protected {
        bail!(
            "terminal {terminal:?} has protected = false: the plain HTTP API needs no registration"
        );
    }
    crate::store::refuse_root_on_foreign_store(&cfg.store.path).map_err(anyhow::Error::msg)?;
    let (store, _) = crate::store::Store::open(&cfg.store.path).map_err(|e| {
        anyhow::anyhow!("{e} (is the agent running? stop it first: the store is single-process)")
    })?;
    let secrets = crate::secrets::Secrets::open(&cfg.store.key_file, store.clone())
        .context("store.key_file")?;
    let client = KaspiClient::new(terminal, k, secrets).map_err(|e| anyhow::anyhow!(e))?;
    eprintln!(
        "posbridge: asking {} for access as {:?}; press \"Allow\" on the terminal's screen (waiting up to {:?})",
        client.base(),
        k.register_name,
        k.register_timeout
    );
    let pair = match client.register().await {
        Ok(p) => p,
        Err(CallError::Transport(Transport::MaybeSent(message))) => bail!(
            "no answer within register_timeout ({:?}): did the cashier press \"Allow\"? ({message})",
            k.register_timeout
        ),
        Err(e) => bail!("registration failed: {e}"),
    };
    store.commit().await.context("flushing the store")?;
    Ok(format!(
        "terminal {terminal} registered; token valid until {} (renewed automatically by the agent)",
        pair.expiration_date
    ))
}
