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
//!
//! Layout: this file holds the books, the test handle and the control routes; `api` the
//! create and verify routes (body rules included). The server itself (binding, TLS, the
//! two environments and their keys) is [`super::cloud::CloudMock`].

mod api;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::cloud::{self, Keys, MockOptions, MockState, MockStats, Provider, Shared};
use super::http;

/// The pay-by-link mock: `KuveytSim::bind(addr, opts)`, then `spawn` or `run`.
pub type KuveytSim = cloud::CloudMock<Kuveyt>;

/// Counters and payments, for tests. Cheap to clone.
pub type KuveytStats = MockStats<Kuveyt>;

#[derive(Debug, Clone)]
pub struct KuveytSimOptions {
    /// `api_key` = `X-Api-Key`, `client_key` = `X-Api-Secret`.
    pub test: Keys,
    pub live: Keys,
    pub tls: bool,
}

impl Default for KuveytSimOptions {
    fn default() -> Self {
        KuveytSimOptions { test: Keys::sample("test"), live: Keys::sample("live"), tls: false }
    }
}

impl MockOptions for KuveytSimOptions {
    fn keys(&self) -> (&Keys, &Keys) {
        (&self.test, &self.live)
    }
    fn tls(&self) -> bool {
        self.tls
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

/// Requests by route, and payment links created (`KuveytStats::counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub create_requests: u64,
    pub payments_created: u64,
    pub verify_requests: u64,
    pub invalid: u64,
}

/// The mock's books: counters and payment links.
#[derive(Default)]
pub struct Books {
    counters: Counters,
    next: u64,
    /// By `env/order_id`.
    links: HashMap<String, Link>,
}

/// The pay-by-link API's semantics, served by [`cloud::CloudMock`].
pub struct Kuveyt;

type Sim = Shared<Kuveyt>;

impl Provider for Kuveyt {
    const NAME: &'static str = "kuveyt";
    const KEY_HEADERS: (&'static str, &'static str) = ("x-api-key", "x-api-secret");
    const COMPLETE_DEFAULT: &'static str = "completed";
    const COMPLETE_MISSING: &'static str =
        "no pending payment with that transaction id, or unknown status";
    type Options = KuveytSimOptions;
    type Books = Books;

    fn routes() -> Router<Arc<Sim>> {
        Router::new()
            .route("/{env}/api/payments/create/", post(api::create))
            .route("/{env}/api/payments/verify/", post(api::verify))
            .route("/{env}/pay/{transaction_id}", get(pay_page))
            .route("/_sim/stats", get(sim_stats))
    }

    fn no_such_env() -> Response {
        refuse(StatusCode::NOT_FOUND, "no such environment")
    }

    fn bad_keys(env: &str) -> Response {
        refuse(
            StatusCode::UNAUTHORIZED,
            &format!("X-Api-Key/X-Api-Secret are not valid for the {env} environment"),
        )
    }

    fn complete(shared: &Sim, transaction_id: &str, status: &str) -> bool {
        complete(shared, transaction_id, status)
    }
}

impl KuveytStats {
    /// The counters as they are now.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters
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
}

/// The customer pays (`completed`) or gives up (`failed`, `cancelled`).
fn complete(shared: &Sim, transaction_id: &str, status: &str) -> bool {
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
    shared.notify();
    done
}

fn refuse(status: StatusCode, message: &str) -> Response {
    http::json(status, json!({ "success": false, "message": message }))
}

async fn pay_page(Path((_env, tid)): Path<(String, String)>) -> Response {
    axum::response::IntoResponse::into_response(axum::response::Html(format!(
        "<html><body><h1>posbridge kuveyt mock</h1><p>payment {tid}: complete it with POST /_sim/payments/{tid}/complete</p></body></html>"
    )))
}

async fn sim_stats(State(shared): MockState<Kuveyt>) -> Response {
    let s = shared.lock();
    let c = &s.counters;
    let links: Vec<Value> = s
        .links
        .values()
        .map(|l| json!({ "env": l.env, "order_id": l.order_id, "transaction_id": l.transaction_id, "amount": l.amount, "status": l.status, "create_requests": l.create_requests, "verifies": l.verifies }))
        .collect();
    http::json(
        StatusCode::OK,
        json!({ "create_requests": c.create_requests, "payments_created": c.payments_created, "verify_requests": c.verify_requests, "unauthorized": shared.unauthorized(), "invalid": c.invalid, "payments": links }),
    )
}
