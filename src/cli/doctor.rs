//! `posbridge doctor`: checks a field engineer runs on the machine — configuration, clock,
//! broker (TCP + MQTT CONNECT with the agent's credentials), the running agent's retained
//! status, store, disk, key and secret file permissions, and every terminal through its
//! driver's `health()`. Prints a table (check | status | detail | fix); any FAIL makes the
//! exit status non-zero.
//!
//! It must not disturb a running agent: the MQTT check uses its own client id
//! (`{client_id}-doctor`) with a clean session, and a store locked by the agent is
//! reported as in use (fine) rather than opened.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, Outgoing, QoS};
use serde_json::Value;

use crate::api::Topics;
use crate::config::Config;
use crate::drivers::DriverEnv;
use crate::store::{Store, StoreError};

/// TCP connect and MQTT CONNECT, each.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to collect retained messages after SUBACK.
const RETAINED_QUIET: Duration = Duration::from_millis(400);
const RETAINED_MAX: Duration = Duration::from_secs(2);
/// One terminal's `health()`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);
const DISK_FAIL: u64 = 50 * 1024 * 1024;
const DISK_WARN: u64 = 200 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
    /// What to do about it; empty when `ok`.
    pub fix: String,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Ok,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Warn,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Fail,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

/// Run every check for the configuration at `path`.
pub async fn run(path: &Path) -> Vec<Check> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                "config",
                format!("{e}"),
                format!(
                    "fix the named key, then `posbridge check --config {}`",
                    path.display()
                ),
            )]
        }
    };
    let mut checks = vec![Check::ok(
        "config",
        format!(
            "{} is valid ({} terminal(s))",
            path.display(),
            cfg.terminals.len()
        ),
    )];
    checks.push(clock());
    checks.push(security(&cfg));
    let broker = broker(&cfg).await;
    checks.push(broker.check.clone());
    checks.push(agent_status(&cfg, &broker));
    let (store_check, store_state) = store(&cfg);
    checks.push(store_check);
    checks.push(disk(&cfg.store.path));
    checks.push(key_file(&cfg));
    checks.extend(files(&cfg));
    checks.extend(terminals(&cfg, store_state, &broker).await);
    checks
}

// ------------------------------------------------------------------ security

/// Signed commands are the default (`mqtt-api.md`: Signed commands).
fn security(cfg: &Config) -> Check {
    const NAME: &str = "security";
    let s = &cfg.security;
    if !s.command_keys.is_empty() {
        return Check::ok(
            NAME,
            format!(
                "only signed commands run ({} cloud key(s)); expires_at at most {} s ahead",
                s.command_keys.len(),
                s.max_command_age.as_secs()
            ),
        );
    }
    if cfg.terminals.is_empty() {
        return Check::ok(NAME, "no terminals: nothing to protect");
    }
    if s.allow_unsigned {
        return Check::warn(
            NAME,
            "security.allow_unsigned = true: anyone who can publish to the command topic can move money",
            "configure security.command_keys with the cloud's public keys (README: Signed commands) and drop allow_unsigned",
        );
    }
    Check::fail(
        NAME,
        "security.command_keys is empty: the agent refuses to start with payment terminals and no cloud keys",
        "configure security.command_keys (README: Signed commands), or set security.allow_unsigned = true for a broker nobody else can write to",
    )
}

// ------------------------------------------------------------------ clock

fn clock() -> Check {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    let synced = Path::new("/run/systemd/timesync/synchronized").exists();
    let detail = format!(
        "{}{}",
        crate::api::ts(now),
        if synced { " (NTP synchronized)" } else { "" }
    );
    if now.year() < 2024 {
        Check::fail(
            "clock",
            format!("{detail}: the clock is not set"),
            "enable time sync (`timedatectl set-ntp true`; a Raspberry Pi has no RTC) — deadlines and TLS depend on it",
        )
    } else {
        Check::ok("clock", detail)
    }
}

// ------------------------------------------------------------------ broker

