//! Mock of the pay-by-link payment API (`posbridge sim kuveyt`, `kuveyt.md` §3): create
//! and verify, with `X-Api-Key`/`X-Api-Secret` checked per environment (base URLs `…/test`
//! and `…/live`), bodies validated, `order_id` idempotency, counters and deterministic
//! outcomes.
//!
//! Outcome conventions, by the amount's last two minor digits (kuruş):
//! | `xx` | outcome |
//! |---|---|
//! | 51 | the first verify says `failed` |
//! | 52 | the first verify says `cancelled` |
//! | 53 | stays `pending` until `POST /_sim/payments/{transaction_id}/complete` |
//! | 54 | create answers a `503` HTML page, nothing created |
//! | 55 | create is processed, its answer is lost (a repeat with the same `order_id` returns the same payment) |
//! | 56 | the first verify answers a `502` HTML page, the next says `completed` |
//! | 57 | `pending` at the first verify, `completed` at the second |
//! | 58 | the first verify completes the payment but answers `200` `application/json` with the JSON cut short (its first half); the next verify says `completed` |
//! | 59 | create is processed (the payment is created) and answers `200` `application/json` with the JSON cut short; a repeat with the same `order_id` returns the same payment normally |
//! | 60 | the verify answer carries the full card number and track 2 data (`payment.card`) |
//! | other | the first verify says `completed` |
//!
//! Control (no auth): `GET /_sim/stats`, `POST /_sim/payments/{transaction_id}/complete`
//! `{"status": "completed"|"failed"|"cancelled"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::{self, TestCert};
use super::paywall::Keys;
use crate::drivers::cloud::money;

#[derive(Debug, Clone)]
pub struct KuveytSimOptions {
    /// `api_key` = `X-Api-Key`, `client_key` = `X-Api-Secret`.
    pub test: Keys,
    pub live: Keys,
    pub tls: bool,
}

