//! What the two cloud-backed terminals (`paywall`, `kuveyt`) share: integration modes and
//! their credentials, exact money formatting, and an HTTP edge that tells "the request
//! never left" from "it may have been processed" and never crashes on an odd answer.

pub mod money;

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::config::ProviderMode;
use crate::secrets::Secrets;

/// `mode` of a cloud terminal as carried on results (`"test"`, `"live"`, `"disabled"`).
pub fn mode_name(mode: ProviderMode) -> &'static str {
    match mode {
        ProviderMode::Test => "test",
        ProviderMode::Live => "live",
        ProviderMode::Disabled => "disabled",
    }
}

/// A credential in memory: wiped on drop, never printed.
pub struct Credential {
    value: Zeroizing<String>,
    /// Where it came from, for logs and errors (never the value).
    pub source: String,
}

impl Credential {
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential(*** from {})", self.source)
    }
}

/// Find credential `name` (e.g. `api_key`) of terminal `terminal` for `mode`.
///
/// Order (docs/terminals/paywall.md): the secrets store wins over files, and a
/// mode-specific secret wins over a generic one:
/// 1. secret `<mode>_<name>` (`posbridge secret set paywall-1 live_api_key`), so test and
///    live credentials can both be provisioned and switching `mode` switches them;
/// 2. secret `<name>` (`posbridge secret set paywall-1 api_key`): the credential of
///    whatever mode is configured;
/// 3. the file named by `<name>_file` in the terminal's config (first line, trimmed).
///
/// Values are never logged; the source is.
pub fn credential(
    secrets: &Secrets, terminal: &str, mode: &str, name: &str, file: Option<&Path>,
) -> Result<Credential, String> {
    for slot in [format!("{mode}_{name}"), name.to_string()] {
        match secrets.get(terminal, &slot) {
            Ok(Some(s)) => {
                let Some(text) = s.expose_str() else {
                    return Err(format!("secret {terminal}/{slot} is not UTF-8 text"));
                };
                let value = Zeroizing::new(text.trim().to_string());
                if value.is_empty() {
                    return Err(format!("secret {terminal}/{slot} is empty"));
                }
                if let Some(f) = file {
                    tracing::warn!(terminal, slot = %slot, file = %f.display(),
                        "both a stored secret and a {name}_file are set; using the stored secret");
                }
                return Ok(Credential { value, source: format!("secret {terminal}/{slot}") });
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let Some(path) = file else {
        return Err(format!(
            "no {name}: set {name}_file in the terminal's config or run `posbridge secret set {terminal} {mode}_{name}`"
        ));
    };
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("{name}_file {}: {e}", path.display()))?,
    );
    let value = Zeroizing::new(text.lines().next().unwrap_or("").trim().to_string());
    if value.is_empty() {
        return Err(format!("{name}_file {} is empty", path.display()));
    }
    Ok(Credential { value, source: format!("{name}_file {}", path.display()) })
}

/// Where a cloud terminal calls and with what: its provider's base URL for the configured
/// mode, its two credentials and an HTTP client.
pub struct Access {
    pub base: String,
    pub key: Credential,
    pub secret: Credential,
    pub client: reqwest::Client,
}

/// What [`Access::open`] reads from a cloud terminal's config.
pub struct AccessConfig<'a> {
    pub kind: &'static str,
    pub id: &'a str,
    pub mode: ProviderMode,
    pub test_url: Option<&'a str>,
    pub live_url: Option<&'a str>,
    /// The two credentials by name (`api_key`, then `client_key` or `api_secret`) with
    /// the files the config names for them.
    pub credentials: [(&'static str, Option<&'a Path>); 2],
    pub ca_file: Option<&'a Path>,
    pub connect_timeout: Duration,
}

impl AccessConfig<'_> {
    /// The configured mode's base URL, without a trailing `/` (empty when disabled or unset).
    pub fn base(&self) -> String {
        match self.mode {
            ProviderMode::Test => self.test_url,
            ProviderMode::Live => self.live_url,
            ProviderMode::Disabled => None,
        }
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string()
    }
}

