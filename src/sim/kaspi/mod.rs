//! Simulator of a Kaspi Smart POS (`posbridge sim kaspi`): a real HTTP or HTTPS server
//! speaking LAN API v2 as `kaspi.md` describes — payment, status, actualize, refund,
//! deviceinfo, register (with a scripted cashier), revoke; tokens with expiry; error
//! codes; customer time; fault knobs for tests. Amount conventions are listed on
//! [`terminal::Terminal`] and in docs/terminals/kaspi.md.

pub mod terminal;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use sha2::Digest;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::terminal::{Counts, Reply, Settings, Terminal};
use super::{faults, listen};

/// What the cashier does when `/v2/register` asks for access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cashier {
    /// Presses "Allow" after this long.
    Allow(Duration),
    /// Presses "Deny" after this long.
    Deny(Duration),
    /// Never answers (the register call waits until the client gives up).
    Ignore,
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seed for deterministic methods, outcomes and ids; OS entropy when `None`.
    pub seed: Option<u64>,
    /// How long the customer takes (wait → final).
    pub customer_time: Duration,
    /// How long a QR payment of the "unknown" convention stays unknown.
    pub qr_lifetime: Duration,
    /// Serve HTTPS with a generated certificate for this name (e.g. `pos1.kaspiros.kz`).
    pub tls_name: Option<String>,
    /// Token auth (the real terminal couples it with HTTPS).
    pub protected: bool,
    pub token_lifetime: Duration,
    pub cashier: Cashier,
    /// Probability that an unconventional amount is declined.
    pub fail_rate: f64,
    /// kaspi.md: actualize at most once per 10 s; closer calls are counted.
    pub actualize_gap: Duration,
    pub terminal_id: String,
    pub serial: String,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: None,
            customer_time: Duration::from_secs(3),
            qr_lifetime: Duration::from_secs(180),
            tls_name: None,
            protected: false,
            token_lifetime: Duration::from_secs(24 * 3600),
            cashier: Cashier::Allow(Duration::from_secs(2)),
            fail_rate: 0.0,
            actualize_gap: Duration::from_secs(10),
            terminal_id: "31452963".into(),
            serial: "00043010171".into(),
        }
    }
}

/// The generated TLS identity: a private CA and a leaf for the terminal's name.
#[derive(Clone)]
pub struct SimTls {
    pub name: String,
    /// The CA certificate (PEM) to give the driver as `ca_file`.
    pub ca_pem: String,
    /// Hex SHA-256 of the leaf's DER certificate (the driver's `pin_sha256`).
    pub cert_sha256: String,
    config: Arc<rustls::ServerConfig>,
}

fn make_tls(name: &str) -> Result<SimTls, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| format!("generating the simulator certificate: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "posbridge Kaspi simulator CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let mut leaf_params = CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    leaf_params.distinguished_name.push(DnType::CommonName, name);
    let leaf_key = KeyPair::generate().map_err(err)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).map_err(err)?;
    let cert_sha256 = hex::encode(sha2::Sha256::digest(leaf.der().as_ref()));
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .map_err(|e| format!("simulator TLS config: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(SimTls { name: name.to_string(), ca_pem: ca.pem(), cert_sha256, config: Arc::new(config) })
}

struct Shared {
    terminal: Mutex<Terminal>,
    cashier: Mutex<Cashier>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Terminal> {
        // Plain bookkeeping data: a panic mid-update leaves nothing half-written that matters.
        self.terminal.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct KaspiSim {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<SimTls>,
}

/// Read-only view for tests: what the terminal did. Cheap to clone.
#[derive(Clone)]
pub struct SimStats {
    shared: Arc<Shared>,
}

impl SimStats {
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts.clone()
    }

    /// How many times the process with this id was started (the double-charge proof).
    pub fn starts_of(&self, process_id: &str) -> u64 {
        self.shared.lock().starts_of(process_id)
    }

    pub fn process_ids(&self) -> Vec<String> {
        self.shared.lock().process_ids()
    }

    /// The current (access, refresh) token pair issued to a register name.
    pub fn tokens_of(&self, name: &str) -> Option<(String, String)> {
        self.shared.lock().tokens_of(name)
    }
}

/// Fault knobs, settable while the simulator runs. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<Shared>,
}

impl SimControl {
    /// Carry out the next request to `route` (e.g. `"payment"`) but close the connection
    /// instead of answering.
    pub fn lose_next_answer(&self, route: &str) {
        self.shared.lock().lose_next = Some(route.to_string());
    }

    /// The next process started answers `unknown` to its first `n` looks (status or
    /// actualize) after the customer acted, then shows its real outcome.
    pub fn unknown_for_next(&self, n: u64) {
        self.shared.lock().unknown_next = n;
    }

    /// The next process started (payment or refund) answers its first `n` `/v2/status`
    /// calls with HTTP 200 and the JSON cut short (as amount `…19` does with 3), then
    /// normally. The status is still taken: the books move as for a clean answer.
    pub fn garble_status_for_next(&self, n: u64) {
        self.shared.lock().garble_status_next = n;
    }

    /// The next payment started shows a `chequeInfo.amount` `delta` tenge off the
    /// requested amount in `/v2/status` and actualize (as amount `…17` does with 1); the
    /// books keep the requested amount.
    pub fn cheque_amount_off_next(&self, delta: i64) {
        self.shared.lock().cheque_off_next = delta;
    }

    pub fn settle_unknown(&self) {
        self.shared.lock().settle_unknown();
    }

    /// Every issued token is past its expiration (403 until renewed).
    pub fn expire_tokens_now(&self) {
        self.shared.lock().expire_tokens();
    }

    /// Every issued token answers 401 "Session expires…" until renewed.
    pub fn require_renewal(&self) {
        self.shared.lock().require_renewal();
    }

    /// `/v2/revoke` fails with 105 "Wrong refresh token" from now on.
    pub fn break_refresh(&self) {
        self.shared.lock().refresh_broken = true;
    }

    /// Forget every process (as after 24 h): status answers 101.
    pub fn forget_processes(&self) {
        self.shared.lock().forget_processes();
    }

    pub fn set_fail_rate(&self, rate: f64) {
        self.shared.lock().settings.fail_rate = rate;
    }

    pub fn set_customer_time(&self, d: Duration) {
        self.shared.lock().settings.customer_time = d;
    }

    pub fn set_cashier(&self, c: Cashier) {
        *self.shared.cashier.lock().unwrap_or_else(PoisonError::into_inner) = c;
    }
}

/// Clears the "register pending" flag when a waiting register call goes away.
struct PendingRegister {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for PendingRegister {
    fn drop(&mut self) {
        if !self.done {
            self.shared.lock().cancel_register();
        }
    }
}

/// The answer was deliberately lost: hyper closes the connection without a response.
#[derive(Debug)]
struct LostAnswer;

impl std::fmt::Display for LostAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped by the simulator (fault knob)")
    }
}

