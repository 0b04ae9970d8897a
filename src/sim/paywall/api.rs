//! The Paywall payment routes: `sync/sale` (outcomes by the amount's last two digits, see
//! the table in the module above), `sync/cancel`, `sync/sale/rollback`, `inquiry` and
//! `list`, each behind the environment's keys.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use super::{check_sale, complete, envelope, is_final, refuse, Books, Payment, Paywall};
use crate::drivers::paywall::api::{
    SaleRequest, STATUS_CANCELLED, STATUS_FAILED, STATUS_ON_DEVICE, STATUS_SUCCEEDED,
    STATUS_WAITING,
};
use crate::sim::cloud::MockState;
use crate::sim::http;

pub(super) async fn sale(
    State(shared): MockState<Paywall>, Path(env): Path<String>, headers: HeaderMap, body: String,
) -> Response {
    if let Some(r) = shared.admit(&env, &headers, |b| b.counters.sale_requests += 1) {
        return r;
    }
    let req: SaleRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            shared.bump(|b| b.counters.invalid += 1);
            return refuse(StatusCode::BAD_REQUEST, 400, "ValidationError", &format!("body: {e}"));
        }
    };
    let amount = match check_sale(&req) {
        Ok(a) => a,
        Err(e) => {
            shared.bump(|b| b.counters.invalid += 1);
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
                return refuse(StatusCode::BAD_REQUEST, 409, "MerchantUniqueCodeConflict", &msg);
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
    shared.notify();
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
    let view = shared.lock().payments.get(&key).map(Payment::view).unwrap_or(Value::Null);
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

fn find_by_id<'a>(s: &'a Books, env: &str, id: &str) -> Option<&'a Payment> {
    s.payments.values().find(|p| p.env == env && p.id.to_string().eq_ignore_ascii_case(id))
}

/// `sync/cancel` (`ROLLBACK` false) and `sync/sale/rollback` (true: only while the device
/// has not received the sale).
pub(super) async fn cancel<const ROLLBACK: bool>(
    State(shared): MockState<Paywall>, Path(env): Path<String>, headers: HeaderMap, body: String,
) -> Response {
    let rollback = ROLLBACK;
    let count = |b: &mut Books| {
        if rollback {
            b.counters.rollback_requests += 1
        } else {
            b.counters.cancel_requests += 1
        }
    };
    if let Some(r) = shared.admit(&env, &headers, count) {
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
    shared.notify();
    match answer {
        Ok(v) => http::json(StatusCode::OK, v),
        Err((st, code, client)) => refuse(st, code, client, client),
    }
}

pub(super) async fn inquiry(
    State(shared): MockState<Paywall>, Path((env, id)): Path<(String, String)>, headers: HeaderMap,
) -> Response {
    if let Some(r) = shared.admit(&env, &headers, |b| b.counters.inquiry_requests += 1) {
        return r;
    }
    let view = find_by_id(&shared.lock(), &env, &id).map(Payment::view);
    match view {
        Some(v) => http::json(StatusCode::OK, envelope(true, 0, "", "", v)),
        None => refuse(StatusCode::NOT_FOUND, 404, "PaymentNotFound", "no such payment"),
    }
}

pub(super) async fn list(
    State(shared): MockState<Paywall>, Path(env): Path<String>,
    Query(q): Query<HashMap<String, String>>, headers: HeaderMap,
) -> Response {
    if let Some(r) = shared.admit(&env, &headers, |b| b.counters.list_requests += 1) {
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