impl Access {
    /// Everything needed to call the provider, or why this terminal cannot be used (it
    /// is disabled, a credential is missing, the CA file is unreadable). Logs where the
    /// credentials came from (never their values), or a warning with the reason.
    pub fn open(c: &AccessConfig, secrets: &Secrets) -> Result<Access, String> {
        let mode_name = mode_name(c.mode);
        let opened = if c.mode == ProviderMode::Disabled {
            Err(format!("terminal {} is disabled (mode = \"disabled\" in the config)", c.id))
        } else {
            let [(key_name, key_file), (secret_name, secret_file)] = c.credentials;
            (|| {
                let key = credential(secrets, c.id, mode_name, key_name, key_file)?;
                let secret = credential(secrets, c.id, mode_name, secret_name, secret_file)?;
                let client = http_client(c.connect_timeout, c.ca_file)?;
                tracing::info!(terminal = %c.id, kind = c.kind, mode = mode_name,
                    "credentials loaded: {key_name} from {}, {secret_name} from {}",
                    key.source, secret.source);
                Ok(Access { base: c.base(), key, secret, client })
            })()
            .map_err(|e: String| format!("terminal {} ({mode_name} mode): {e}", c.id))
        };
        if let Err(e) = &opened {
            tracing::warn!(terminal = %c.id, kind = c.kind, error = %e, "terminal unusable");
        }
        opened
    }
}

/// A header value that holds a secret (a token, an API key): marked sensitive, so HTTP
/// client logging and debug output never show it. A value no header can carry becomes an
/// empty one (the provider then refuses the credentials, which says what is wrong).
pub fn secret_header(value: &str) -> reqwest::header::HeaderValue {
    let mut v = reqwest::header::HeaderValue::from_str(value)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// Why a call gave no usable answer.
use super::http::Transport;

/// A JSON object answer with its HTTP status, keys lower-cased at every level
/// (`paywall.md`: key casing varies between routes — parse case-insensitively).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// Most bytes read from an answer; a provider's JSON is a few KiB.
const MAX_BODY: usize = 1024 * 1024;

/// Turn a raw HTTP answer into a [`Reply`] or a clear error. Pure: unit-tested with the
/// odd answers a proxy or a broken server gives.
pub fn classify(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<Reply, Transport> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Transport::MaybeSent(format!("HTTP {status} with an empty body")));
    }
    if body.len() > MAX_BODY {
        return Err(Transport::MaybeSent(format!(
            "HTTP {status} with a body over {MAX_BODY} bytes"
        )));
    }
    if !ct.contains("json") {
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
        let what = match html_title(&text) {
            Some(t) => format!("an HTML page ({t:?})"),
            None if text.trim_start().starts_with('<') => "an HTML page".to_string(),
            None => format!("{:?}", text.chars().take(80).collect::<String>()),
        };
        let ct = if ct.is_empty() { "none" } else { &ct };
        return Err(Transport::MaybeSent(format!(
            "HTTP {status} answered Content-Type {ct}, not JSON: {what}"
        )));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Transport::MaybeSent(format!("HTTP {status} with a body that is not valid JSON: {e}"))
    })?;
    if !v.is_object() {
        return Err(Transport::MaybeSent(format!(
            "HTTP {status} with a JSON body that is not an object"
        )));
    }
    Ok(Reply { status, body: lower_keys(v) })
}

fn html_title(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("<title>")? + "<title>".len();
    let end = lower[start..].find("</title>")? + start;
    Some(text.get(start..end)?.trim().to_string())
}

/// Lower-case every object key, recursively.
pub fn lower_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lower_keys(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(lower_keys).collect()),
        other => other,
    }
}

/// An HTTP client for one provider: no redirects (a redirected POST is not what was
/// asked), bounded connect time.
pub fn http_client(
    connect_timeout: Duration, ca_file: Option<&Path>,
) -> Result<reqwest::Client, String> {
    // API keys travel in headers: no redirects (a 30x answer is an answer, not a hop) and
    // no proxy from the environment.
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no certificate in it", path.display()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("posbridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Send a prepared request and classify the answer.
pub async fn send(req: reqwest::RequestBuilder) -> Result<Reply, Transport> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Err(Transport::of(e)),
    };
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // In chunks, up to the cap: a provider (or whatever answers in its place) cannot make
    // the agent buffer an endless body.
    let mut resp = resp;
    let mut body: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    return Err(Transport::MaybeSent(format!(
                        "HTTP {status} with a body over {MAX_BODY} bytes"
                    )));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Transport::MaybeSent(format!(
                    "HTTP {status}, body lost: {}",
                    super::http::error_chain(&e)
                )))
            }
        }
    }
    classify(status, ct.as_deref(), &body)
}

/// URL without user info, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

