//! Wiring: store → engine (+ drivers) → bus, telemetry; start and orderly stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::api::Topics;
use crate::bus::{self, BusConfig, BusStats, Pump};
use crate::config::{Config, TerminalConfig};
use crate::drivers::ip::IpDriver;
use crate::drivers::kaspi::KaspiDriver;
use crate::drivers::kuveyt::KuveytDriver;
use crate::drivers::paywall::PaywallDriver;
use crate::drivers::token::{TokenDriver, TokenSettings};
use crate::drivers::{DriverEnv, DynDriver};
use crate::engine::{Engine, EngineConfig};
use crate::store::Store;

/// Incoming packet limit for the MQTT client (CRATES.md: thin-edge uses 16 MiB).
const MAX_INCOMING: usize = 16 * 1024 * 1024;

/// How long a stopping agent lets running device operations reach a journalled end.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

pub fn build_drivers(cfg: &Config, env: &DriverEnv) -> Vec<(String, DynDriver)> {
    cfg.terminals
        .iter()
        .map(|t| {
            let d: DynDriver = match t {
                TerminalConfig::Ip(ip) => Arc::new(
                    IpDriver::new(ip.addr.clone(), ip.connect_timeout, ip.op_timeout)
                        .with_recovery_window(ip.recovery_window),
                ),
                TerminalConfig::Token(tk) => Arc::new(
                    TokenDriver::new(TokenSettings::from(tk), env.agent_id.clone())
                        .with_pins(&tk.id, env.secrets.clone()),
                ),
                TerminalConfig::Kaspi(k) => Arc::new(KaspiDriver::new(&k.id, k, env)),
                TerminalConfig::Paywall(p) => Arc::new(PaywallDriver::new(p, env)),
                TerminalConfig::Kuveyt(k) => Arc::new(KuveytDriver::new(k, env)),
            };
            (t.id().to_string(), d)
        })
        .collect()
}

fn bus_config(cfg: &Config) -> anyhow::Result<BusConfig> {
    let brokers = cfg.mqtt.endpoints()?;
    let tls = if brokers.iter().any(|b| b.tls) {
        Some(crate::bus::tls::client_config(&crate::bus::tls::TlsFiles {
            ca_file: cfg.mqtt.ca_file.clone(),
            client_cert_file: cfg.mqtt.client_cert_file.clone(),
            client_key_file: cfg.mqtt.client_key_file.clone(),
        })?)
    } else {
        None
    };
    let password = match &cfg.mqtt.password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("mqtt.password_file: cannot read {}", p.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        None => None,
    };
    Ok(BusConfig {
        brokers,
        client_id: cfg.mqtt.client_id.clone(),
        keep_alive: cfg.mqtt.keep_alive,
        username: cfg.mqtt.username.clone(),
        password,
        max_incoming: MAX_INCOMING.max(cfg.commands.max_bytes * 4),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(30),
        tls,
    })
}

/// Load `security.command_keys`; any unreadable key stops the start (an agent that
/// silently accepted unsigned commands would be worse than one that does not run).
fn load_command_keys(cfg: &Config) -> anyhow::Result<crate::api::signature::CommandKeys> {
    let mut keys = crate::api::signature::CommandKeys::default();
    for (i, k) in cfg.security.command_keys.iter().enumerate() {
        let pem = std::fs::read_to_string(&k.public_key_file).with_context(|| {
            format!(
                "security.command_keys[{i}].public_key_file: cannot read {}",
                k.public_key_file.display()
            )
        })?;
        keys.add_pem(&k.kid, &pem)
            .map_err(|e| anyhow::anyhow!("security.command_keys[{i}] ({}): {e}", k.kid))?;
    }
    if !keys.is_empty() {
        tracing::info!(kids = ?keys, "only signed commands are accepted");
    }
    Ok(keys)
}

