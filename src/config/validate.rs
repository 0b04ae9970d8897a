//! Checks that need more than a type: identifiers, URLs, addresses, ranges, and
//! keys that depend on each other (spec/config.md).

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::LazyLock;
use std::time::Duration;

use regex_lite::Regex;

use super::{
    Config, ConfigError, IpTerminal, KaspiTerminal, KuveytTerminal, MqttConfig, PaywallTerminal,
    ProviderMode, TerminalConfig, TlsMode, TokenTerminal, Transport,
};

static ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]{1,64}$").expect("static regex"));
static HEX_SHA256: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9A-Fa-f]{64}$").expect("static regex"));
static GUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
        .expect("static regex")
});

const MIN_MAX_BYTES: usize = 1024;
const MAX_MAX_BYTES: usize = 16 * 1024 * 1024;

/// One broker the agent's MQTT connection may go to, parsed from `mqtt.url` or an
/// entry of `mqtt.urls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    /// `mqtts://`.
    pub tls: bool,
    /// Bare host name or IP (IPv6 without brackets).
    pub host: String,
    /// The URL's port, else 1883 (`mqtt://`) or 8883 (`mqtts://`).
    pub port: u16,
}

type Result<T = ()> = std::result::Result<T, ConfigError>;

fn invalid<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T> {
    Err(ConfigError::invalid(key, message))
}

impl Config {
    /// Called by every loader; returns the first problem, naming its key.
    pub fn validate(&self) -> Result {
        check_id("agent_id", &self.agent_id)?;
        check_topic_prefix(&self.topic_prefix)?;
        self.mqtt.validate()?;
        if self.store.path.as_os_str().is_empty() {
            return invalid("store.path", "must not be empty");
        }
        check_retention(self.store.retention, crate::faults::short_retention_allowed())?;
        check_positive("commands.default_ttl", self.commands.default_ttl)?;
        let max_bytes = self.commands.max_bytes;
        if !(MIN_MAX_BYTES..=MAX_MAX_BYTES).contains(&max_bytes) {
            return invalid(
                "commands.max_bytes",
                format!(
                    "{max_bytes} is outside {MIN_MAX_BYTES} (1 KiB) ..= {MAX_MAX_BYTES} (16 MiB)"
                ),
            );
        }
        if self.commands.queue_depth < 1 {
            return invalid("commands.queue_depth", "must be at least 1");
        }
        let mut kids = HashMap::new();
        for (i, key) in self.security.command_keys.iter().enumerate() {
            let at = format!("security.command_keys[{i}]");
            if key.kid.is_empty() {
                return invalid(format!("{at}.kid"), "must not be empty");
            }
            if let Some(j) = kids.insert(key.kid.as_str(), i) {
                return invalid(
                    format!("{at}.kid"),
                    format!("duplicate kid {:?} (also security.command_keys[{j}])", key.kid),
                );
            }
            if key.public_key_file.as_os_str().is_empty() {
                return invalid(format!("{at}.public_key_file"), "must not be empty");
            }
        }
        if self.telemetry.interval < Duration::from_secs(1) {
            return invalid("telemetry.interval", "must be at least 1s");
        }
        if self.log.level.trim().is_empty() {
            return invalid("log.level", "must not be empty (e.g. \"info\")");
        }
        if !crate::logging::is_valid_filter(&self.log.level) {
            return invalid(
                "log.level",
                "must be a level or target=level directives separated by commas (e.g. \"info\" or \"debug,sled=warn\")",
            );
        }
        let mut ids = HashMap::new();
        for (i, terminal) in self.terminals.iter().enumerate() {
            let at = format!("terminals[{i}]");
            check_id(&format!("{at}.id"), terminal.id())?;
            if let Some(j) = ids.insert(terminal.id(), i) {
                return invalid(
                    format!("{at}.id"),
                    format!("duplicate terminal id {:?} (also terminals[{j}])", terminal.id()),
                );
            }
            terminal.validate(&at)?;
        }
        Ok(())
    }
}

/// At most this many brokers in `mqtt.urls`.
pub const MAX_BROKERS: usize = 16;

impl MqttConfig {
    /// The first broker (`mqtt.url`, or the first of `mqtt.urls`).
    pub fn endpoint(&self) -> Result<MqttEndpoint> {
        Ok(self.endpoints()?.remove(0))
    }

