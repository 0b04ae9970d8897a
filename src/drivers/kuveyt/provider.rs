//! The pay-by-link provider protocol behind one small trait, so that a KT Pay Gate
//! variant (3-D Secure, run by a cloud service with a public callback address —
//! `kuveyt.md` §3) can be added beside the seed platform's API without touching the
//! driver's flow.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::drivers::cloud::{self, Credential};
use crate::drivers::http::Transport;

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerInfo {
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
}

/// What the driver asks for: one payment link for one order.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// The idempotency key on the provider's side: a repeat returns the same payment.
    pub order_id: String,
    /// Decimal text with exactly the currency's exponent (`"150.00"`).
    pub amount: String,
    pub currency: String,
    pub customer: CustomerInfo,
    pub return_url: Option<String>,
    pub cancel_url: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub transaction_id: String,
    pub payment_url: String,
    #[serde(default)]
    pub payment_id: Option<String>,
    #[serde(default)]
    pub payment_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LinkStatus {
    /// Waiting for the customer.
    Pending,
    Completed {
        paid_at: Option<String>,
    },
    /// The customer gave up or the payment was refused.
    Failed {
        status: String,
    },
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderError {
    Call(Transport),
    /// A definite "no" from the provider (bad request, wrong credentials, not found).
    Refused {
        http: u16,
        message: String,
        unauthorized: bool,
        not_found: bool,
    },
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::Call(e) => write!(f, "{e}"),
            ProviderError::Refused { http, message, .. } => {
                write!(f, "refused (HTTP {http}): {message}")
            }
        }
    }
}

#[async_trait]
pub trait PayByLink: Send + Sync {
    /// Create (or, for an order id seen before, find) the payment link.
    async fn create(&self, req: &CreateRequest) -> Result<(Created, Value), ProviderError>;
    /// Where the payment stands now.
    async fn verify(&self, transaction_id: &str) -> Result<(LinkStatus, Value), ProviderError>;
    /// Reachability and credentials, for `device_info` and the retained terminal state.
    async fn probe(&self) -> Result<Value, String>;
}

/// The seed platform's payment API (`kuveyt.md` §3): `POST /api/payments/create/` and
/// `POST /api/payments/verify/`, authenticated with `X-Api-Key`/`X-Api-Secret` of the
/// terminal's mode (posbridge decision; the seed names no auth for these routes).
pub struct KuveytApi {
    pub base: String,
    pub client: reqwest::Client,
    pub api_key: Credential,
    pub api_secret: Credential,
    pub call_timeout: Duration,
}

const PROVIDER: &str = "kuveyt";

impl KuveytApi {
    async fn post(&self, path: &str, body: Value) -> Result<cloud::Reply, ProviderError> {
        let reply = cloud::send(
            self.client
                .post(format!("{}{path}", self.base))
                .header("X-Api-Key", cloud::secret_header(self.api_key.expose()))
                .header("X-Api-Secret", cloud::secret_header(self.api_secret.expose()))
                .header(reqwest::header::ACCEPT, "application/json")
                .json(&body)
                .timeout(self.call_timeout),
        )
        .await
        .map_err(ProviderError::Call)?;
        if reply.status >= 500 {
            return Err(ProviderError::Call(Transport::MaybeSent(format!(
                "HTTP {}: {}",
                reply.status,
                message(&reply.body)
            ))));
        }
        if reply.status >= 300 || reply.body.get("success") != Some(&Value::Bool(true)) {
            return Err(ProviderError::Refused {
                http: reply.status,
                message: message(&reply.body),
                unauthorized: reply.status == 401 || reply.status == 403,
                not_found: reply.status == 404,
            });
        }
        Ok(reply)
    }
}