impl std::error::Error for LostAnswer {}

fn respond(r: Reply) -> Response<Full<Bytes>> {
    let content_type = if r.body.starts_with('{') {
        "application/json; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(r.http).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(
    shared: Arc<Shared>, req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, LostAnswer> {
    let path = req.uri().path().to_string();
    let params: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let token = req.headers().get("accesstoken").and_then(|v| v.to_str().ok()).map(str::to_string);
    let route = path.strip_prefix("/v2/").unwrap_or("").to_string();
    let now = tokio::time::Instant::now();
    tracing::debug!(route, "kaspi sim request");
    if req.method() != hyper::Method::GET {
        return Ok(respond(Reply {
            http: 404,
            body: r#"{"errorText":"Invalid Url. Please, contact developers","statusCode":999}"#
                .into(),
        }));
    }
    if route == "register" {
        return Ok(respond(register(shared, &params).await));
    }
    let mut t = shared.lock();
    t.counts.requests += 1;
    let reply = match route.as_str() {
        "revoke" => t.revoke(token.as_deref(), &params),
        "payment" | "refund" | "status" | "actualize" | "deviceinfo" => {
            match t.authorize(token.as_deref()) {
                Err(r) => r,
                Ok(()) => match route.as_str() {
                    "payment" => t.payment(now, &params),
                    "refund" => t.refund(now, &params),
                    "status" => t.status(now, &params),
                    "actualize" => t.actualize(now, &params),
                    _ => t.device_info(),
                },
            }
        }
        _ => Reply {
            http: 404,
            body: r#"{"errorText":"Invalid Url. Please, contact developers","statusCode":999}"#
                .into(),
        },
    };
    if t.take_lose(&route) {
        tracing::info!(route, "kaspi sim: dropping the answer (fault knob)");
        return Err(LostAnswer);
    }
    Ok(respond(reply))
}

async fn register(shared: Arc<Shared>, params: &HashMap<String, String>) -> Reply {
    let name = {
        let mut t = shared.lock();
        t.counts.requests += 1;
        match t.begin_register(params) {
            Ok(n) => n,
            Err(r) => return r,
        }
    };
    let mut guard = PendingRegister { shared: shared.clone(), done: false };
    let cashier = *shared.cashier.lock().unwrap_or_else(PoisonError::into_inner);
    tracing::info!(name, ?cashier, "kaspi sim: register request shown to the cashier");
    let allowed = match cashier {
        Cashier::Allow(d) => {
            tokio::time::sleep(d).await;
            true
        }
        Cashier::Deny(d) => {
            tokio::time::sleep(d).await;
            false
        }
        Cashier::Ignore => {
            // The client gives up first; dropping this future clears the pending flag.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            false
        }
    };
    guard.done = true;
    let reply = shared.lock().finish_register(&name, allowed);
    reply
}

impl KaspiSim {
    pub async fn bind(addr: SocketAddr, opts: SimOptions) -> std::io::Result<KaspiSim> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        faults::check_rates(&[("fail_rate", opts.fail_rate)]).map_err(invalid)?;
        let tls = match &opts.tls_name {
            Some(name) => Some(make_tls(name).map_err(invalid)?),
            None => None,
        };
        let (listener, addr) = listen::bind(addr).await?;
        let rng = faults::seeded(opts.seed, 0);
        let settings = Settings {
            customer_time: opts.customer_time,
            qr_lifetime: opts.qr_lifetime,
            token_lifetime: opts.token_lifetime,
            actualize_gap: opts.actualize_gap,
            protected: opts.protected,
            fail_rate: opts.fail_rate,
            terminal_id: opts.terminal_id.clone(),
            serial: opts.serial.clone(),
        };
        Ok(KaspiSim {
            listener,
            addr,
            shared: Arc::new(Shared {
                terminal: Mutex::new(Terminal::new(settings, rng)),
                cashier: Mutex::new(opts.cashier),
            }),
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tls(&self) -> Option<&SimTls> {
        self.tls.as_ref()
    }

    /// `http://127.0.0.1:port` or `https://127.0.0.1:port`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn stats(&self) -> SimStats {
        SimStats { shared: self.shared.clone() }
    }

    pub fn control(&self) -> SimControl {
        SimControl { shared: self.shared.clone() }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Serve until `shutdown`, then let open requests finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let acceptor = self.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        let shared = self.shared;
        let service = move || {
            let shared = shared.clone();
            service_fn(move |req| handle(shared.clone(), req))
        };
        super::http::serve_http(self.listener, acceptor, shutdown, service).await;
    }
}