/// Validation shared by the cloud providers: a terminal that cannot be used (no
/// credentials, disabled) refuses every command with `device_unavailable`; a payment must
/// pass the provider's own field rules (`bad_request` naming the field).
pub fn validate<T>(
    usable: &Result<T, String>, cmd: &crate::api::Command,
    payment: impl FnOnce(&crate::api::Command) -> Result<(), String>,
) -> Result<(), crate::api::Rejection> {
    use crate::api::{ErrorCode, Op, Rejection};
    if let Err(e) = usable {
        return Err(Rejection::new(ErrorCode::DeviceUnavailable, e.clone()));
    }
    if cmd.op() == Op::Payment {
        payment(cmd).map_err(|e| Rejection::new(ErrorCode::BadRequest, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers with an endless JSON body: the agent stops reading at the
    /// cap instead of buffering it (loopback only).
    #[tokio::test]
    async fn an_endless_body_is_cut_at_the_cap() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if c.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
            // At most 64 MiB, then give up: the client must have stopped long before.
            for _ in 0..1024 {
                if c.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                counter.fetch_add(64 * 1024, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let client = http_client(Duration::from_secs(2), None).expect("client");
        let r = send(client.get(format!("http://{addr}/")).timeout(Duration::from_secs(20))).await;
        match r {
            Err(Transport::MaybeSent(m)) => assert!(m.contains("body over"), "{m}"),
            other => panic!("{other:?}"),
        }
        let n = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n < 8 * MAX_BODY, "the client read on: {n} bytes sent");
    }

    #[test]
    fn secret_headers_are_marked_sensitive() {
        let v = secret_header("k3y");
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().ok(), Some("k3y"));
        // Not a header value: empty (the provider refuses it), never a panic.
        assert!(secret_header("bad\nvalue").is_empty());
    }

    #[test]
    fn odd_answers_are_clear_errors() {
        let html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
        let e = classify(502, Some("text/html"), html).expect_err("html");
        assert_eq!(
            e,
            Transport::MaybeSent(
                "HTTP 502 answered Content-Type text/html, not JSON: an HTML page (\"502 Bad Gateway\")"
                    .into()
            )
        );
        let e = classify(200, Some("application/json"), b"").expect_err("empty");
        assert!(matches!(&e, Transport::MaybeSent(m) if m.contains("empty body")), "{e}");
        let e = classify(200, Some("text/plain"), br#"{"Succeeded":true}"#).expect_err("ct");
        assert!(matches!(&e, Transport::MaybeSent(m) if m.contains("text/plain")), "{e}");
        let e = classify(200, None, br#"{"a":1}"#).expect_err("no ct");
        assert!(e.to_string().contains("Content-Type none"), "{e}");
        let e = classify(200, Some("application/json"), b"{\"Succ").expect_err("truncated");
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let e = classify(200, Some("application/json"), b"[1]").expect_err("array");
        assert!(e.to_string().contains("not an object"), "{e}");
        let e = classify(200, Some("application/json"), &[0xff, 0xfe, 0x00]).expect_err("binary");
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }

    #[test]
    fn keys_are_lowered_at_every_level() {
        let r = classify(
            200,
            Some("application/json; charset=utf-8"),
            br#"{"Result":{"PaymentRequestId":"x","Items":[{"PaymentStatus":3}]},"SUCCEEDED":true}"#,
        )
        .expect("json");
        assert_eq!(r.body["result"]["paymentrequestid"], "x");
        assert_eq!(r.body["result"]["items"][0]["paymentstatus"], 3);
        assert_eq!(r.body["succeeded"], true);
    }

    #[test]
    fn credential_debug_never_shows_the_value() {
        let c =
            Credential { value: Zeroizing::new("s3cret".into()), source: "api_key_file /x".into() };
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn credential_order_store_wins_mode_specific_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = crate::store::Store::open(&dir.path().join("s")).expect("store");
        let secrets = Secrets::open(&dir.path().join("k"), store).expect("secrets");
        let file = dir.path().join("key.txt");
        std::fs::write(&file, "from-file\n").expect("write");
        let c = credential(&secrets, "p", "test", "api_key", Some(&file)).expect("file");
        assert_eq!(c.expose(), "from-file");
        secrets.set("p", "api_key", b"generic").await.expect("set");
        let c = credential(&secrets, "p", "test", "api_key", Some(&file)).expect("generic");
        assert_eq!(c.expose(), "generic");
        secrets.set("p", "live_api_key", b"live-one").await.expect("set");
        let c = credential(&secrets, "p", "live", "api_key", Some(&file)).expect("live");
        assert_eq!(c.expose(), "live-one");
        assert_eq!(c.source, "secret p/live_api_key");
        // The test mode does not pick up the live secret.
        let c = credential(&secrets, "p", "test", "api_key", None).expect("test");
        assert_eq!(c.expose(), "generic");
        let e = credential(&secrets, "q", "test", "api_key", None).expect_err("none");
        assert!(e.contains("posbridge secret set q test_api_key"), "{e}");
    }
}