/// What the broker check learned, for the checks that follow.
#[derive(Debug, Clone)]
struct BrokerView {
    check: Check,
    reached: bool,
    /// Retained `{root}/status`.
    status: Option<Value>,
    /// Retained `{root}/terminals/{id}`, by id.
    terminals: std::collections::BTreeMap<String, Value>,
}

async fn broker(cfg: &Config) -> BrokerView {
    let mut view = BrokerView {
        check: Check::ok("broker", ""),
        reached: false,
        status: None,
        terminals: Default::default(),
    };
    match broker_inner(cfg, &mut view).await {
        Ok(detail) => {
            view.reached = true;
            view.check = Check::ok("broker", detail);
        }
        Err(c) => view.check = c,
    }
    view
}

async fn broker_inner(cfg: &Config, view: &mut BrokerView) -> Result<String, Check> {
    const NAME: &str = "broker";
    let ep = cfg
        .mqtt
        .endpoint()
        .map_err(|e| Check::fail(NAME, e.to_string(), "fix mqtt.url"))?;
    // mqtts://: the same rustls configuration as the agent (CA file, client certificate).
    let tls = if ep.tls {
        Some(
            crate::bus::tls::client_config(&crate::bus::tls::TlsFiles {
                ca_file: cfg.mqtt.ca_file.clone(),
                client_cert_file: cfg.mqtt.client_cert_file.clone(),
                client_key_file: cfg.mqtt.client_key_file.clone(),
            })
            .map_err(|e| {
                Check::fail(
                    NAME,
                    format!("{e:#}"),
                    "check mqtt.ca_file / client_cert_file / client_key_file (PEM, readable by the agent)",
                )
            })?,
        )
    } else {
        None
    };
    let target = format!("{}:{}", ep.host, ep.port);
    let started = Instant::now();
    match tokio::time::timeout(
        BROKER_TIMEOUT,
        tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(Check::fail(
                NAME,
                format!("cannot connect to {target}: {e}"),
                "is the broker running and mqtt.url right? check the network/firewall from this machine (`nc -vz HOST PORT`)",
            ))
        }
        Err(_) => {
            return Err(Check::fail(
                NAME,
                format!("no answer from {target} within {BROKER_TIMEOUT:?}"),
                "check mqtt.url, routing and firewall (packets are dropped, not refused)",
            ))
        }
    }
    let password = match &cfg.mqtt.password_file {
        None => None,
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| {
                    Check::fail(
                        NAME,
                        format!("cannot read mqtt.password_file {}: {e}", p.display()),
                        "run doctor as the agent's user (`sudo -u posbridge posbridge doctor`); the file should be root:posbridge 0640",
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
    };
    // Never the agent's client id: that would kick the agent off and, with a clean
    // session, discard its persistent session (and the commands queued in it).
    let client_id = format!("{}-doctor", cfg.mqtt.client_id);
    let mut opts = MqttOptions::new(client_id.clone(), ep.host.clone(), ep.port);
    opts.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(5));
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    if let Some(u) = &cfg.mqtt.username {
        opts.set_credentials(u.clone(), password.unwrap_or_default());
    }
    let (client, mut el) = AsyncClient::new(opts, 16);
    el.network_options
        .set_connection_timeout(BROKER_TIMEOUT.as_secs());
    let topics = Topics::new(&cfg.topic_prefix, &cfg.agent_id);
    let connack = tokio::time::timeout(BROKER_TIMEOUT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(a))) => return Ok(a.code),
                Ok(_) => {}
                // rumqttc turns a refusing CONNACK into this error.
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let who = cfg
        .mqtt
        .username
        .as_deref()
        .map(|u| format!(" as {u:?}"))
        .unwrap_or_default();
    match connack {
        Err(_) => {
            return Err(Check::fail(
                NAME,
                format!("{target} accepted TCP but sent no CONNACK within {BROKER_TIMEOUT:?}"),
                "is it an MQTT listener (not WebSocket; TLS only with mqtts://)? check the port in mqtt.url",
            ))
        }
        Ok(Err(e)) => {
            return Err(Check::fail(
                NAME,
                format!("MQTT connect to {target} failed: {e}"),
                if ep.tls {
                    "TLS: does mqtt.ca_file hold the broker's CA, does the broker's certificate name the host in mqtt.url, is the client certificate accepted? (broker log)"
                } else {
                    "check the broker's log; is it an MQTT 3.1.1 listener, and not a TLS port (use mqtts:// for that)?"
                },
            ))
        }
        Ok(Ok(ConnectReturnCode::Success)) => {}
        Ok(Ok(code)) => {
            let fix = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    "check mqtt.username and mqtt.password_file against the broker's password file (mosquitto_passwd) and ACL"
                }
                ConnectReturnCode::BadClientId => "check mqtt.client_id (the broker refuses it)",
                _ => "check the broker's log",
            };
            return Err(Check::fail(
                NAME,
                format!("{target} refused the login{who}: {code:?}"),
                fix,
            ));
        }
    }
    let elapsed = started.elapsed();
    // Read what the agent left retained: its status and terminal states.
    let _ = client.try_subscribe(topics.status(), QoS::AtMostOnce);
    let _ = client.try_subscribe(format!("{}/terminals/+", topics.root()), QoS::AtMostOnce);
    let prefix = format!("{}/terminals/", topics.root());
    let deadline = tokio::time::Instant::now() + RETAINED_MAX;
    let mut subacks = 0;
    loop {
        let wait = if subacks < 2 {
            BROKER_TIMEOUT
        } else {
            RETAINED_QUIET
        };
        let ev = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = tokio::time::timeout(wait, el.poll()) => ev,
        };
        match ev {
            Err(_) => break,
            Ok(Err(_)) => break,
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => subacks += 1,
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                if p.topic == topics.status() {
                    view.status = Some(v);
                } else if let Some(id) = p.topic.strip_prefix(&prefix) {
                    view.terminals.insert(id.to_string(), v);
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    Ok(format!(
        "MQTT connect to {target}{who} ok in {} ms (client id {client_id})",
        elapsed.as_millis()
    ))
}

fn agent_status(cfg: &Config, broker: &BrokerView) -> Check {
    const NAME: &str = "agent";
    let topic = Topics::new(&cfg.topic_prefix, &cfg.agent_id).status();
    if !broker.reached {
        return Check::warn(
            NAME,
            "unknown: the broker was not reached",
            "fix the broker check first",
        );
    }
    let Some(status) = &broker.status else {
        return Check::warn(
            NAME,
            format!("no retained status on {topic}: the agent never connected to this broker (or the ACL hides it)"),
            "systemctl start posbridge; journalctl -u posbridge -n 50",
        );
    };
    if let Some(h) = status.pointer("/store/money_blocked") {
        return Check::fail(
            NAME,
            format!(
                "online, but payments and refunds are REFUSED (store_damaged): the store was found damaged at {}, copy kept at {}",
                h.get("since").and_then(Value::as_str).unwrap_or("?"),
                h.get("moved_aside").and_then(Value::as_str).unwrap_or("?")
            ),
            "reconcile the salvaged commands (`list` with state unknown) on the terminals, then stop the agent and run `posbridge store acknowledge` (README: A store that cannot be opened)",
        );
    }
    match status.get("state").and_then(Value::as_str) {
        Some("online") => Check::ok(
            NAME,
            format!(
                "online, version {}, started {}",
                status.get("version").and_then(Value::as_str).unwrap_or("?"),
                status
                    .get("started_at")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ),
        ),
        Some(state) => Check::warn(
            NAME,
            format!("{state} (retained on {topic})"),
            "systemctl start posbridge; systemctl status posbridge; journalctl -u posbridge -n 50",
        ),
        None => Check::warn(
            NAME,
            format!("unreadable status on {topic}: {status}"),
            "is another program publishing there?",
        ),
    }
}

// ------------------------------------------------------------------ store, disk, files

/// Whether the doctor may open the store itself to build drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreState {
    /// Free and healthy: open it (secrets readable by drivers).
    Free,
    /// Held by the agent, missing, owned by another user or damaged: use a scratch store.
    Unavailable,
}

