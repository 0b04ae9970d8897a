//! The running agent's local control socket, so field tools that write the store do not
//! stop the shop: `posbridge secret set`, `posbridge kaspi register` and `posbridge store
//! acknowledge` go through the agent (which holds the single-process store) when it runs,
//! and open the store themselves only when it does not.
//!
//! `<store.path>/control.sock`, a Unix socket with mode 0600 in the store directory (so
//! only the agent's user, and root, can use it). One JSON request line, one JSON answer
//! line: `{"op":"secret_set","terminal":T,"name":N,"value":V}` or
//! `{"op":"kaspi_register","terminal":T}` or `{"op":"store_acknowledge"}` →
//! `{"ok":true,"message":…}` or
//! `{"ok":false,"error":…}`. Requests are bounded (64 KiB); the value is never logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::secrets::Secrets;

/// The longest request line taken.
const MAX_REQUEST: u64 = 64 * 1024;

/// Where the socket of the agent with this store lives.
pub fn socket_path(store: &Path) -> PathBuf {
    store.join("control.sock")
}

/// What a request acts on: the agent's configuration, its store and its secrets.
pub struct Control {
    pub cfg: Config,
    pub store: crate::store::Store,
    pub secrets: Secrets,
    /// To the MQTT side: the retained status follows a lifted hold.
    pub out: tokio::sync::mpsc::UnboundedSender<crate::engine::Outbound>,
}

impl Control {
    /// Listen until `shutdown`; the socket file is removed at the end. A socket file left
    /// by an earlier run is replaced.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = socket_path(&self.cfg.store.path);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let me = std::sync::Arc::new(self);
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = listener.accept() => match s {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let me = me.clone();
            tokio::spawn(async move {
                if let Err(e) = me.answer(stream).await {
                    tracing::warn!(error = %e, "control socket: request failed");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    async fn answer(&self, stream: UnixStream) -> anyhow::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        BufReader::new(r.take(MAX_REQUEST)).read_line(&mut line).await?;
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => match self.run(&req).await {
                Ok(message) => json!({"ok": true, "message": message}),
                Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
            },
            Err(e) => json!({"ok": false, "error": format!("not a JSON request line: {e}")}),
        };
        w.write_all(format!("{reply}\n").as_bytes()).await?;
        Ok(())
    }

    async fn run(&self, req: &Value) -> anyhow::Result<String> {
        let text = |k: &str| req[k].as_str().with_context(|| format!("missing {k:?}"));
        if req["op"] == "store_acknowledge" {
            // Admission reads the hold from the store for every money command: lifted
            // here, the next payment runs; telemetry's `money_blocked` follows.
            let hold = self.store.lift_money_hold().await?;
            if hold.is_some() {
                let _ = self.out.send(crate::engine::Outbound::HoldLifted);
            }
            let m = acknowledged(hold);
            tracing::warn!("{m} (through the control socket)");
            return Ok(format!("{m} (by the running agent)"));
        }
        let terminal = text("terminal")?;
        if !self.cfg.terminals.iter().any(|t| t.id() == terminal) {
            bail!("terminal {terminal:?} is not configured in the running agent");
        }
        match req["op"].as_str() {
            Some("secret_set") => {
                let (name, value) =
                    (text("name")?, zeroize::Zeroizing::new(text("value")?.to_string()));
                if value.is_empty() {
                    bail!("empty value: nothing stored");
                }
                self.secrets.set(terminal, name, value.as_bytes()).await?;
                tracing::info!(terminal, name, "secret stored through the control socket");
                Ok(format!("secret {terminal}/{name} stored (encrypted) by the running agent"))
            }
            Some("kaspi_register") => {
                let m = crate::drivers::kaspi::register::register(
                    &self.cfg,
                    terminal,
                    self.secrets.clone(),
                )
                .await?;
                tracing::info!(terminal, "kaspi terminal registered through the control socket");
                Ok(m)
            }
            other => bail!("unknown op {other:?}"),
        }
    }
}

/// What `store acknowledge` says of the hold it lifted (or found none).
pub fn acknowledged(hold: Option<crate::store::MoneyHold>) -> String {
    match hold {
        Some(h) => format!(
            "money hold lifted: the store found damaged at {} (copy kept at {}) gave {} command ids, {} of them as unknown; payments and refunds are accepted again",
            h.since, h.moved_aside, h.salvaged, h.salvaged_unknown
        ),
        None => "no money hold: nothing to acknowledge".to_string(),
    }
}

/// When no agent listens: the store opened by this process (refused as root on the
/// agent's store, whose files root would take over).
pub fn open_store(cfg: &Config) -> anyhow::Result<crate::store::Store> {
    crate::store::refuse_root_on_foreign_store(&cfg.store.path).map_err(anyhow::Error::msg)?;
    let (store, _) = crate::store::Store::open(&cfg.store.path).map_err(|e| {
        anyhow::anyhow!("{e} (is an agent holding it without its control socket? stop it first)")
    })?;
    Ok(store)
}

/// When no agent listens: [`open_store`] and its secrets.
pub fn open_directly(cfg: &Config) -> anyhow::Result<(crate::store::Store, Secrets)> {
    let store = open_store(cfg)?;
    let secrets = Secrets::open(&cfg.store.key_file, store.clone()).context("store.key_file")?;
    Ok((store, secrets))
}

/// Ask the agent running on `store`: `Ok(None)` when none listens there (no socket, or a
/// socket nobody serves), else its answer's message, or its error as an error.
pub async fn call(store: &Path, req: &Value) -> anyhow::Result<Option<String>> {
    let path = socket_path(store);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("control socket {}", path.display())),
    };
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{req}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(r.take(MAX_REQUEST)).read_line(&mut line).await?;
    let reply: Value = serde_json::from_str(&line).context("the agent's answer")?;
    match reply["ok"].as_bool() {
        Some(true) => Ok(Some(reply["message"].as_str().unwrap_or("done").to_string())),
        _ => bail!("{}", reply["error"].as_str().unwrap_or("the agent refused")),
    }
}
