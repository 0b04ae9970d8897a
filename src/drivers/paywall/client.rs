//! The Paywall client: the driver's only I/O — its HTTP calls, with the keys, the routes
//! and the answer checks (`paywall.md`); what an answer means for the money is the
//! driver's (`mod.rs`).

use std::time::Duration;

use serde_json::Value;

use super::api::{Envelope, PaymentView};
use super::CALL_TIMEOUT;
use crate::drivers::cloud::{self, Credential, Reply};
use crate::drivers::http::Transport;

/// Everything needed to call Paywall.
pub(super) struct Link {
    pub(super) client: reqwest::Client,
    pub(super) api_key: Credential,
    pub(super) client_key: Credential,
    pub(super) base: String,
}

/// What asking Paywall about a MerchantUniqueCode found.
pub(super) enum Found {
    /// A row with exactly this MerchantUniqueCode (confirmed by inquiry when possible).
    Sale(PaymentView, Value),
    Absent,
}

impl Link {
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("apikeyprivate", cloud::secret_header(self.api_key.expose()))
            .header("apiclientprivate", cloud::secret_header(self.client_key.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    pub(super) async fn post(
        &self, path: &str, body: String, timeout: Duration,
    ) -> Result<Reply, Transport> {
        cloud::send(
            self.request(reqwest::Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(timeout)
                .body(body),
        )
        .await
    }

    /// Ask Paywall about a sale by its MerchantUniqueCode (`list`), then by its
    /// PaymentRequestId (`inquiry`) when the list shows it. `Err`: no usable answer.
    pub(super) async fn lookup(&self, muc: &str) -> Result<Found, String> {
        let reply = cloud::send(
            self.request(reqwest::Method::GET, "/api/payment/list")
                .query(&[("MerchantUniqueCode", muc)])
                .timeout(CALL_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
        if reply.status >= 300 {
            // Including 404: the list route is not in the seed (docs/terminals/paywall.md: unverified against
            // the real service); a 404 says nothing about this sale.
            return Err(format!("list answered HTTP {}", reply.status));
        }
        let env = Envelope::parse(&reply.body)?;
        if !env.ok() {
            return Err(format!("list refused: {}", env.describe()));
        }
        // Only a row that names exactly this code is this sale; a row without a code could
        // be anyone's.
        let Some(p) = env
            .payments()
            .into_iter()
            .find(|p| p.merchantuniquecode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(muc)))
        else {
            return Ok(Found::Absent);
        };
        // The list row is enough; inquiry confirms by PaymentRequestId.
        let Some(id) = &p.paymentrequestid else {
            return Ok(Found::Sale(p.clone(), reply.body.clone()));
        };
        match self.inquiry(id).await {
            Ok((view, raw)) => {
                if view.merchantuniquecode.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case(muc))
                {
                    return Err(format!(
                        "inquiry of {id} answered a sale with another MerchantUniqueCode ({:?})",
                        view.merchantuniquecode
                    ));
                }
                Ok(Found::Sale(view, raw))
            }
            Err(e) => {
                tracing::debug!(error = %e, "inquiry failed; using the list row");
                Ok(Found::Sale(p.clone(), reply.body.clone()))
            }
        }
    }

    pub(super) async fn inquiry(&self, id: &str) -> Result<(PaymentView, Value), String> {
        let reply = cloud::send(
            self.request(reqwest::Method::GET, &format!("/api/payment/inquiry/{id}"))
                .timeout(CALL_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
        let env = Envelope::parse(&reply.body)?;
        if reply.status >= 300 || !env.ok() {
            return Err(format!("inquiry: HTTP {}: {}", reply.status, env.describe()));
        }
        env.payment()
            .map(|p| (p, reply.body.clone()))
            .ok_or_else(|| "inquiry answered without a payment".to_string())
    }
}