fn store(cfg: &Config) -> (Check, StoreState) {
    const NAME: &str = "store";
    let dir = &cfg.store.path;
    if let Some(owner) = foreign_owner(dir) {
        return (
            Check::warn(
                NAME,
                format!(
                    "{} belongs to uid {owner}, not to this user: not opened (files created now would lock the agent out)",
                    dir.display()
                ),
                "run doctor as the agent's user: `sudo -u posbridge posbridge doctor`",
            ),
            StoreState::Unavailable,
        );
    }
    match Store::inspect(dir) {
        Err(StoreError::InUse { .. }) => (
            Check::ok(
                NAME,
                format!("{}: in use by the running agent (ok)", dir.display()),
            ),
            StoreState::Unavailable,
        ),
        Ok(None) => (
            Check::warn(
                NAME,
                format!("no store at {} yet", dir.display()),
                "the agent creates it at first start (systemd: StateDirectory=posbridge)",
            ),
            StoreState::Unavailable,
        ),
        Ok(Some(i)) => {
            let detail = format!(
                "{}: {} commands, {} unfinished (resumed at start), {} unknown not reconciled, outbox {}, {:.1} MiB",
                dir.display(),
                i.records,
                i.unfinished,
                i.unknown,
                i.outbox,
                i.size_bytes as f64 / (1024.0 * 1024.0)
            );
            if let Some(h) = &i.money_hold {
                (
                    Check::fail(
                        NAME,
                        format!("{detail}; payments and refunds are REFUSED (store_damaged) since {}: the store was found damaged ({}), the copy is kept at {}, {} command ids were salvaged ({} as unknown)", h.since, h.error, h.moved_aside, h.salvaged, h.salvaged_unknown),
                        "reconcile the salvaged commands (`list` with state unknown) on the terminals, then stop the agent and run `posbridge store acknowledge` (README: A store that cannot be opened)",
                    ),
                    StoreState::Free,
                )
            } else if i.corrupt > 0 {
                (
                    Check::warn(
                        NAME,
                        format!("{detail}; {} undecodable records", i.corrupt),
                        "reconcile those commands with the cloud (README: A store that cannot be opened)",
                    ),
                    StoreState::Free,
                )
            } else {
                (Check::ok(NAME, detail), StoreState::Free)
            }
        }
        Err(e) => (
            Check::fail(
                NAME,
                format!("{}: {e}", dir.display()),
                "permissions: chown -R posbridge:posbridge the store; damage: the agent moves it aside at next start (README: A store that cannot be opened)",
            ),
            StoreState::Unavailable,
        ),
    }
}

