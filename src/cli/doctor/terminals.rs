//! The terminal checks: every configured terminal's driver built as in the agent (with
//! the real store when it is free, else a scratch one) and asked for its `health()`,
//! compared with the state the running agent retained on the broker; plus a Kaspi
//! terminal whose certificate is not checked.

use crate::api::TerminalState;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::broker::BrokerView;
use super::store::StoreState;
use super::Check;
use crate::api::Topics;
use crate::config::Config;
use crate::drivers::DriverEnv;
use crate::store::Store;

/// One terminal's `health()`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) async fn terminals(
    cfg: &Config, store_state: StoreState, broker: &BrokerView,
) -> Vec<Check> {
    if cfg.terminals.is_empty() {
        return vec![Check::warn(
            "terminals",
            "none configured",
            "add [[terminals]] to the configuration",
        )];
    }
    // Drivers get the same environment as in the agent. With the real store when it is
    // free (drivers can read their secrets); otherwise a scratch one, and a driver that
    // needs a stored secret says so in its health.
    let scratch = tempfile::tempdir();
    let env = match driver_env(cfg, store_state, scratch.as_ref().ok().map(|d| d.path())) {
        Ok(env) => env,
        Err(e) => {
            return vec![Check::fail("terminals", format!("cannot prepare the drivers: {e:#}"), "")]
        }
    };
    let drivers = crate::agent::build_drivers(cfg, &env.0);
    let kinds: std::collections::HashMap<&str, &str> =
        cfg.terminals.iter().map(|t| (t.id(), t.kind_name())).collect();
    let probes = drivers.iter().map(|(id, d)| async move {
        let h = tokio::time::timeout(HEALTH_TIMEOUT, d.health()).await;
        (id.clone(), h, d.mode())
    });
    let results = futures_util::future::join_all(probes).await;
    let mut out = Vec::new();
    // A Kaspi terminal whose certificate is not checked: anyone on the shop's LAN can pose
    // as it and take the access token (kaspi.md: TLS).
    for t in &cfg.terminals {
        if let crate::config::TerminalConfig::Kaspi(k) = t {
            if k.tls == crate::config::TlsMode::Insecure {
                out.push(Check::fail(
                    format!("terminal {} tls", k.id),
                    "tls = \"insecure\": the terminal's certificate is not checked; anyone on the LAN can impersonate it",
                    "set tls_name to its *.kaspiros.kz name with tls = \"verify\", or pin its certificate (tls = \"pin\", README: TLS modes)",
                ));
            }
        }
    }
    for (id, h, mode) in results {
        let kind = kinds.get(id.as_str()).copied().unwrap_or("?");
        let name = format!("terminal {id} ({kind})");
        let agent_view =
            broker.terminals.get(&id).and_then(|v| v.get("state")).and_then(Value::as_str);
        let fix = format!(
            "is the {kind} terminal on and reachable from this machine? check its address in the configuration (README: Troubleshooting)"
        );
        let check = match h {
            // Switched off on purpose (cloud providers' `mode = "disabled"`): not a fault.
            _ if mode == Some("disabled") => Check::warn(
                name,
                "disabled in the configuration (mode = \"disabled\"): commands to it are refused",
                "set mode = \"test\" or \"live\" when it should take payments",
            ),
            Err(_) => Check::fail(name, format!("no health answer within {HEALTH_TIMEOUT:?}"), fix),
            Ok(h) if matches!(h.state, TerminalState::Connected | TerminalState::Busy) => {
                let mut detail = h.state.to_string();
                if let Some(m) = mode {
                    detail.push_str(&format!(" (mode {m})"));
                }
                if !h.identity.is_null() {
                    detail.push_str(&format!(" {}", h.identity));
                }
                Check::ok(name, detail)
            }
            Ok(h) => {
                let detail = format!("{}: {}", h.state, h.error.as_deref().unwrap_or("no detail"));
                if agent_view == Some("connected") {
                    // A device one process can hold (USB) answers the agent, not us.
                    Check::warn(
                        name,
                        format!("{detail}; but the running agent reports it connected"),
                        format!(
                            "probably held by the agent; its own view is retained on {}/terminals/{id}",
                            Topics::new(&cfg.topic_prefix, &cfg.agent_id).root()
                        ),
                    )
                } else {
                    Check::fail(name, detail, fix)
                }
            }
        };
        out.push(check);
    }
    drop(env);
    out
}

/// The driver environment and whatever keeps it alive.
struct Env(DriverEnv);

fn driver_env(cfg: &Config, state: StoreState, scratch: Option<&Path>) -> anyhow::Result<Env> {
    let scratch = scratch.ok_or_else(|| anyhow::anyhow!("no temporary directory"))?;
    let store = match state {
        StoreState::Free => Store::open(&cfg.store.path).map(|(s, _)| s),
        StoreState::Unavailable => Store::open(&scratch.join("store")).map(|(s, _)| s),
    }?;
    let key_readable = std::fs::File::open(&cfg.store.key_file).is_ok();
    let key = if state == StoreState::Free && key_readable {
        cfg.store.key_file.clone()
    } else {
        scratch.join("device.key")
    };
    let secrets = crate::secrets::Secrets::open(&key, store.clone())?;
    Ok(Env(DriverEnv { store, secrets, agent_id: cfg.agent_id.clone() }))
}
