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
//!
//! Layout: this file holds the books, the test handle and the control routes; `check`
//! the body rules, `api` the payment routes. The server itself (binding, TLS, the two
//! environments and their keys) is [`super::cloud::CloudMock`].

mod api;
mod check;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

pub use self::check::check_sale;
pub use super::cloud::Keys;
use super::cloud::{self, MockOptions, MockState, MockStats, Provider, Shared};
use super::http;
use crate::drivers::cloud::money;
use crate::drivers::paywall::api::{STATUS_CANCELLED, STATUS_FAILED, STATUS_SUCCEEDED};

/// The Paywall mock: `PaywallSim::bind(addr, opts)`, then `spawn` or `run`.
pub type PaywallSim = cloud::CloudMock<Paywall>;

/// Counters and payments, for tests. Cheap to clone.
pub type PaywallStats = MockStats<Paywall>;

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
            test: Keys::sample("test"),
            live: Keys::sample("live"),
            slow: Duration::from_secs(30),
            tls: false,
        }
    }
}

impl MockOptions for PaywallSimOptions {
    fn keys(&self) -> (&Keys, &Keys) {
        (&self.test, &self.live)
    }
    fn tls(&self) -> bool {
        self.tls
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

/// Requests by route, and payments created (`PaywallStats::counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub sale_requests: u64,
    pub payments_created: u64,
    pub list_requests: u64,
    pub inquiry_requests: u64,
    pub cancel_requests: u64,
    pub rollback_requests: u64,
    pub invalid: u64,
}

/// The mock's books: counters and payments.
#[derive(Default)]
pub struct Books {
    counters: Counters,
    /// By `env/MerchantUniqueCode`.
    payments: HashMap<String, Payment>,
}

/// The Paywall PhysicalAPI's semantics, served by [`cloud::CloudMock`].
pub struct Paywall;

type Sim = Shared<Paywall>;

impl Provider for Paywall {
    const NAME: &'static str = "paywall";
    const KEY_HEADERS: (&'static str, &'static str) = ("apikeyprivate", "apiclientprivate");
    const COMPLETE_DEFAULT: &'static str = "succeeded";
    const COMPLETE_MISSING: &'static str = "no waiting sale with that code, or unknown status";
    type Options = PaywallSimOptions;
    type Books = Books;

    fn routes() -> Router<Arc<Sim>> {
        Router::new()
            .route("/{env}/api/payment/sync/sale", post(api::sale))
            .route("/{env}/api/payment/sync/cancel", post(api::cancel::<false>))
            .route("/{env}/api/payment/sync/sale/rollback", post(api::cancel::<true>))
            .route("/{env}/api/payment/inquiry/{id}", get(api::inquiry))
            .route("/{env}/api/payment/list", get(api::list))
            .route("/_sim/stats", get(sim_stats))
            .route("/_sim/payments/{id}/publish", post(sim_publish))
    }

    fn no_such_env() -> Response {
        refuse(StatusCode::NOT_FOUND, 404, "EnvironmentNotFound", "no such environment")
    }

    fn bad_keys(env: &str) -> Response {
        refuse(
            StatusCode::UNAUTHORIZED,
            401,
            "Unauthorized",
            &format!("apikeyprivate/apiclientprivate are not valid for the {env} environment"),
        )
    }

    fn complete(shared: &Sim, muc: &str, status: &str) -> bool {
        complete(shared, muc, status)
    }
}

impl PaywallStats {
    /// The counters as they are now.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters
    }

    /// Cancels of either kind (`sync/cancel` and `rollback`).
    pub fn cancel_requests(&self) -> u64 {
        let c = self.counters();
        c.cancel_requests + c.rollback_requests
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

    /// Let `list` show a sale it hides (`…62`); `false` if no sale has that code.
    pub fn publish(&self, muc: &str) -> bool {
        publish(&self.shared, muc)
    }
}

fn publish(shared: &Sim, muc: &str) -> bool {
    let found = {
        let mut s = shared.lock();
        let mut found = false;
        for p in s.payments.values_mut().filter(|p| p.muc.eq_ignore_ascii_case(muc)) {
            p.listed = true;
            found = true;
        }
        found
    };
    shared.notify();
    found
}

/// Finish a waiting sale as the customer would (`succeeded`, `failed`, `cancelled`).
fn complete(shared: &Sim, muc: &str, status: &str) -> bool {
    let code = match status {
        "succeeded" => STATUS_SUCCEEDED,
        "failed" => STATUS_FAILED,
        "cancelled" => STATUS_CANCELLED,
        _ => return false,
    };
    let done = {
        let s = shared.lock();
        let mut done = false;
        for p in s.payments.values().filter(|p| p.muc.eq_ignore_ascii_case(muc)) {
            if !is_final(p.status()) {
                p.status.send_replace(code);
                done = true;
            }
        }
        done
    };
    shared.notify();
    done
}

fn is_final(s: i64) -> bool {
    matches!(s, STATUS_SUCCEEDED | STATUS_CANCELLED | STATUS_FAILED)
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

async fn sim_stats(State(shared): MockState<Paywall>) -> Response {
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
            "unauthorized": shared.unauthorized(), "invalid": c.invalid, "payments": payments,
        }),
    )
}

async fn sim_publish(State(shared): MockState<Paywall>, Path(muc): Path<String>) -> Response {
    if publish(&shared, &muc) {
        http::json(StatusCode::OK, json!({ "published": muc }))
    } else {
        http::json(StatusCode::NOT_FOUND, json!({ "error": "no sale with that code" }))
    }
}