/// The owner of `path` when it exists and is not the current user (root included: root
/// creating files there would leave them unwritable for the agent).
fn foreign_owner(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    (meta.uid() != me).then_some(meta.uid())
}

/// Free space on the file system holding `path` (or its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

fn disk(path: &Path) -> Check {
    const NAME: &str = "disk";
    match free_bytes(path) {
        Err(e) => Check::warn(NAME, format!("cannot stat {}: {e}", path.display()), ""),
        Ok(free) => {
            let detail = format!(
                "{:.0} MiB free for {}",
                free as f64 / (1024.0 * 1024.0),
                path.display()
            );
            let fix = "free space (journalctl --vacuum-size=50M, apt-get clean) or move store.path to a bigger disk";
            if free < DISK_FAIL {
                Check::fail(NAME, detail, fix)
            } else if free < DISK_WARN {
                Check::warn(NAME, detail, fix)
            } else {
                Check::ok(NAME, detail)
            }
        }
    }
}

fn key_file(cfg: &Config) -> Check {
    const NAME: &str = "device key";
    let path = &cfg.store.key_file;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                format!("{} does not exist yet", path.display()),
                "created (0600) at the agent's first start or by `posbridge provision`; back it up with the store",
            )
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("{}: {e}", path.display()),
                "run doctor as the agent's user: `sudo -u posbridge posbridge doctor`",
            )
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Check::fail(
            NAME,
            format!(
                "{} has mode {mode:04o}: readable beyond its owner",
                path.display()
            ),
            format!("chmod 600 {}", path.display()),
        );
    }
    if meta.len() != 32 {
        return Check::fail(
            NAME,
            format!(
                "{} holds {} bytes, not 32: stored secrets cannot be read",
                path.display(),
                meta.len()
            ),
            "restore the key from backup, or move it away and set the secrets again (`posbridge secret set`)",
        );
    }
    if let Err(e) = std::fs::File::open(path) {
        return Check::fail(
            NAME,
            format!("{}: {e}", path.display()),
            "run doctor as the agent's user: `sudo -u posbridge posbridge doctor`",
        );
    }
    Check::ok(
        NAME,
        format!("{} mode {mode:04o}, 32 bytes", path.display()),
    )
}

