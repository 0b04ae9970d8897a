//! The pay-by-link routes: `payments/create/` (the platform's body rules, `order_id`
//! idempotency, outcomes by the amount's last two digits, see the table in the module
//! above) and `payments/verify/`, each behind the environment's keys.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{refuse, Kuveyt, Link};
use crate::drivers::cloud::money;
use crate::sim::cloud::MockState;
use crate::sim::http;

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
    let order_id = b.order_id.clone().filter(|o| !o.is_empty()).ok_or("order_id: required")?;
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
        return Err(format!("amount: {amount:?} must be positive with exactly {exp} decimals"));
    }
    if let Some(c) = &b.customer_info {
        for (k, max) in [("email", 254), ("name", 100), ("phone", 20)] {
            if let Some(v) = c.get(k) {
                let s = v.as_str().ok_or(format!("customer_info.{k}: not a string"))?;
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

pub(super) async fn create(
    State(shared): MockState<Kuveyt>, Path(env): Path<String>, headers: HeaderMap, body: String,
) -> Response {
    if let Some(r) = shared.admit(&env, &headers, |b| b.counters.create_requests += 1) {
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
            return refuse(StatusCode::CONFLICT, "order_id was used with another amount");
        }
        json!({
            "success": true,
            "message": if existing { "Ödeme zaten var." } else { "Ödeme oluşturuldu." },
            "payment": { "id": format!("pay-{}", l.id), "payment_number": format!("PAY-{}-{:06}", env.to_uppercase(), l.id), "status": l.status },
            "payment_url": format!("{}/pay/{}", shared.base_url(&env), l.transaction_id),
            "transaction_id": l.transaction_id,
        })
    };
    shared.notify();
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

pub(super) async fn verify(
    State(shared): MockState<Kuveyt>, Path(env): Path<String>, headers: HeaderMap, body: String,
) -> Response {
    if let Some(r) = shared.admit(&env, &headers, |b| b.counters.verify_requests += 1) {
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
        let Some(l) = s.links.values_mut().find(|l| l.env == env && l.transaction_id == tid) else {
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
    shared.notify();
    if garble {
        return http::json_cut_short(&reply);
    }
    http::json(StatusCode::OK, reply)
}
