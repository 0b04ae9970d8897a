//! Mock of the Paywall PhysicalAPI (`posbridge sim paywall`): the routes the `paywall`
//! driver uses, with header checks per environment, body validation like the real API
//! (lengths, required fields, the sum rule), `MerchantUniqueCode` idempotency, counters
//! and deterministic outcomes.
//!
//! One server holds both environments: base URL `…/test` and `…/live`, each with its own
//! key pair and its own payments.
//!
//! Outcome conventions, by the amount's last two minor digits (kuruş):
//! | `xx` | outcome |
//! |---|---|
//! | 51 | declined (`ErrorCode` 51, `PaymentDeclined`) |
//! | 52 | cancelled by the customer on the device |
//! | 53 | slow: the sale waits on the device until cancelled, completed by `/_sim`, or `slow` passes (then succeeds) |
//! | 54 | `503` HTML page, nothing created |
//! | 55 | succeeds, the answer is lost (connection breaks after the headers) |
//! | 56 | answer lost, and the sale stays on the device until `/_sim/payments/{muc}/complete` |
//! | 57 | succeeds, then answers a `502` HTML page (a proxy error after the fact) |
//! | 58 | succeeds, answers `200` with an empty body |
//! | 59 | succeeds, answers `200` with `Content-Type: text/plain` |
//! | 60 | slow, and the device has not received it yet (`sale/rollback` possible) |
//! | 61 | succeeds, answers `200` `application/json` with the JSON cut short (its first half) |
//! | 62 | succeeds, the answer is lost (as 55), and `list` does not show the sale until `POST /_sim/payments/{muc}/publish` (`inquiry` by `PaymentRequestId` knows it) |
//! | 63 | succeeds; the answer carries the full card number and track 2 data (`Result.card`) |
//! | other | succeeds at once |
//!
//! 61 and 62 spoil only the answer of the request that created the sale: a repeat with
//! the same `MerchantUniqueCode` is answered normally from the books.
//!
//! Control (no auth): `GET /_sim/stats`, `POST /_sim/payments/{muc}/complete`
//! `{"status": "succeeded"|"failed"|"cancelled"}`, `POST /_sim/payments/{muc}/publish`
//! (a `…62` sale shows in `list` from then on).
//!
//! `PaymentStatus` values (the real ones are not public; the driver uses the same table):
//! 1 waiting for the device, 2 on the device, 3 succeeded, 4 cancelled, 5 failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::http::{self, TestCert};
use crate::drivers::cloud::money;
use crate::drivers::paywall::api::{
    SaleRequest, CUSTOMER_FIELDS, DISPLAY_CODE_MAX, FONT_SIZE_MAX, PRODUCT_NAME_MAX,
    RECEIPT_TEXT_MAX, STATUS_CANCELLED, STATUS_FAILED, STATUS_ON_DEVICE, STATUS_SUCCEEDED,
    STATUS_WAITING,
};

/// Credentials of one environment.
#[derive(Debug, Clone)]
pub struct Keys {
    pub api_key: String,
    pub client_key: String,
}

#[derive(Debug, Clone)]
pub struct PaywallSimOptions {
    pub test: Keys,
    pub live: Keys,
    /// How long a slow sale (`…53`, `…60`) waits before succeeding by itself.
    pub slow: Duration,
    /// Serve HTTPS with a certificate made at start.
    pub tls: bool,
}