/// Every `*_file` key in the configuration: must be readable; secret ones (passwords,
/// private and API keys) must not be readable by everyone. Generic over terminal kinds.
fn files(cfg: &Config) -> Vec<Check> {
    let mut found = Vec::new();
    if let Ok(v) = serde_json::to_value(cfg) {
        collect_files(&v, String::new(), &mut found);
    }
    found
        .into_iter()
        .filter(|(key, _)| key != "store.key_file")
        .map(|(key, path)| file_check(&key, &path))
        .collect()
}

fn collect_files(v: &Value, at: String, out: &mut Vec<(String, PathBuf)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match v {
                    Value::String(s) if k.ends_with("_file") && !s.is_empty() => {
                        out.push((key, PathBuf::from(s)))
                    }
                    _ => collect_files(v, key, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_files(item, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_secret_file(key: &str) -> bool {
    let name = key.rsplit('.').next().unwrap_or(key);
    !name.contains("public")
        && (name.contains("password") || name.contains("secret") || name.contains("key"))
}

fn file_check(key: &str, path: &Path) -> Check {
    let name = key.to_string();
    let readable_fix =
        "make it readable by the agent: chown root:posbridge FILE; chmod 640 FILE (and run doctor as posbridge)";
    if let Err(e) = std::fs::File::open(path) {
        return Check::fail(
            name,
            format!("{}: {e}", path.display()),
            readable_fix.replace("FILE", &path.display().to_string()),
        );
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    if is_secret_file(key) && mode & 0o007 != 0 {
        return Check::fail(
            name,
            format!(
                "{} has mode {mode:04o}: a secret readable by every user",
                path.display()
            ),
            format!(
                "chown root:posbridge {p}; chmod 640 {p}",
                p = path.display()
            ),
        );
    }
    Check::ok(name, format!("{} mode {mode:04o}", path.display()))
}

// ------------------------------------------------------------------ terminals

async fn terminals(cfg: &Config, store_state: StoreState, broker: &BrokerView) -> Vec<Check> {
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
            return vec![Check::fail(
                "terminals",
                format!("cannot prepare the drivers: {e:#}"),
                "",
            )]
        }
    };
    let drivers = crate::agent::build_drivers(cfg, &env.0);
    let kinds: std::collections::HashMap<&str, &str> = cfg
        .terminals
        .iter()
        .map(|t| (t.id(), t.kind_name()))
        .collect();
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
        let agent_view = broker
            .terminals
            .get(&id)
            .and_then(|v| v.get("state"))
            .and_then(Value::as_str);
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
            Err(_) => Check::fail(
                name,
                format!("no health answer within {HEALTH_TIMEOUT:?}"),
                fix,
            ),
            Ok(h) if matches!(h.state, "connected" | "busy") => {
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
    Ok(Env(DriverEnv {
        store,
        secrets,
        agent_id: cfg.agent_id.clone(),
    }))
}

// ------------------------------------------------------------------ output

/// The table: check | status | detail | fix.
pub fn render(checks: &[Check]) -> String {
    let w_name = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<w_name$}  {:<6}  DETAIL\n", "CHECK", "STATUS");
    for c in checks {
        out.push_str(&format!(
            "{:<w_name$}  {:<6}  {}\n",
            c.name,
            c.level.as_str(),
            c.detail
        ));
        if !c.fix.is_empty() && c.level != Level::Ok {
            out.push_str(&format!("{:<w_name$}  {:<6}  fix: {}\n", "", "", c.fix));
        }
    }
    let fails = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warns = checks.iter().filter(|c| c.level == Level::Warn).count();
    out.push_str(&format!(
        "\n{} checks: {} ok, {warns} warning(s), {fails} failure(s)\n",
        checks.len(),
        checks.len() - fails - warns
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_keys() {
        assert!(is_secret_file("mqtt.password_file"));
        assert!(is_secret_file("mqtt.client_key_file"));
        assert!(is_secret_file("terminals[0].api_key_file"));
        assert!(is_secret_file("terminals[1].api_secret_file"));
        assert!(!is_secret_file("security.command_keys[0].public_key_file"));
        assert!(!is_secret_file("mqtt.ca_file"));
        assert!(!is_secret_file("mqtt.client_cert_file"));
    }

    #[test]
    fn files_are_found_generically_and_world_readable_secrets_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "x").expect("write");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = format!(
            "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_file = \"{}\"\n[[terminals]]\nid = \"p\"\nkind = \"paywall\"\nmode = \"disabled\"\napi_key_file = \"{}/missing\"\n",
            pw.display(),
            dir.path().display()
        );
        let cfg = Config::from_toml_str(&text).expect("config");
        let checks = files(&cfg);
        assert_eq!(checks.len(), 2, "{checks:?}");
        let pw_check = &checks[0];
        assert_eq!(pw_check.name, "mqtt.password_file");
        assert_eq!(pw_check.level, Level::Fail);
        assert!(pw_check.fix.contains("chmod 640"));
        let api = &checks[1];
        assert_eq!(api.name, "terminals[0].api_key_file");
        assert_eq!(api.level, Level::Fail);
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(files(&cfg)[0].level, Level::Ok);
    }

    #[test]
    fn key_file_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"{}\"\n",
            dir.path().display()
        );
        let cfg = Config::from_toml_str(&text).expect("config");
        assert_eq!(key_file(&cfg).level, Level::Warn); // not created yet
        std::fs::write(&cfg.store.key_file, [7u8; 32]).expect("write");
        std::fs::set_permissions(&cfg.store.key_file, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let c = key_file(&cfg);
        assert_eq!(c.level, Level::Fail);
        assert!(c.fix.starts_with("chmod 600"), "{c:?}");
        std::fs::set_permissions(&cfg.store.key_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        assert_eq!(key_file(&cfg).level, Level::Ok);
        std::fs::write(&cfg.store.key_file, [7u8; 5]).expect("write");
        assert_eq!(key_file(&cfg).level, Level::Fail);
    }

    #[test]
    fn free_space_of_a_path_not_created_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(&dir.path().join("not/yet")).expect("statvfs");
        assert!(free > 0);
    }

    #[test]
    fn table_shows_fix_only_for_problems() {
        let t = render(&[
            Check::ok("clock", "fine"),
            Check::fail("broker", "down", "start it"),
        ]);
        assert!(t.contains("clock   ok      fine"), "{t}");
        assert!(t.contains("broker  FAIL    down"), "{t}");
        assert!(t.contains("fix: start it"), "{t}");
        assert!(t.contains("1 ok, 0 warning(s), 1 failure(s)"), "{t}");
    }
}