fn message(body: &Value) -> String {
    body.get("message")
        .or_else(|| body.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_string()
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Parse a verify answer (keys lower-cased).
pub fn parse_status(body: &Value) -> Result<LinkStatus, String> {
    let status = body
        .get("payment")
        .and_then(|p| p.get("status"))
        .and_then(Value::as_str)
        .ok_or("verify answer has no payment.status")?
        .to_ascii_lowercase();
    Ok(match status.as_str() {
        "pending" | "processing" | "waiting" => LinkStatus::Pending,
        "completed" | "paid" | "succeeded" => {
            LinkStatus::Completed { paid_at: body.get("payment").and_then(|p| text(p, "paid_at")) }
        }
        "cancelled" | "canceled" => LinkStatus::Cancelled,
        "failed" | "declined" | "expired" => LinkStatus::Failed { status },
        // Unknown words are never guessed final.
        _ => LinkStatus::Pending,
    })
}

/// Parse a create answer (keys lower-cased).
pub fn parse_created(body: &Value) -> Result<Created, String> {
    let payment = body.get("payment").cloned().unwrap_or(Value::Null);
    Ok(Created {
        transaction_id: text(body, "transaction_id")
            .ok_or("create answer has no transaction_id")?,
        payment_url: text(body, "payment_url").ok_or("create answer has no payment_url")?,
        payment_id: text(&payment, "id"),
        payment_number: text(&payment, "payment_number"),
    })
}

#[async_trait]
impl PayByLink for KuveytApi {
    async fn create(&self, req: &CreateRequest) -> Result<(Created, Value), ProviderError> {
        let mut body = json!({
            "order_id": req.order_id,
            "provider": PROVIDER,
            "amount": req.amount,
            "currency": req.currency,
            "customer_info": req.customer,
        });
        for (k, v) in [
            ("return_url", &req.return_url),
            ("cancel_url", &req.cancel_url),
            ("description", &req.description),
        ] {
            if let Some(v) = v {
                body[k] = Value::String(v.clone());
            }
        }
        let reply = self.post("/api/payments/create/", body).await?;
        let created =
            parse_created(&reply.body).map_err(|e| ProviderError::Call(Transport::MaybeSent(e)))?;
        Ok((created, reply.body))
    }

    async fn verify(&self, transaction_id: &str) -> Result<(LinkStatus, Value), ProviderError> {
        let reply = self
            .post(
                "/api/payments/verify/",
                json!({ "transaction_id": transaction_id, "provider": PROVIDER }),
            )
            .await?;
        let st =
            parse_status(&reply.body).map_err(|e| ProviderError::Call(Transport::MaybeSent(e)))?;
        Ok((st, reply.body))
    }

    async fn probe(&self) -> Result<Value, String> {
        // Verify of a transaction that cannot exist: "not found" proves address and keys.
        match self.verify("posbridge-probe").await {
            Ok(_) => Ok(json!({})),
            Err(ProviderError::Refused { not_found: true, .. }) => Ok(json!({})),
            Err(ProviderError::Refused { unauthorized: true, message, .. }) => {
                Err(format!("the provider refused the credentials: {message}"))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::cloud::classify;

    #[test]
    fn statuses_parse_case_insensitively_and_never_guess() {
        let p = |s: &str| {
            let r = classify(200, Some("application/json"), s.as_bytes()).expect("json");
            parse_status(&r.body)
        };
        assert_eq!(
            p(
                r#"{"Success":true,"Payment":{"Status":"Completed","Paid_At":"2024-01-10T15:30:00Z"}}"#
            ),
            Ok(LinkStatus::Completed { paid_at: Some("2024-01-10T15:30:00Z".into()) })
        );
        assert_eq!(
            p(r#"{"success":true,"payment":{"status":"pending"}}"#),
            Ok(LinkStatus::Pending)
        );
        assert_eq!(
            p(r#"{"success":true,"payment":{"status":"cancelled"}}"#),
            Ok(LinkStatus::Cancelled)
        );
        assert_eq!(
            p(r#"{"success":true,"payment":{"status":"failed"}}"#),
            Ok(LinkStatus::Failed { status: "failed".into() })
        );
        assert_eq!(
            p(r#"{"success":true,"payment":{"status":"on-hold"}}"#),
            Ok(LinkStatus::Pending)
        );
        assert!(p(r#"{"success":true}"#).is_err());
        assert!(p(r#"{"success":true,"payment":{"status":7}}"#).is_err());
    }

    #[test]
    fn created_needs_url_and_transaction() {
        let body = classify(
            200,
            Some("application/json"),
            br#"{"success":true,"payment":{"id":"p1","payment_number":"PAY-1","status":"pending"},"Payment_URL":"https://x/pay/1","transaction_id":"TRX1"}"#,
        )
        .expect("json")
        .body;
        let c = parse_created(&body).expect("created");
        assert_eq!(c.transaction_id, "TRX1");
        assert_eq!(c.payment_url, "https://x/pay/1");
        assert_eq!(c.payment_number.as_deref(), Some("PAY-1"));
        assert!(parse_created(&serde_json::json!({"success":true,"transaction_id":"T"})).is_err());
    }
}
