//! The terminal kinds' tables (`[[terminals]]`, tagged by `kind`): Kaspi, IP, Token
//! (with its USB filter and accessory strings), Paywall and Kuveyt, their enums (TLS mode,
//! provider mode, transport) and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::values::{duration_str, non_empty, secs};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Verify,
    Pin,
    Insecure,
}

/// Which provider environment a Paywall/Kuveyt terminal talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderMode {
    Test,
    Live,
    Disabled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Usb,
    /// Simulator and tests only.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TerminalConfig {
    Kaspi(KaspiTerminal),
    Ip(IpTerminal),
    Token(TokenTerminal),
    Paywall(PaywallTerminal),
    Kuveyt(KuveytTerminal),
}

impl TerminalConfig {
    pub fn id(&self) -> &str {
        match self {
            TerminalConfig::Kaspi(t) => &t.id,
            TerminalConfig::Ip(t) => &t.id,
            TerminalConfig::Token(t) => &t.id,
            TerminalConfig::Paywall(t) => &t.id,
            TerminalConfig::Kuveyt(t) => &t.id,
        }
    }

    /// The `kind` value as written in the file.
    pub fn kind_name(&self) -> &'static str {
        match self {
            TerminalConfig::Kaspi(_) => "kaspi",
            TerminalConfig::Ip(_) => "ip",
            TerminalConfig::Token(_) => "token",
            TerminalConfig::Paywall(_) => "paywall",
            TerminalConfig::Kuveyt(_) => "kuveyt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KaspiTerminal {
    pub id: String,
    /// Base URL; the driver appends `/v2`.
    pub url: String,
    #[serde(default)]
    pub tls: TlsMode,
    /// Name to verify when `url` uses an IP address.
    #[serde(default, deserialize_with = "non_empty")]
    pub tls_name: Option<String>,
    /// `tls = "pin"`: hex SHA-256 of the terminal's DER certificate.
    #[serde(default, deserialize_with = "non_empty")]
    pub pin_sha256: Option<String>,
    /// `tls = "verify"`: extra trusted CA besides the system roots.
    #[serde(default, deserialize_with = "non_empty")]
    pub ca_file: Option<PathBuf>,
    /// Empty in the file means `"posbridge-" + agent_id` (filled in by `load`).
    #[serde(default)]
    pub register_name: String,
    #[serde(default = "yes")]
    pub protected: bool,
    /// `/v2/status` poll interval while a payment runs (kaspi.md: recommended 1 s).
    #[serde(default = "secs::<1>", with = "duration_str")]
    pub poll_interval: Duration,
    /// Gap between two `/v2/actualize` calls (kaspi.md: at most once per 10 s).
    #[serde(default = "secs::<10>", with = "duration_str")]
    pub actualize_interval: Duration,
    /// How long an `unknown` process is actualized before the result says `unknown`.
    #[serde(default = "secs::<300>", with = "duration_str")]
    pub actualize_window: Duration,
    /// Overall deadline of one payment/refund on the device (180 s QR + 60 s confirmation
    /// + margin); past it the outcome is `unknown`, never guessed.
    #[serde(default = "secs::<260>", with = "duration_str")]
    pub payment_timeout: Duration,
    /// Timeout of one HTTP request to the terminal.
    #[serde(default = "secs::<10>", with = "duration_str")]
    pub request_timeout: Duration,
    /// `posbridge kaspi register`: how long to wait for the cashier to press "Allow".
    #[serde(default = "secs::<120>", with = "duration_str")]
    pub register_timeout: Duration,
    /// Renew the access token when less than this remains before `expirationDate`.
    #[serde(default = "secs::<3600>", with = "duration_str")]
    pub renew_before: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpTerminal {
    pub id: String,
    /// `host:port`.
    pub addr: String,
    #[serde(default = "secs::<5>", with = "duration_str")]
    pub connect_timeout: Duration,
    /// How long to wait for the terminal to answer a pay.
    #[serde(default = "secs::<120>", with = "duration_str")]
    pub op_timeout: Duration,
    /// After a lost answer, how long to keep asking the terminal `status` by ref before the
    /// outcome is reported `unknown` (+ needs_reconciliation).
    #[serde(default = "secs::<30>", with = "duration_str")]
    pub recovery_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenTerminal {
    pub id: String,
    #[serde(default)]
    pub transport: Transport,
    #[serde(default)]
    pub usb: UsbFilter,
    /// `host:port`, used when `transport = "tcp"`.
    #[serde(default, deserialize_with = "non_empty")]
    pub addr: Option<String>,
    /// Verify the certificate chain and the fiscal serial.
    #[serde(default)]
    pub strict: bool,
    #[serde(default, deserialize_with = "non_empty")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_company_name")]
    pub company_name: String,
    /// Device quantity = contract units × this (token.md: the seed's example uses 1000).
    #[serde(default = "default_quantity_scale")]
    pub quantity_scale: u32,
    /// Connect + each handshake step.
    #[serde(default = "secs::<5>", with = "duration_str")]
    pub connect_timeout: Duration,
    /// How long a sale may take on the register (customer time included).
    #[serde(default = "secs::<120>", with = "duration_str")]
    pub op_timeout: Duration,
    /// After a lost link or a restart mid-sale: how long to reconnect and wait for the
    /// sale result before answering `unknown`.
    #[serde(default = "secs::<30>", with = "duration_str")]
    pub recovery_window: Duration,
}

/// Optional filters picking one USB device among several.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct UsbFilter {
    pub vid: Option<u16>,
    pub pid: Option<u16>,
    #[serde(deserialize_with = "non_empty")]
    pub serial: Option<String>,
    /// Token/AOA: the identification strings sent to the register (`SEND_STRING` 0–5).
    pub accessory: UsbAccessory,
}

/// Android Open Accessory identification strings; the register's app matches on them.
/// Defaults are the vendor library's (`token.md` § USB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsbAccessory {
    pub manufacturer: String,
    pub model: String,
    pub description: String,
    pub version: String,
    pub uri: String,
    pub serial: String,
}

impl Default for UsbAccessory {
    fn default() -> Self {
        UsbAccessory {
            manufacturer: "PCHost".into(),
            model: "PCHost1".into(),
            description: "Integration Hub".into(),
            version: "2.5.0.1".into(),
            uri: "https://github.com/TokenPublication".into(),
            serial: "666".into(),
        }
    }
}

// Named errors inside the table: serde reports them under "terminals[i]" only.
impl<'de> Deserialize<'de> for UsbFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UsbFilter::deserialize(d).map_err(|e| serde::de::Error::custom(format!("usb: {e}")))
    }
}