    /// The brokers the agent tries, in order: `mqtt.url`, or each of `mqtt.urls`.
    pub fn endpoints(&self) -> Result<Vec<MqttEndpoint>> {
        match (self.url.trim().is_empty(), self.urls.is_empty()) {
            (false, false) => invalid("mqtt.urls", "set mqtt.url or mqtt.urls, not both"),
            (true, true) => Err(ConfigError::MissingKey {
                key: "mqtt.url".into(),
                origin: "[mqtt] (or mqtt.urls: a list of brokers tried in order)".into(),
            }),
            (false, true) => Ok(vec![parse_endpoint("mqtt.url", &self.url)?]),
            (true, false) => {
                if self.urls.len() > MAX_BROKERS {
                    return invalid("mqtt.urls", format!("more than {MAX_BROKERS} brokers"));
                }
                let mut out: Vec<MqttEndpoint> = Vec::new();
                for (i, url) in self.urls.iter().enumerate() {
                    let key = format!("mqtt.urls[{i}]");
                    let ep = parse_endpoint(&key, url)?;
                    if out.contains(&ep) {
                        return invalid(key, format!("{url:?} is listed twice"));
                    }
                    out.push(ep);
                }
                Ok(out)
            }
        }
    }
}

impl MqttEndpoint {
    /// Parses one broker URL: scheme `mqtt://` or `mqtts://`, a host, an optional port;
    /// errors name `key` (the config key, or a command-line flag).
    pub fn parse(key: &str, url: &str) -> Result<MqttEndpoint> {
        parse_endpoint(key, url)
    }
}

fn parse_endpoint(key: &str, url: &str) -> Result<MqttEndpoint> {
    let url = url.trim();
    let expected = "expected mqtt://host[:port] or mqtts://host[:port]";
    let Some((scheme, rest)) = url.split_once("://") else {
        return invalid(key, format!("{url:?}: {expected}"));
    };
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        _ => return invalid(key, format!("scheme {scheme:?} in {url:?}: {expected}")),
    };
    if rest.contains('@') {
        return invalid(
            key,
            "credentials in the URL are not allowed; use mqtt.username and mqtt.password_file",
        );
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return invalid(key, format!("{url:?} has a path; {expected}"));
    }
    let (host, port) = split_host_port(authority).or_else(|m| invalid(key, m))?;
    Ok(MqttEndpoint { tls, host, port: port.unwrap_or(default_port) })
}