impl Default for PaywallSimOptions {
    fn default() -> Self {
        PaywallSimOptions {
            test: Keys {
                api_key: "test-api-key".into(),
                client_key: "test-secret".into(),
            },
            live: Keys {
                api_key: "live-api-key".into(),
                client_key: "live-secret".into(),
            },
            slow: Duration::from_secs(30),
            tls: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentSnapshot {
    pub env: String,
    pub payment_request_id: String,
    pub merchant_unique_code: String,
    pub amount_minor: i64,
    pub status: i64,
    /// `sync/sale` requests carrying this code (the first created it).
    pub sale_requests: u32,
    /// Whether `list` shows it (`false` for a `…62` sale until published).
    pub listed: bool,
}

struct Payment {
    env: String,
    id: Uuid,
    muc: String,
    amount_minor: i64,
    terminal_id: String,
    status: watch::Sender<i64>,
    sale_requests: u32,
    /// `list` shows it (a `…62` sale only after `/_sim/payments/{muc}/publish`).
    listed: bool,
}

impl Payment {
    fn status(&self) -> i64 {
        *self.status.borrow()
    }

    fn view(&self) -> Value {
        json!({
            "paymentRequestId": self.id.to_string(),
            "paymentRequestActivityId": Uuid::new_v5(&self.id, b"activity").to_string(),
            "paymentRequestActivityTypeId": 1,
            "paymentStatus": self.status(),
            "merchantUniqueCode": self.muc,
            "terminalId": self.terminal_id,
            "amount": money::format_minor(self.amount_minor, 2),
            "environment": self.env,
        })
    }
}

#[derive(Default)]
struct Counters {
    sale_requests: u64,
    payments_created: u64,
    list_requests: u64,
    inquiry_requests: u64,
    cancel_requests: u64,
    rollback_requests: u64,
    unauthorized: u64,
    invalid: u64,
}

struct Shared {
    opts: PaywallSimOptions,
    state: Mutex<SimState>,
    changed: Notify,
}

#[derive(Default)]
struct SimState {
    counters: Counters,
    /// By `env/MerchantUniqueCode`.
    payments: HashMap<String, Payment>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.lock().counters);
        self.changed.notify_waiters();
    }
}

pub struct PaywallSim {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    cert: Option<TestCert>,
}

/// Counters and payments, for tests. Cheap to clone.
#[derive(Clone)]
pub struct PaywallStats {
    shared: Arc<Shared>,
}

impl PaywallSim {
    pub async fn bind(addr: SocketAddr, opts: PaywallSimOptions) -> std::io::Result<PaywallSim> {
        let (listener, addr) = http::bind(addr).await?;
        let cert = if opts.tls {
            Some(TestCert::generate().map_err(std::io::Error::other)?)
        } else {
            None
        };
        Ok(PaywallSim {
            listener,
            addr,
            cert,
            shared: Arc::new(Shared {
                opts,
                state: Mutex::new(SimState::default()),
                changed: Notify::new(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of an environment (`test` or `live`), as the agent's `test_url`/`live_url`.
    pub fn base_url(&self, env: &str) -> String {
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/{env}", self.addr)
    }

    /// The certificate (PEM) when serving TLS.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert.as_ref().map(|c| c.cert_pem.as_str())
    }

    pub fn stats(&self) -> PaywallStats {
        PaywallStats {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let router = router(Arc::clone(&self.shared));
        tracing::info!(addr = %self.addr, tls = self.cert.is_some(), "paywall mock listening");
        http::serve(self.listener, router, self.cert.as_ref(), shutdown).await;
    }
}

impl PaywallStats {
    pub fn sale_requests(&self) -> u64 {
        self.shared.lock().counters.sale_requests
    }

    pub fn payments_created(&self) -> u64 {
        self.shared.lock().counters.payments_created
    }

    pub fn cancel_requests(&self) -> u64 {
        let s = self.shared.lock();
        s.counters.cancel_requests + s.counters.rollback_requests
    }

    pub fn rollback_requests(&self) -> u64 {
        self.shared.lock().counters.rollback_requests
    }

    pub fn list_requests(&self) -> u64 {
        self.shared.lock().counters.list_requests
    }

    /// Every request that reached a payment route, authorised or not.
    pub fn requests(&self) -> u64 {
        let s = self.shared.lock();
        let c = &s.counters;
        c.sale_requests
            + c.list_requests
            + c.inquiry_requests
            + c.cancel_requests
            + c.rollback_requests
    }

    pub fn payments(&self) -> Vec<PaymentSnapshot> {
        self.shared
            .lock()
            .payments
            .values()
            .map(|p| PaymentSnapshot {
                env: p.env.clone(),
                payment_request_id: p.id.to_string(),
                merchant_unique_code: p.muc.clone(),
                amount_minor: p.amount_minor,
                status: p.status(),
                sale_requests: p.sale_requests,
                listed: p.listed,
            })
            .collect()
    }

    /// Wait (bounded) until `pred` holds; every state change wakes the check.
    pub async fn wait_until(&self, within: Duration, pred: impl Fn(&PaywallStats) -> bool) -> bool {
        super::http::wait_until(&self.shared.changed, within, || pred(self)).await
    }

    /// Finish a waiting sale as the customer would (`succeeded`, `failed`, `cancelled`).
    pub fn complete(&self, muc: &str, status: &str) -> bool {
        complete(&self.shared, muc, status)
    }

    /// Let `list` show a sale it hides (`…62`); `false` if no sale has that code.
    pub fn publish(&self, muc: &str) -> bool {
        publish(&self.shared, muc)
    }
}

fn publish(shared: &Shared, muc: &str) -> bool {
    let found = {
        let mut s = shared.lock();
        let mut found = false;
        for p in s
            .payments
            .values_mut()
            .filter(|p| p.muc.eq_ignore_ascii_case(muc))
        {
            p.listed = true;
            found = true;
        }
        found
    };
    shared.changed.notify_waiters();
    found
}

fn complete(shared: &Shared, muc: &str, status: &str) -> bool {
    let code = match status {
        "succeeded" => STATUS_SUCCEEDED,
        "failed" => STATUS_FAILED,
        "cancelled" => STATUS_CANCELLED,
        _ => return false,
    };
    let done = {
        let s = shared.lock();
        let mut done = false;
        for p in s
            .payments
            .values()
            .filter(|p| p.muc.eq_ignore_ascii_case(muc))
        {
            if !is_final(p.status()) {
                p.status.send_replace(code);
                done = true;
            }
        }
        done
    };
    shared.changed.notify_waiters();
    done
}

fn is_final(s: i64) -> bool {
    matches!(s, STATUS_SUCCEEDED | STATUS_CANCELLED | STATUS_FAILED)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{env}/api/payment/sync/sale", post(sale))
        .route("/{env}/api/payment/sync/cancel", post(cancel))
        .route("/{env}/api/payment/sync/sale/rollback", post(rollback))
        .route("/{env}/api/payment/inquiry/{id}", get(inquiry))
        .route("/{env}/api/payment/list", get(list))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/payments/{muc}/complete", post(sim_complete))
        .route("/_sim/payments/{muc}/publish", post(sim_publish))
        .with_state(shared)
}

fn envelope(ok: bool, code: i64, client: &str, message: &str, result: Value) -> Value {
    json!({
        "Result": result,
        "ErrorCode": code,
        "Succeeded": ok,
        "Failed": !ok,
        "Message": if message.is_empty() { Value::Null } else { Value::String(message.into()) },
        "ClientMessage": if client.is_empty() { Value::Null } else { Value::String(client.into()) },
    })
}

fn refuse(status: StatusCode, code: i64, client: &str, message: &str) -> Response {
    http::json(status, envelope(false, code, client, message, Value::Null))
}

/// `Some` is the answer to give instead.
fn authorise(shared: &Shared, env: &str, headers: &HeaderMap) -> Option<Response> {
    let keys = match env {
        "test" => &shared.opts.test,
        "live" => &shared.opts.live,
        _ => {
            return Some(refuse(
                StatusCode::NOT_FOUND,
                404,
                "EnvironmentNotFound",
                "no such environment",
            ))
        }
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if h("apikeyprivate") != keys.api_key || h("apiclientprivate") != keys.client_key {
        shared.bump(|c| c.unauthorized += 1);
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            401,
            "Unauthorized",
            &format!("apikeyprivate/apiclientprivate are not valid for the {env} environment"),
        ));
    }
    None
}

fn is_guid(s: &str) -> bool {
    Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// The real API's rules for a sale body; `Err` names the Paywall field.
pub fn check_sale(r: &SaleRequest) -> Result<i64, String> {
    let long = |field: &str, v: &str, max: usize| -> Result<(), String> {
        if v.chars().count() > max {
            Err(format!("{field}: longer than {max} characters"))
        } else {
            Ok(())
        }
    };
    match (&r.terminal_id, &r.terminal_tag_code) {
        (Some(t), _) if !is_guid(t) => return Err("TerminalId: not a GUID".into()),
        (None, Some(tag)) => long("TerminalTagCode", tag, 25)?,
        (None, None) => return Err("TerminalId: TerminalId or TerminalTagCode is required".into()),
        _ => {}
    }
    if !is_guid(&r.merchant_unique_code) {
        return Err("MerchantUniqueCode: not a GUID".into());
    }
    if r.currency_id != 1 {
        return Err(format!("CurrencyId: {} is not supported", r.currency_id));
    }
    let amount = money::parse_decimal(r.amount.get(), 2).map_err(|e| format!("Amount: {e}"))?;
    if amount <= 0 {
        return Err("Amount: must be positive".into());
    }
    if let Some(d) = &r.display_code {
        long("DisplayCode", d, DISPLAY_CODE_MAX)?;
    }
    if r.products.is_empty() {
        return Err("Products: required".into());
    }
    let mut sum = 0i64;
    for (i, p) in r.products.iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(format!("Products[{i}].Name: required"));
        }
        long(&format!("Products[{i}].Name"), &p.name, PRODUCT_NAME_MAX)?;
        let a = money::parse_decimal(p.amount.get(), 2)
            .map_err(|e| format!("Products[{i}].Amount: {e}"))?;
        if a <= 0 {
            return Err(format!("Products[{i}].Amount: must be positive"));
        }
        if p.quantity <= 0 {
            return Err(format!("Products[{i}].Quantity: must be positive"));
        }
        sum += a;
    }
    if sum != amount {
        return Err("Products: the sum of product amounts must equal Amount".into());
    }
    if let Some(c) = &r.customer {
        if !c.get("Type").is_some_and(Value::is_i64) {
            return Err("Customer.Type: required".into());
        }
        for (_, name, max) in CUSTOMER_FIELDS {
            if let Some(v) = c.get(*name) {
                let s = v.as_str().ok_or(format!("Customer.{name}: not a string"))?;
                long(&format!("Customer.{name}"), s, *max)?;
            }
        }
    }
    if let Some(o) = &r.receipt_options {
        for (name, part) in [("Top", &o.top), ("Bottom", &o.bottom)] {
            if let Some(p) = part {
                long(
                    &format!("ReceiptOptions.{name}.Text"),
                    &p.text,
                    RECEIPT_TEXT_MAX,
                )?;
                if !(0..=FONT_SIZE_MAX).contains(&p.font_size) {
                    return Err(format!(
                        "ReceiptOptions.{name}.FontSize: two digits at most"
                    ));
                }
            }
        }
    }
    Ok(amount)
}

async fn sale(
    State(shared): State<Arc<Shared>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    shared.bump(|c| c.sale_requests += 1);
    if let Some(r) = authorise(&shared, &env, &headers) {
        return r;
    }
    let req: SaleRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            shared.bump(|c| c.invalid += 1);
            return refuse(
                StatusCode::BAD_REQUEST,
                400,
                "ValidationError",
                &format!("body: {e}"),
            );
        }
    };
    let amount = match check_sale(&req) {
        Ok(a) => a,
        Err(e) => {
            shared.bump(|c| c.invalid += 1);
            return refuse(StatusCode::BAD_REQUEST, 400, "ValidationError", &e);
        }
    };
    let kind = amount % 100;
    if kind == 54 {
        return http::html_error(StatusCode::SERVICE_UNAVAILABLE);
    }
    let key = format!("{env}/{}", req.merchant_unique_code.to_ascii_lowercase());
    let (mut rx, created) = {
        let mut s = shared.lock();
        if let Some(p) = s.payments.get_mut(&key) {
            // A repeat: the same payment, never a second one.
            p.sale_requests += 1;
            if p.amount_minor != amount {
                let msg = format!("MerchantUniqueCode {} was used with another amount", p.muc);
                drop(s);
                return refuse(
                    StatusCode::BAD_REQUEST,
                    409,
                    "MerchantUniqueCodeConflict",
                    &msg,
                );
            }
            (p.status.subscribe(), false)
        } else {
            let initial = match kind {
                60 => STATUS_WAITING,
                53 | 56 => STATUS_ON_DEVICE,
                51 => STATUS_FAILED,
                52 => STATUS_CANCELLED,
                _ => STATUS_SUCCEEDED,
            };
            let (tx, rx) = watch::channel(initial);
            s.payments.insert(
                key.clone(),
                Payment {
                    env: env.clone(),
                    id: Uuid::new_v4(),
                    muc: req.merchant_unique_code.clone(),
                    amount_minor: amount,
                    terminal_id: req.terminal_id.clone().unwrap_or_default(),
                    status: tx,
                    sale_requests: 1,
                    listed: kind != 62,
                },
            );
            s.counters.payments_created += 1;
            (rx, true)
        }
    };
    shared.changed.notify_waiters();
    match kind {
        55 | 56 => return http::lost(),
        62 if created => return http::lost(),
        _ => {}
    }
    // Wait for the device (slow sales) until a final state or the slow time.
    let slow = shared.opts.slow;
    let waited = tokio::time::timeout(slow, rx.wait_for(|s| is_final(*s))).await;
    if waited.is_err() {
        complete(&shared, &req.merchant_unique_code, "succeeded");
    }
    let view = shared
        .lock()
        .payments
        .get(&key)
        .map(Payment::view)
        .unwrap_or(Value::Null);
    let status = view["paymentStatus"].as_i64().unwrap_or(0);
    let mut view = view;
    if kind == 63 {
        // A careless integration: the card number and track 2 data in the answer.
        view["card"] =
            json!({ "number": "4111111111111111", "track2": "4111111111111111=2512101" });
    }
    let answer = match status {
        STATUS_SUCCEEDED => envelope(true, 0, "", "", view),
        STATUS_CANCELLED => envelope(false, 52, "PaymentCancelled", "Ödeme iptal edildi", view),
        _ => envelope(false, 51, "PaymentDeclined", "Ödeme reddedildi", view),
    };
    match kind {
        57 => http::html_error(StatusCode::BAD_GATEWAY),
        58 => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(axum::body::Body::empty())
            .unwrap_or_default(),
        59 => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(axum::body::Body::from(answer.to_string()))
            .unwrap_or_default(),
        61 if created => http::json_cut_short(&answer),
        _ => http::json(StatusCode::OK, answer),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RefBody {
    payment_request_id: String,
}

fn find_by_id<'a>(s: &'a SimState, env: &str, id: &str) -> Option<&'a Payment> {
    s.payments
        .values()
        .find(|p| p.env == env && p.id.to_string().eq_ignore_ascii_case(id))
}

async fn cancel_like(
    shared: Arc<Shared>,
    env: String,
    headers: HeaderMap,
    body: String,
    rollback: bool,
) -> Response {
    shared.bump(|c| {
        if rollback {
            c.rollback_requests += 1
        } else {
            c.cancel_requests += 1
        }
    });
    if let Some(r) = authorise(&shared, &env, &headers) {
        return r;
    }
    let Ok(b) = serde_json::from_str::<RefBody>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            400,
            "ValidationError",
            "PaymentRequestId: required",
        );
    };
    let answer = {
        let s = shared.lock();
        match find_by_id(&s, &env, &b.payment_request_id) {
            None => Err((StatusCode::NOT_FOUND, 404, "PaymentNotFound")),
            Some(p) if is_final(p.status()) => Err((StatusCode::OK, 61, "PaymentAlreadyCompleted")),
            Some(p) if rollback && p.status() != STATUS_WAITING => {
                Err((StatusCode::OK, 62, "DeviceAlreadyReceived"))
            }
            Some(p) => {
                p.status.send_replace(STATUS_CANCELLED);
                // camelCase keys here, as the public documentation's cancel example shows.
                Ok(
                    json!({ "result": p.view(), "errorCode": 0, "succeeded": true, "failed": false, "message": null, "clientMessage": null }),
                )
            }
        }
    };
    shared.changed.notify_waiters();
    match answer {
        Ok(v) => http::json(StatusCode::OK, v),
        Err((st, code, client)) => refuse(st, code, client, client),
    }
}

async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    cancel_like(shared, env, headers, body, false).await
}