impl Default for KuveytSimOptions {
    fn default() -> Self {
        KuveytSimOptions {
            test: Keys {
                api_key: "test-api-key".into(),
                client_key: "test-secret".into(),
            },
            live: Keys {
                api_key: "live-api-key".into(),
                client_key: "live-secret".into(),
            },
            tls: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkSnapshot {
    pub env: String,
    pub order_id: String,
    pub transaction_id: String,
    pub amount: String,
    pub status: String,
    /// Create requests carrying this order id (the first created it).
    pub create_requests: u32,
    pub verifies: u32,
}

struct Link {
    env: String,
    id: u64,
    order_id: String,
    transaction_id: String,
    amount: String,
    minor: i64,
    status: String,
    paid_at: Option<String>,
    create_requests: u32,
    verifies: u32,
}

#[derive(Default)]
struct Counters {
    create_requests: u64,
    payments_created: u64,
    verify_requests: u64,
    unauthorized: u64,
    invalid: u64,
}

#[derive(Default)]
struct SimState {
    counters: Counters,
    next: u64,
    /// By `env/order_id`.
    links: HashMap<String, Link>,
}

struct Shared {
    opts: KuveytSimOptions,
    base_scheme: &'static str,
    addr: SocketAddr,
    state: Mutex<SimState>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct KuveytSim {
    listener: TcpListener,
    shared: Arc<Shared>,
    cert: Option<TestCert>,
}

#[derive(Clone)]
pub struct KuveytStats {
    shared: Arc<Shared>,
}

impl KuveytSim {
    pub async fn bind(addr: SocketAddr, opts: KuveytSimOptions) -> std::io::Result<KuveytSim> {
        let (listener, addr) = http::bind(addr).await?;
        let cert = if opts.tls {
            Some(TestCert::generate().map_err(std::io::Error::other)?)
        } else {
            None
        };
        Ok(KuveytSim {
            listener,
            shared: Arc::new(Shared {
                base_scheme: if cert.is_some() { "https" } else { "http" },
                addr,
                opts,
                state: Mutex::new(SimState::default()),
                changed: Notify::new(),
            }),
            cert,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn base_url(&self, env: &str) -> String {
        format!("{}://{}/{env}", self.shared.base_scheme, self.shared.addr)
    }

    pub fn cert_pem(&self) -> Option<&str> {
        self.cert.as_ref().map(|c| c.cert_pem.as_str())
    }

    pub fn stats(&self) -> KuveytStats {
        KuveytStats {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let router = Router::new()
            .route("/{env}/api/payments/create/", post(create))
            .route("/{env}/api/payments/verify/", post(verify))
            .route("/{env}/pay/{transaction_id}", get(pay_page))
            .route("/_sim/stats", get(sim_stats))
            .route(
                "/_sim/payments/{transaction_id}/complete",
                post(sim_complete),
            )
            .with_state(Arc::clone(&self.shared));
        tracing::info!(addr = %self.shared.addr, tls = self.cert.is_some(), "kuveyt mock listening");
        http::serve(self.listener, router, self.cert.as_ref(), shutdown).await;
    }
}

impl KuveytStats {
    pub fn create_requests(&self) -> u64 {
        self.shared.lock().counters.create_requests
    }

    pub fn payments_created(&self) -> u64 {
        self.shared.lock().counters.payments_created
    }

    pub fn verify_requests(&self) -> u64 {
        self.shared.lock().counters.verify_requests
    }

    pub fn links(&self) -> Vec<LinkSnapshot> {
        self.shared
            .lock()
            .links
            .values()
            .map(|l| LinkSnapshot {
                env: l.env.clone(),
                order_id: l.order_id.clone(),
                transaction_id: l.transaction_id.clone(),
                amount: l.amount.clone(),
                status: l.status.clone(),
                create_requests: l.create_requests,
                verifies: l.verifies,
            })
            .collect()
    }

    pub async fn wait_until(&self, within: Duration, pred: impl Fn(&KuveytStats) -> bool) -> bool {
        super::http::wait_until(&self.shared.changed, within, || pred(self)).await
    }

    /// The customer pays (`completed`) or gives up (`failed`, `cancelled`).
    pub fn complete(&self, transaction_id: &str, status: &str) -> bool {
        complete(&self.shared, transaction_id, status)
    }
}

fn complete(shared: &Shared, transaction_id: &str, status: &str) -> bool {
    if !matches!(status, "completed" | "failed" | "cancelled") {
        return false;
    }
    let done = {
        let mut s = shared.lock();
        match s
            .links
            .values_mut()
            .find(|l| l.transaction_id == transaction_id && l.status == "pending")
        {
            Some(l) => {
                l.status = status.to_string();
                if status == "completed" {
                    l.paid_at = Some(crate::api::ts(chrono::Utc::now()));
                }
                true
            }
            None => false,
        }
    };
    shared.changed.notify_waiters();
    done
}

fn refuse(status: StatusCode, message: &str) -> Response {
    http::json(status, json!({ "success": false, "message": message }))
}

fn authorise(shared: &Shared, env: &str, headers: &HeaderMap) -> Option<Response> {
    let keys = match env {
        "test" => &shared.opts.test,
        "live" => &shared.opts.live,
        _ => return Some(refuse(StatusCode::NOT_FOUND, "no such environment")),
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if h("x-api-key") != keys.api_key || h("x-api-secret") != keys.client_key {
        shared.lock().counters.unauthorized += 1;
        shared.changed.notify_waiters();
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            &format!("X-Api-Key/X-Api-Secret are not valid for the {env} environment"),
        ));
    }
    None
}

#[derive(Deserialize)]
struct CreateBody {
    order_id: Option<String>,
    provider: Option<String>,
    amount: Option<Value>,
    currency: Option<String>,
    #[serde(default)]
    customer_info: Option<HashMap<String, Value>>,
    #[serde(default)]
    return_url: Option<String>,
    #[serde(default)]
    cancel_url: Option<String>,
}

/// The platform's rules for a create body; `Err` names the field.
fn check_create(b: &CreateBody) -> Result<(String, i64, String), String> {
    let order_id = b
        .order_id
        .clone()
        .filter(|o| !o.is_empty())
        .ok_or("order_id: required")?;
    if order_id.chars().count() > 100 {
        return Err("order_id: longer than 100 characters".into());
    }
    if b.provider.as_deref() != Some("kuveyt") {
        return Err("provider: must be \"kuveyt\"".into());
    }
    let currency = b.currency.clone().ok_or("currency: required")?;
    let exp = money::exponent(&currency).ok_or("currency: not supported")?;
    let amount = match &b.amount {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("amount: must be a decimal string like \"150.00\"".into()),
        None => return Err("amount: required".into()),
    };
    let minor = money::parse_decimal(&amount, exp).map_err(|e| format!("amount: {e}"))?;
    if minor <= 0 || money::format_minor(minor, exp) != amount {
        return Err(format!(
            "amount: {amount:?} must be positive with exactly {exp} decimals"
        ));
    }
    if let Some(c) = &b.customer_info {
        for (k, max) in [("email", 254), ("name", 100), ("phone", 20)] {
            if let Some(v) = c.get(k) {
                let s = v
                    .as_str()
                    .ok_or(format!("customer_info.{k}: not a string"))?;
                if s.chars().count() > max {
                    return Err(format!("customer_info.{k}: longer than {max} characters"));
                }
            }
        }
    }
    for (k, v) in [("return_url", &b.return_url), ("cancel_url", &b.cancel_url)] {
        if let Some(u) = v {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(format!("{k}: not a URL"));
            }
        }
    }
    Ok((order_id, minor, amount))
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    shared.lock().counters.create_requests += 1;
    shared.changed.notify_waiters();
    if let Some(r) = authorise(&shared, &env, &headers) {
        return r;
    }
    let checked = serde_json::from_str::<CreateBody>(&body)
        .map_err(|e| format!("body: {e}"))
        .and_then(|b| check_create(&b));
    let (order_id, minor, amount) = match checked {
        Ok(c) => c,
        Err(e) => {
            shared.lock().counters.invalid += 1;
            return refuse(StatusCode::BAD_REQUEST, &e);
        }
    };
    if minor % 100 == 54 {
        return http::html_error(StatusCode::SERVICE_UNAVAILABLE);
    }
    let key = format!("{env}/{order_id}");
    let answer = {
        let mut s = shared.lock();
        let existing = s.links.contains_key(&key);
        if !existing {
            s.next += 1;
            let id = s.next;
            s.counters.payments_created += 1;
            s.links.insert(
                key.clone(),
                Link {
                    env: env.clone(),
                    id,
                    order_id: order_id.clone(),
                    transaction_id: format!("TRX{id:09}"),
                    amount: amount.clone(),
                    minor,
                    status: "pending".into(),
                    paid_at: None,
                    create_requests: 0,
                    verifies: 0,
                },
            );
        }
        let Some(l) = s.links.get_mut(&key) else {
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "lost the payment");
        };
        l.create_requests += 1;
        if l.amount != amount {
            return refuse(
                StatusCode::CONFLICT,
                "order_id was used with another amount",
            );
        }
        json!({
            "success": true,
            "message": if existing { "Ödeme zaten var." } else { "Ödeme oluşturuldu." },
            "payment": { "id": format!("pay-{}", l.id), "payment_number": format!("PAY-{}-{:06}", env.to_uppercase(), l.id), "status": l.status },
            "payment_url": format!("{}://{}/{env}/pay/{}", shared.base_scheme, shared.addr, l.transaction_id),
            "transaction_id": l.transaction_id,
        })
    };
    shared.changed.notify_waiters();
    let created = answer["message"] == "Ödeme oluşturuldu.";
    match minor % 100 {
        55 if created => http::lost(),
        59 if created => http::json_cut_short(&answer),
        _ => http::json(StatusCode::OK, answer),
    }
}

#[derive(Deserialize)]
struct VerifyBody {
    transaction_id: Option<String>,
    provider: Option<String>,
}

async fn verify(
    State(shared): State<Arc<Shared>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    shared.lock().counters.verify_requests += 1;
    shared.changed.notify_waiters();
    if let Some(r) = authorise(&shared, &env, &headers) {
        return r;
    }
    let Ok(b) = serde_json::from_str::<VerifyBody>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "body: not JSON");
    };
    if b.provider.as_deref() != Some("kuveyt") {
        return refuse(StatusCode::BAD_REQUEST, "provider: must be \"kuveyt\"");
    }
    let Some(tid) = b.transaction_id else {
        return refuse(StatusCode::BAD_REQUEST, "transaction_id: required");
    };
    let (reply, garble) = {
        let mut s = shared.lock();
        let Some(l) = s
            .links
            .values_mut()
            .find(|l| l.env == env && l.transaction_id == tid)
        else {
            return refuse(StatusCode::NOT_FOUND, "payment not found");
        };
        l.verifies += 1;
        let kind = l.minor % 100;
        if l.status == "pending" {
            let next = match (kind, l.verifies) {
                (53, _) => None,
                (51, _) => Some("failed"),
                (52, _) => Some("cancelled"),
                (56, 1) => return http::html_error(StatusCode::BAD_GATEWAY),
                (57, 1) => None,
                _ => Some("completed"),
            };
            if let Some(n) = next {
                l.status = n.into();
                if n == "completed" {
                    l.paid_at = Some(crate::api::ts(chrono::Utc::now()));
                }
            }
        }
        let mut payment = json!({ "status": l.status });
        if let Some(p) = &l.paid_at {
            payment["paid_at"] = json!(p);
        }
        if kind == 60 {
            // A careless provider: the card number and track 2 data in the answer.
            payment["card"] =
                json!({ "number": "4111 1111 1111 1111", "track2": "4111111111111111=2512101" });
        }
        let reply = json!({ "success": true, "message": "Ödeme durumu.", "payment": payment });
        (reply, kind == 58 && l.verifies == 1)
    };
    shared.changed.notify_waiters();
    if garble {
        return http::json_cut_short(&reply);
    }
    http::json(StatusCode::OK, reply)
}

async fn pay_page(Path((_env, tid)): Path<(String, String)>) -> Response {
    axum::response::IntoResponse::into_response(axum::response::Html(format!(
        "<html><body><h1>posbridge kuveyt mock</h1><p>payment {tid}: complete it with POST /_sim/payments/{tid}/complete</p></body></html>"
    )))
}

async fn sim_stats(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.lock();
    let c = &s.counters;
    let links: Vec<Value> = s
        .links
        .values()
        .map(|l| json!({ "env": l.env, "order_id": l.order_id, "transaction_id": l.transaction_id, "amount": l.amount, "status": l.status, "create_requests": l.create_requests, "verifies": l.verifies }))
        .collect();
    http::json(
        StatusCode::OK,
        json!({ "create_requests": c.create_requests, "payments_created": c.payments_created, "verify_requests": c.verify_requests, "unauthorized": c.unauthorized, "invalid": c.invalid, "payments": links }),
    )
}

#[derive(Deserialize)]
struct CompleteBody {
    status: String,
}

async fn sim_complete(
    State(shared): State<Arc<Shared>>,
    Path(tid): Path<String>,
    body: String,
) -> Response {
    let status = serde_json::from_str::<CompleteBody>(&body)
        .map(|b| b.status)
        .unwrap_or_else(|_| "completed".into());
    if complete(&shared, &tid, &status) {
        http::json(
            StatusCode::OK,
            json!({ "completed": tid, "status": status }),
        )
    } else {
        http::json(
            StatusCode::NOT_FOUND,
            json!({ "error": "no pending payment with that transaction id, or unknown status" }),
        )
    }
}

#[cfg(test)]
mod tests {
    //! The mock over loopback (127.0.0.1:0 only): the garbled-answer conventions.

    use super::*;

    struct Mock {
        base: String,
        stats: KuveytStats,
        stop: CancellationToken,
        http: reqwest::Client,
    }

    async fn mock() -> Mock {
        let sim = KuveytSim::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            KuveytSimOptions::default(),
        )
        .await
        .expect("bind");
        let (base, stats) = (sim.base_url("test"), sim.stats());
        let stop = CancellationToken::new();
        sim.spawn(stop.clone());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Mock {
            base,
            stats,
            stop,
            http,
        }
    }

    impl Mock {
        /// Status, content type and body text of a POST.
        async fn post(&self, route: &str, body: Value) -> (u16, String, String) {
            let resp = self
                .http
                .post(format!("{}/api/payments/{route}/", self.base))
                .header("x-api-key", "test-api-key")
                .header("x-api-secret", "test-secret")
                .json(&body)
                .send()
                .await
                .expect("send");
            crate::sim::http::answer_parts(resp).await.expect("body")
        }

        async fn create(&self, order_id: &str, amount: &str) -> (u16, String, String) {
            let body = json!({"order_id": order_id, "provider": "kuveyt", "amount": amount,
                "currency": "TRY"});
            self.post("create", body).await
        }

        async fn verify(&self, tid: &str) -> (u16, String, String) {
            let body = json!({"transaction_id": tid, "provider": "kuveyt"});
            self.post("verify", body).await
        }

        fn link(&self, order_id: &str) -> LinkSnapshot {
            self.stats
                .links()
                .into_iter()
                .find(|l| l.order_id == order_id)
                .expect("link")
        }
    }

    fn is_json(text: &str) -> bool {
        serde_json::from_str::<Value>(text).is_ok()
    }

    #[tokio::test]
    async fn amount_58_garbles_the_first_verify_then_says_completed() {
        let m = mock().await;
        let (status, _, created) = m.create("o-58", "150.58").await;
        assert_eq!(status, 200);
        let created: Value = serde_json::from_str(&created).expect("JSON");
        let tid = created["transaction_id"].as_str().expect("tid").to_string();
        let (status, ct, first) = m.verify(&tid).await;
        assert_eq!(status, 200);
        assert!(ct.starts_with("application/json"), "{ct}");
        assert!(!first.is_empty() && !is_json(&first), "{first}");
        // The payment completed at that verify; the books say so.
        let l = m.link("o-58");
        assert_eq!((l.status.as_str(), l.verifies), ("completed", 1));
        let (status, _, again) = m.verify(&tid).await;
        let v: Value = serde_json::from_str(&again).expect("JSON");
        assert_eq!(
            (status, v["payment"]["status"].as_str()),
            (200, Some("completed"))
        );
        assert_eq!(first, again[..again.len() / 2]);
        assert_eq!(m.stats.payments_created(), 1);
        m.stop.cancel();
    }

    #[tokio::test]
    async fn amount_59_creates_the_payment_and_garbles_the_answer() {
        let m = mock().await;
        let (status, ct, first) = m.create("o-59", "150.59").await;
        assert_eq!(status, 200);
        assert!(ct.starts_with("application/json"), "{ct}");
        assert!(!first.is_empty() && !is_json(&first), "{first}");
        assert_eq!(m.stats.payments_created(), 1);
        let l = m.link("o-59");
        assert_eq!((l.status.as_str(), l.create_requests), ("pending", 1));
        // A repeat with the same order id returns the same payment, whole.
        let (status, _, again) = m.create("o-59", "150.59").await;
        let v: Value = serde_json::from_str(&again).expect("JSON");
        assert_eq!(status, 200);
        assert_eq!(v["transaction_id"], l.transaction_id.as_str());
        assert_eq!(v["success"], true);
        assert!(first.starts_with(r#"{"message":""#), "{first}");
        assert_eq!(m.stats.payments_created(), 1);
        assert_eq!(m.link("o-59").create_requests, 2);
        let (_, _, verified) = m.verify(&l.transaction_id).await;
        let v: Value = serde_json::from_str(&verified).expect("JSON");
        assert_eq!(v["payment"]["status"], "completed");
        m.stop.cancel();
    }
}