impl MqttConfig {
    fn validate(&self) -> Result {
        let endpoints = self.endpoints()?;
        if self.client_id.is_empty() {
            return invalid("mqtt.client_id", "must not be empty");
        }
        if !endpoints.iter().any(|e| e.tls) {
            for (key, set) in [
                ("mqtt.ca_file", self.ca_file.is_some()),
                ("mqtt.client_cert_file", self.client_cert_file.is_some()),
                ("mqtt.client_key_file", self.client_key_file.is_some()),
            ] {
                if set {
                    return invalid(key, "only used with an mqtts:// url");
                }
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => {
                return invalid("mqtt.client_key_file", "needed with client_cert_file")
            }
            (None, Some(_)) => {
                return invalid("mqtt.client_cert_file", "needed with client_key_file")
            }
            _ => {}
        }
        // MQTT 3.1.1 §3.1.2.9: no password without a user name.
        if self.password_file.is_some() && self.username.is_none() {
            return invalid("mqtt.password_file", "needs mqtt.username");
        }
        // A broker password in clear text on the shop's network: only when asked for (or
        // to this machine itself).
        let key = if self.urls.is_empty() { "mqtt.url" } else { "mqtt.urls" };
        let clear = endpoints.iter().any(|e| !e.tls && !is_loopback_host(&e.host));
        if clear && self.password_file.is_some() && !self.allow_plaintext {
            return invalid(
                key,
                "mqtt:// would send mqtt.password_file's password in clear text: use mqtts://, or set mqtt.allow_plaintext = true",
            );
        }
        if self.keep_alive < Duration::from_secs(1) || self.keep_alive.as_secs() > u16::MAX.into() {
            return invalid("mqtt.keep_alive", "must be between 1s and 65535s");
        }
        Ok(())
    }
}

impl TerminalConfig {
    fn validate(&self, at: &str) -> Result {
        match self {
            TerminalConfig::Kaspi(t) => t.validate(at),
            TerminalConfig::Ip(t) => t.validate(at),
            TerminalConfig::Token(t) => t.validate(at),
            TerminalConfig::Paywall(t) => t.validate(at),
            TerminalConfig::Kuveyt(t) => t.validate(at),
        }
    }
}

impl KaspiTerminal {
    fn validate(&self, at: &str) -> Result {
        let https = check_http_url(&format!("{at}.url"), &self.url)?;
        if let Some(pin) = &self.pin_sha256 {
            if !HEX_SHA256.is_match(pin) {
                return invalid(
                    format!("{at}.pin_sha256"),
                    "must be 64 hex digits (SHA-256 of the DER certificate)",
                );
            }
        }
        if self.tls == TlsMode::Pin {
            if self.pin_sha256.is_none() {
                return invalid(format!("{at}.pin_sha256"), "required with tls = \"pin\"");
            }
            if !https {
                return invalid(format!("{at}.tls"), "\"pin\" needs an https:// url");
            }
        }
        if let Some(name) = &self.tls_name {
            if !is_host(name) {
                return invalid(format!("{at}.tls_name"), format!("{name:?} is not a host name"));
            }
        }
        if self.register_name.trim().is_empty() {
            return invalid(format!("{at}.register_name"), "must not be empty");
        }
        for (key, value) in [
            ("poll_interval", self.poll_interval),
            ("actualize_interval", self.actualize_interval),
            ("actualize_window", self.actualize_window),
            ("payment_timeout", self.payment_timeout),
            ("request_timeout", self.request_timeout),
            ("register_timeout", self.register_timeout),
        ] {
            check_positive(&format!("{at}.{key}"), value)?;
        }
        Ok(())
    }
}

impl IpTerminal {
    fn validate(&self, at: &str) -> Result {
        check_host_port(&format!("{at}.addr"), &self.addr)?;
        check_positive(&format!("{at}.connect_timeout"), self.connect_timeout)?;
        check_positive(&format!("{at}.recovery_window"), self.recovery_window)?;
        check_positive(&format!("{at}.op_timeout"), self.op_timeout)
    }
}

impl TokenTerminal {
    fn validate(&self, at: &str) -> Result {
        match (&self.addr, self.transport) {
            (Some(addr), _) => check_host_port(&format!("{at}.addr"), addr)?,
            (None, Transport::Tcp) => {
                return invalid(format!("{at}.addr"), "required with transport = \"tcp\"")
            }
            (None, Transport::Usb) => {}
        }
        if self.company_name.trim().is_empty() {
            return invalid(format!("{at}.company_name"), "must not be empty");
        }
        if self.strict && self.ca_file.is_none() {
            return invalid(
                format!("{at}.ca_file"),
                "required with strict = true (the Kamu SM OKC-S2 CA to verify the register against)",
            );
        }
        if !matches!(self.quantity_scale, 1 | 10 | 100 | 1000 | 10000) {
            return invalid(format!("{at}.quantity_scale"), "must be 1, 10, 100, 1000 or 10000");
        }
        check_positive(&format!("{at}.connect_timeout"), self.connect_timeout)?;
        check_positive(&format!("{at}.op_timeout"), self.op_timeout)?;
        check_positive(&format!("{at}.recovery_window"), self.recovery_window)
    }
}

impl PaywallTerminal {
    fn validate(&self, at: &str) -> Result {
        check_mode_urls(at, self.mode, &self.test_url, &self.live_url)?;
        check_positive(&format!("{at}.op_timeout"), self.op_timeout)?;
        check_positive(&format!("{at}.recovery_window"), self.recovery_window)?;
        for code in self.currency_ids.keys() {
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return invalid(
                    format!("{at}.currency_ids.{code}"),
                    "keys must be ISO 4217 codes (3 capital letters)",
                );
            }
        }
        match &self.terminal_guid {
            Some(guid) if !GUID.is_match(guid) => {
                invalid(format!("{at}.terminal_guid"), format!("{guid:?} is not a GUID"))
            }
            None if self.mode != ProviderMode::Disabled => {
                invalid(format!("{at}.terminal_guid"), "required unless mode = \"disabled\"")
            }
            _ => Ok(()),
        }
    }
}

impl KuveytTerminal {
    fn validate(&self, at: &str) -> Result {
        check_mode_urls(at, self.mode, &self.test_url, &self.live_url)?;
        if self.poll_interval < Duration::from_secs(2) {
            return invalid(
                format!("{at}.poll_interval"),
                "must be at least 2s (kuveyt.md: verify every few seconds)",
            );
        }
        for (name, url) in [("return_url", &self.return_url), ("cancel_url", &self.cancel_url)] {
            if let Some(url) = url {
                check_http_url(&format!("{at}.{name}"), url)?;
            }
        }
        Ok(())
    }
}