async fn rollback(
    State(shared): State<Arc<Shared>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    cancel_like(shared, env, headers, body, true).await
}

async fn inquiry(
    State(shared): State<Arc<Shared>>,
    Path((env, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    shared.bump(|c| c.inquiry_requests += 1);
    if let Some(r) = authorise(&shared, &env, &headers) {
        return r;
    }
    let view = find_by_id(&shared.lock(), &env, &id).map(Payment::view);
    match view {
        Some(v) => http::json(StatusCode::OK, envelope(true, 0, "", "", v)),
        None => refuse(
            StatusCode::NOT_FOUND,
            404,
            "PaymentNotFound",
            "no such payment",
        ),
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path(env): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    shared.bump(|c| c.list_requests += 1);
    if let Some(r) = authorise(&shared, &env, &headers) {
        return r;
    }
    let muc = q
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("merchantuniquecode"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let items: Vec<Value> = shared
        .lock()
        .payments
        .values()
        .filter(|p| p.env == env && p.listed)
        .filter(|p| muc.as_ref().is_none_or(|m| p.muc.eq_ignore_ascii_case(m)))
        .map(Payment::view)
        .collect();
    http::json(
        StatusCode::OK,
        json!({ "result": items, "errorCode": 0, "succeeded": true, "failed": false }),
    )
}

async fn sim_stats(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.lock();
    let c = &s.counters;
    let payments: Vec<Value> = s
        .payments
        .values()
        .map(|p| {
            let mut v = p.view();
            v["saleRequests"] = json!(p.sale_requests);
            v["listed"] = json!(p.listed);
            v
        })
        .collect();
    http::json(
        StatusCode::OK,
        json!({
            "sale_requests": c.sale_requests, "payments_created": c.payments_created,
            "list_requests": c.list_requests, "inquiry_requests": c.inquiry_requests,
            "cancel_requests": c.cancel_requests, "rollback_requests": c.rollback_requests,
            "unauthorized": c.unauthorized, "invalid": c.invalid, "payments": payments,
        }),
    )
}

#[derive(Deserialize)]
struct CompleteBody {
    status: String,
}

async fn sim_complete(
    State(shared): State<Arc<Shared>>,
    Path(muc): Path<String>,
    body: String,
) -> Response {
    let status = serde_json::from_str::<CompleteBody>(&body)
        .map(|b| b.status)
        .unwrap_or_else(|_| "succeeded".into());
    if complete(&shared, &muc, &status) {
        http::json(
            StatusCode::OK,
            json!({ "completed": muc, "status": status }),
        )
    } else {
        http::json(
            StatusCode::NOT_FOUND,
            json!({ "error": "no waiting sale with that code, or unknown status" }),
        )
    }
}

async fn sim_publish(State(shared): State<Arc<Shared>>, Path(muc): Path<String>) -> Response {
    if publish(&shared, &muc) {
        http::json(StatusCode::OK, json!({ "published": muc }))
    } else {
        http::json(
            StatusCode::NOT_FOUND,
            json!({ "error": "no sale with that code" }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(patch: impl FnOnce(&mut Value)) -> SaleRequest {
        let mut v = json!({
            "TerminalId": "8ff33705-57c7-42dc-8341-a0053e7f3009",
            "MerchantUniqueCode": "3a0f4d0f-c5cf-57b6-8ec2-861f71b7fb90",
            "Amount": 22.50, "CurrencyId": 1,
            "Products": [{"Name":"Su","TaxGroupId":10,"UnitCodeId":1,"Amount":22.00,"Quantity":1},
                         {"Name":"Çay","TaxGroupId":10,"UnitCodeId":1,"Amount":0.50,"Quantity":1}],
            "Customer": {"Type": 1, "FirstName": "eda"}
        });
        patch(&mut v);
        serde_json::from_str(&v.to_string()).expect("shape")
    }

    type Patch = Box<dyn FnOnce(&mut Value)>;

    #[test]
    fn the_mock_checks_like_the_real_api_and_names_the_field() {
        assert_eq!(check_sale(&body(|_| {})), Ok(2250));
        let cases: Vec<(Patch, &str)> = vec![
            (Box::new(|v| v["Amount"] = json!(23)), "Products:"),
            (Box::new(|v| v["Amount"] = json!(22.505)), "Amount:"),
            (Box::new(|v| v["CurrencyId"] = json!(9)), "CurrencyId:"),
            (
                Box::new(|v| v["MerchantUniqueCode"] = json!("x")),
                "MerchantUniqueCode:",
            ),
            (Box::new(|v| v["TerminalId"] = json!("t")), "TerminalId:"),
            (Box::new(|v| v["Products"] = json!([])), "Products:"),
            (
                Box::new(|v| v["Products"][0]["Name"] = json!("n".repeat(76))),
                "Products[0].Name:",
            ),
            (
                Box::new(|v| v["Products"][1]["Quantity"] = json!(0)),
                "Products[1].Quantity:",
            ),
            (
                Box::new(|v| v["Customer"]["Phone"] = json!("1".repeat(21))),
                "Customer.Phone:",
            ),
            (
                Box::new(|v| {
                    v["Customer"].as_object_mut().map(|c| c.remove("Type"));
                }),
                "Customer.Type:",
            ),
            (
                Box::new(|v| v["DisplayCode"] = json!("d".repeat(26))),
                "DisplayCode:",
            ),
        ];
        for (patch, field) in cases {
            let e = check_sale(&body(patch)).expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }
}

#[cfg(test)]
mod fault_tests {
    //! The mock over loopback (127.0.0.1:0 only): the answer faults and what `list`
    //! answers.

    use super::*;

    const W: Duration = Duration::from_secs(5);
    const TERMINAL: &str = "8ff33705-57c7-42dc-8341-a0053e7f3009";

    struct Mock {
        base: String,
        root: String,
        stats: PaywallStats,
        stop: CancellationToken,
        http: reqwest::Client,
    }

    async fn mock() -> Mock {
        let sim = PaywallSim::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            PaywallSimOptions::default(),
        )
        .await
        .expect("bind");
        let (base, root) = (sim.base_url("test"), format!("http://{}", sim.local_addr()));
        let stats = sim.stats();
        let stop = CancellationToken::new();
        sim.spawn(stop.clone());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(W)
            .build()
            .expect("client");
        Mock {
            base,
            root,
            stats,
            stop,
            http,
        }
    }

    impl Mock {
        fn authed(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
            r.header("apikeyprivate", "test-api-key")
                .header("apiclientprivate", "test-secret")
        }

        /// Status, content type and body of a sale; `None` when the answer was lost.
        async fn sale(&self, muc: &str, amount: &str) -> Option<(u16, String, String)> {
            let body = format!(
                r#"{{"TerminalId":"{TERMINAL}","MerchantUniqueCode":"{muc}","Amount":{amount},"CurrencyId":1,"Products":[{{"Name":"Su","TaxGroupId":10,"UnitCodeId":1,"Amount":{amount},"Quantity":1}}]}}"#
            );
            let url = format!("{}/api/payment/sync/sale", self.base);
            let resp = self
                .authed(self.http.post(url))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .ok()?;
            crate::sim::http::answer_parts(resp).await.ok()
        }

        async fn get_json(&self, path: &str) -> (u16, Value) {
            let resp = self
                .authed(self.http.get(format!("{}{path}", self.base)))
                .send()
                .await
                .expect("send");
            let status = resp.status().as_u16();
            (status, resp.json().await.expect("JSON"))
        }

        async fn list(&self, muc: &str) -> (u16, Value) {
            self.get_json(&format!("/api/payment/list?MerchantUniqueCode={muc}"))
                .await
        }

        fn payment(&self, muc: &str) -> PaymentSnapshot {
            self.stats
                .payments()
                .into_iter()
                .find(|p| p.merchant_unique_code == muc)
                .expect("payment")
        }
    }

    #[tokio::test]
    async fn list_answers_an_empty_result_for_an_unknown_code_and_the_sale_for_a_known_one() {
        let m = mock().await;
        let unknown = "00000000-0000-4000-8000-000000000001";
        let (status, v) = m.list(unknown).await;
        assert_eq!(status, 200);
        assert_eq!(
            v,
            json!({"result": [], "errorCode": 0, "succeeded": true, "failed": false})
        );
        let muc = "3a0f4d0f-c5cf-57b6-8ec2-861f71b7fb90";
        let (status, _, _) = m.sale(muc, "22.00").await.expect("answer");
        assert_eq!(status, 200);
        let (status, v) = m.list(&muc.to_ascii_uppercase()).await;
        assert_eq!(status, 200);
        let p = m.payment(muc);
        assert_eq!(
            v,
            json!({"result": [{
                "paymentRequestId": p.payment_request_id,
                "paymentRequestActivityId": v["result"][0]["paymentRequestActivityId"],
                "paymentRequestActivityTypeId": 1,
                "paymentStatus": STATUS_SUCCEEDED,
                "merchantUniqueCode": muc,
                "terminalId": TERMINAL,
                "amount": "22.00",
                "environment": "test",
            }], "errorCode": 0, "succeeded": true, "failed": false})
        );
        m.stop.cancel();
    }

    #[tokio::test]
    async fn amount_61_sells_and_cuts_the_answer_short() {
        let m = mock().await;
        let muc = "6161aaaa-0000-4000-8000-000000000061";
        let (status, ct, first) = m.sale(muc, "22.61").await.expect("answer");
        assert_eq!(status, 200);
        assert!(ct.starts_with("application/json"), "{ct}");
        assert!(serde_json::from_str::<Value>(&first).is_err(), "{first}");
        assert_eq!(m.stats.payments_created(), 1);
        assert_eq!(m.payment(muc).status, STATUS_SUCCEEDED);
        // A repeat is answered whole, from the books: the text the first answer was cut from.
        let (status, _, again) = m.sale(muc, "22.61").await.expect("answer");
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&again).expect("JSON");
        assert_eq!(v["Succeeded"], true);
        assert_eq!(
            v["Result"]["paymentRequestId"],
            m.payment(muc).payment_request_id.as_str()
        );
        assert_eq!(first, again[..again.len() / 2]);
        let (_, listed) = m.list(muc).await;
        assert_eq!(listed["result"][0]["paymentStatus"], STATUS_SUCCEEDED);
        assert_eq!(
            (m.stats.payments_created(), m.payment(muc).sale_requests),
            (1, 2)
        );
        m.stop.cancel();
    }

    #[tokio::test]
    async fn amount_62_loses_the_answer_and_hides_the_sale_from_list_until_published() {
        let m = mock().await;
        let muc = "6262aaaa-0000-4000-8000-000000000062";
        assert!(
            m.sale(muc, "22.62").await.is_none(),
            "the answer must be lost"
        );
        assert_eq!(m.stats.payments_created(), 1);
        let p = m.payment(muc);
        assert_eq!((p.status, p.listed), (STATUS_SUCCEEDED, false));
        let (status, v) = m.list(muc).await;
        assert_eq!((status, v["result"].clone()), (200, json!([])));
        let (status, v) = m
            .get_json(&format!("/api/payment/inquiry/{}", p.payment_request_id))
            .await;
        assert_eq!(status, 200);
        assert_eq!(v["Result"]["paymentStatus"], STATUS_SUCCEEDED);
        assert_eq!(v["Result"]["merchantUniqueCode"], muc);
        // A repeat is answered normally; list still hides the sale.
        let (status, _, again) = m.sale(muc, "22.62").await.expect("answer");
        let v: Value = serde_json::from_str(&again).expect("JSON");
        assert_eq!(
            (status, &v["Result"]["paymentRequestId"]),
            (200, &json!(p.payment_request_id))
        );
        assert_eq!(m.list(muc).await.1["result"], json!([]));
        // Published through the control route: list shows it from now on.
        let publish = |code: &str| {
            m.http
                .post(format!("{}/_sim/payments/{code}/publish", m.root))
                .send()
        };
        let unknown = publish("00000000-0000-4000-8000-000000000002")
            .await
            .expect("send");
        assert_eq!(unknown.status().as_u16(), 404);
        assert_eq!(publish(muc).await.expect("send").status().as_u16(), 200);
        let (_, v) = m.list(muc).await;
        assert_eq!(
            v["result"][0]["paymentRequestId"],
            p.payment_request_id.as_str()
        );
        assert_eq!(v["result"][0]["paymentStatus"], STATUS_SUCCEEDED);
        assert_eq!(m.stats.payments_created(), 1);
        // The handle does the same.
        assert!(m.stats.publish(muc));
        m.stop.cancel();
    }
}