impl Serialize for UsbFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        UsbFilter::serialize(self, s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaywallTerminal {
    pub id: String,
    /// Required: a real-money mode is never chosen by default.
    pub mode: ProviderMode,
    #[serde(default, deserialize_with = "non_empty")]
    pub test_url: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub live_url: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub terminal_guid: Option<String>,
    /// Or `posbridge secret set <id> api_key`.
    #[serde(default, deserialize_with = "non_empty")]
    pub api_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub client_key_file: Option<PathBuf>,
    /// How long a sync sale may take, customer time at the terminal included.
    #[serde(default = "secs::<180>", with = "duration_str")]
    pub op_timeout: Duration,
    /// After a lost or unusable answer: how long to keep asking Paywall about the sale
    /// (by MerchantUniqueCode) before reporting `unknown`.
    #[serde(default = "secs::<60>", with = "duration_str")]
    pub recovery_window: Duration,
    /// ISO 4217 code → Paywall `CurrencyId`. Empty means `{ TRY = 1 }`, the only value
    /// the Paywall documentation shows.
    #[serde(default)]
    pub currency_ids: std::collections::BTreeMap<String, u32>,
    /// Extra trusted CA (PEM) for the provider's HTTPS, besides the system roots (tests,
    /// private PKI).
    #[serde(default, deserialize_with = "non_empty")]
    pub ca_file: Option<PathBuf>,
}

// Repeats PaywallTerminal's first keys on purpose: `#[serde(flatten)]` would switch off
// deny_unknown_fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KuveytTerminal {
    pub id: String,
    /// Required: a real-money mode is never chosen by default.
    pub mode: ProviderMode,
    #[serde(default, deserialize_with = "non_empty")]
    pub test_url: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub live_url: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub return_url: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub cancel_url: Option<String>,
    /// Or `posbridge secret set <id> api_key`.
    #[serde(default, deserialize_with = "non_empty")]
    pub api_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub api_secret_file: Option<PathBuf>,
    /// How often a created payment is verified while the customer pays (kuveyt.md: every
    /// few seconds, at least 2 s).
    #[serde(default = "secs::<3>", with = "duration_str")]
    pub poll_interval: Duration,
    /// Extra trusted CA (PEM) for the provider's HTTPS, besides the system roots.
    #[serde(default, deserialize_with = "non_empty")]
    pub ca_file: Option<PathBuf>,
}

fn default_quantity_scale() -> u32 {
    1000
}
fn default_company_name() -> String {
    "posbridge".into()
}
fn yes() -> bool {
    true
}