/// `localhost`, or a loopback address (IPv6 in brackets or not).
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_loopback_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.host_str().is_some_and(is_loopback_host))
}

/// The URL of the active mode is required; any URL given must be well formed.
fn check_mode_urls(
    at: &str, mode: ProviderMode, test_url: &Option<String>, live_url: &Option<String>,
) -> Result {
    let active = match mode {
        ProviderMode::Test => Some("test_url"),
        ProviderMode::Live => Some("live_url"),
        ProviderMode::Disabled => None,
    };
    for (name, url) in [("test_url", test_url), ("live_url", live_url)] {
        match url {
            Some(url) => {
                check_http_url(&format!("{at}.{name}"), url)?;
                // Live credentials and real money never travel in clear (plain HTTP only
                // to this machine itself: a simulator, a local TLS-terminating proxy).
                if name == "live_url" && !url.starts_with("https://") && !is_loopback_url(url) {
                    return invalid(
                        format!("{at}.{name}"),
                        format!("{url:?}: a live provider URL must be https:// (plain http:// only to 127.0.0.1, ::1 or localhost)"),
                    );
                }
            }
            None if active == Some(name) => {
                return invalid(
                    format!("{at}.{name}"),
                    format!("required with mode = {:?}", name.trim_end_matches("_url")),
                );
            }
            None => {}
        }
    }
    Ok(())
}

fn check_id(key: &str, id: &str) -> Result {
    if ID.is_match(id) {
        Ok(())
    } else {
        invalid(key, format!("{id:?} must match [A-Za-z0-9_-]{{1,64}}"))
    }
}

fn check_topic_prefix(prefix: &str) -> Result {
    let bad_level = prefix.split('/').any(|level| level.is_empty());
    if bad_level || prefix.starts_with('$') || prefix.contains(['+', '#', '\0']) {
        return invalid(
            "topic_prefix",
            format!("{prefix:?} must be MQTT topic levels without wildcards, '$' or empty levels"),
        );
    }
    Ok(())
}

/// `store.retention` is the idempotency window of unsigned commands: an id pruned from
/// the store would run again if the cloud sent it once more. A day at least (the floor
/// covers a cloud POS retrying a payment it got no answer for, through a night offline);
/// `allow_short` (a test build's `POSBRIDGE_TEST_SHORT_RETENTION`) lowers the floor to
/// more than 0s, for the soak bench.
pub(crate) fn check_retention(retention: Duration, allow_short: bool) -> Result {
    if allow_short {
        return check_positive("store.retention", retention);
    }
    if retention < super::MIN_RETENTION {
        return invalid(
            "store.retention",
            "must be at least 1d: a command id is de-duplicated only this long after its command finished, and a payment resent after its id was pruned would run again",
        );
    }
    Ok(())
}

fn check_positive(key: &str, value: Duration) -> Result {
    if value.is_zero() {
        return invalid(key, "must be more than 0s");
    }
    Ok(())
}

fn check_host_port(key: &str, addr: &str) -> Result {
    match split_host_port(addr) {
        Ok((_, Some(_))) => Ok(()),
        Ok((_, None)) => invalid(key, format!("{addr:?}: expected host:port")),
        Err(message) => invalid(key, message),
    }
}

/// Checks an `http(s)://host[:port][/path]` URL; returns whether it is https.
fn check_http_url(key: &str, url: &str) -> Result<bool> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return invalid(key, format!("{url:?}: expected http:// or https://"));
    };
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return invalid(key, format!("scheme {scheme:?}: expected http:// or https://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return invalid(
            key,
            "credentials in the URL are not allowed; use the *_file keys or `posbridge secret set`",
        );
    }
    split_host_port(authority).or_else(|m| invalid(key, m))?;
    Ok(https)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host without brackets, port).
fn split_host_port(text: &str) -> std::result::Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(format!("{text:?}: missing ']'"));
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(format!("{text:?}: junk after ']'"))?),
        };
        (v6, port)
    } else {
        match text.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(format!("{text:?}: write IPv6 addresses as [addr]:port"))
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if !host.contains(':') && !is_host(host) {
        return Err(format!("{text:?}: {host:?} is not a host name or IP address"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("{text:?}: port {p:?} is not 1..=65535")),
        },
    };
    Ok((host.to_owned(), port))
}

fn is_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Hides `user:password@` in a URL (for printing a config that was never validated).
pub(super) fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}@{}", super::mask::MASK, &rest[at + 1..]),
        None => url.to_owned(),
    }
}