/// Run the agent until `shutdown` is cancelled, then stop in order: stop taking commands,
/// let running operations reach a journalled point, publish what is in the outbox,
/// publish `offline`, disconnect.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::stages::init();
    let command_keys = load_command_keys(&cfg)?;
    // Secure by default: whoever can publish to the broker must not be able to move money.
    if command_keys.is_empty() && !cfg.terminals.is_empty() && !cfg.security.allow_unsigned {
        anyhow::bail!(
            "security.command_keys is empty: this agent has payment terminals and would run \
             commands from anyone who can publish to {}/{}/cmd. Configure the cloud's public \
             keys (docs/mqtt-api.md: Signed commands), or set security.allow_unsigned = true to accept \
             unsigned commands (tests, a broker nobody else can write to)",
            cfg.topic_prefix,
            cfg.agent_id
        );
    }
    if command_keys.is_empty() && !cfg.terminals.is_empty() {
        tracing::warn!("security.allow_unsigned = true: unsigned commands are accepted; anyone who can publish to the command topic can move money");
    }
    let bus_cfg = bus_config(&cfg)?;
    let (store, report) = Store::open(&cfg.store.path).with_context(|| {
        format!("store.path: cannot open the store at {}", cfg.store.path.display())
    })?;
    if report.corrupt_records > 0 {
        tracing::error!(count = report.corrupt_records, "store holds undecodable records");
    }
    let secrets = crate::secrets::Secrets::open(&cfg.store.key_file, store.clone())
        .context("store.key_file")?;
    // Field tools (secret set, kaspi register) go through this while the agent runs.
    let control_stop = CancellationToken::new();
    // Stops the socket however this function returns.
    let _control_guard = control_stop.clone().drop_guard();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let control = crate::control::Control {
        cfg: cfg.clone(),
        store: store.clone(),
        secrets: secrets.clone(),
        out: out_tx.clone(),
    };
    let control_task = tokio::spawn({
        let stop = control_stop.clone();
        async move {
            if let Err(e) = control.serve(stop).await {
                tracing::warn!(error = %e, "no control socket: `secret set`, `kaspi register` and `store acknowledge` need the agent stopped");
            }
        }
    });
    let env = DriverEnv { store: store.clone(), secrets, agent_id: cfg.agent_id.clone() };
    let topics = Topics::new(&cfg.topic_prefix, &cfg.agent_id);
    let outbox_notify = Arc::new(Notify::new());
    let engine_stop = CancellationToken::new();
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            default_ttl: cfg.commands.default_ttl,
            max_bytes: cfg.commands.max_bytes,
            queue_depth: cfg.commands.queue_depth,
            health_interval: Duration::from_secs(30),
            version: crate::VERSION.to_string(),
            command_keys,
            retention: cfg.store.retention,
            agent_id: cfg.agent_id.clone(),
            max_command_age: cfg.security.max_command_age,
            allow_unreferenced_refunds: cfg.security.allow_unreferenced_refunds,
            clock: Arc::new(crate::engine::clock::SystemClock),
            checkpoints: crate::engine::CheckpointSchedule::for_agent(),
        },
        build_drivers(&cfg, &env),
        outbox_notify.clone(),
        out_tx.clone(),
        engine_stop.clone(),
    );
    // Resume before the first new command can arrive.
    engine.start().context("resuming unfinished commands")?;

    let started_at = crate::api::ts(engine.started_at());
    let mut online =
        json!({ "v": 1, "state": "online", "version": crate::VERSION, "started_at": started_at });
    if report.moved_aside.is_some() || report.corrupt_records > 0 || report.money_blocked.is_some()
    {
        online["store"] = serde_json::to_value(&report).unwrap_or_default();
    }

    let bus_stats = Arc::new(BusStats::default());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    let configured: Vec<String> = cfg.terminals.iter().map(|t| t.id().to_string()).collect();
    let removed_terminals = store.note_terminals(&configured).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the terminals of earlier runs");
        Vec::new()
    });
    if !removed_terminals.is_empty() {
        tracing::info!(terminals = ?removed_terminals, "terminals no longer configured: their retained state is cleared");
    }
    let pump_stop = CancellationToken::new();
    let conn_stop = CancellationToken::new();
    let pump = Pump {
        store: store.clone(),
        topics: topics.clone(),
        conn_rx,
        out_rx,
        outbox_notify: outbox_notify.clone(),
        online,
        shutdown: pump_stop.clone(),
        stop_conn: conn_stop.clone(),
        beat: crate::systemd::Beat::new(),
        final_status: None,
        sent_ids: Default::default(),
        removed_terminals,
    };
    let beats = vec![engine.beat(), pump.beat.clone()];
    let pump_task = tokio::spawn(pump.run());
    let gate = Arc::new(bus::gate::Gate::default());
    let conn_task = tokio::spawn(bus::run_connection(
        bus_cfg,
        topics,
        cmd_tx,
        conn_tx,
        bus_stats.clone(),
        gate.clone(),
        conn_stop.clone(),
    ));
    let intake_engine = engine.clone();
    let intake_gate = gate.clone();
    let intake_task =
        tokio::spawn(async move { intake_engine.run_intake(cmd_rx, intake_gate).await });
    let out_tx_fatal = out_tx.clone();
    let telemetry_task = tokio::spawn(crate::telemetry::run(
        engine.clone(),
        bus_stats.clone(),
        cfg.telemetry.interval,
        out_tx,
        engine_stop.clone(),
    ));
    // The memory the start-up and each burst of work used, given back once idle.
    tokio::spawn(crate::telemetry::release_when_idle(
        engine.clone(),
        bus_stats.clone(),
        engine_stop.clone(),
    ));
    tracing::info!(agent_id = %cfg.agent_id, terminals = cfg.terminals.len(), "agent started");
    let supervisor_done = CancellationToken::new();
    let supervisor_task = crate::systemd::Notifier::from_env().map(|notifier| {
        let sup = crate::systemd::Supervisor {
            notifier,
            watchdog: crate::systemd::watchdog_from_env(),
            beats,
            ready_timeout: crate::systemd::READY_TIMEOUT,
        };
        let stats = bus_stats.clone();
        // The store is open and resumed; ready once the broker connection is up.
        let connected = async move { stats.until_connected().await };
        tokio::spawn(sup.run(connected, shutdown.clone(), supervisor_done.clone()))
    });

    // Fail-stop: a store that cannot make writes durable acknowledges nothing more; stop,
    // say so on the retained status, and exit non-zero so that a restart replays the log.
    let store_failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        why = store.failed() => Some(why),
    };
    if let Some(why) = &store_failure {
        let _ = out_tx_fatal.send(crate::engine::Outbound::StoreFailed(why.clone()));
    }
    tracing::info!("stopping: no new commands; waiting for running operations");
    engine_stop.cancel();
    let _ = intake_task.await;
    if !engine.drain(DRAIN_TIMEOUT).await {
        tracing::warn!("running operations did not finish in time; they resume at next start");
    }
    let _ = telemetry_task.await;
    // Give the pump a moment to hand the last results to the broker (not after a store
    // failure: the store is read no more, and the restart sends them).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while store_failure.is_none()
            && store.outbox_len() > 0
            && bus_stats.connected.load(std::sync::atomic::Ordering::Relaxed)
        {
            outbox_notify.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    pump_stop.cancel();
    let _ = pump_task.await;
    control_stop.cancel();
    let _ = control_task.await;
    let _ = conn_task.await;
    // A clean stop leaves sled durable and the write-ahead log empty.
    if store_failure.is_none() {
        if let Err(e) = store.checkpoint().await {
            tracing::warn!(error = %e, "store checkpoint at stop failed; the log is replayed at the next start");
        }
    }
    supervisor_done.cancel();
    if let Some(t) = supervisor_task {
        let _ = t.await;
    }
    crate::stages::write();
    if let Some(why) = store_failure {
        // sled writes its in-memory state to disk when its last handle drops, and that
        // state holds changes no commit made durable (their commit failed): never let it.
        // The process exits right after; the restart rebuilds from what was committed.
        std::mem::forget(store);
        anyhow::bail!(
            "stopped after a store failure ({why}); the restart replays the log from disk"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
