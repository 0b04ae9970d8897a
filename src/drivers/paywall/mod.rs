//! Driver `paywall`: Paywall PhysicalAPI (`paywall.md`, seed 002). The agent asks the
//! Paywall cloud to push a sale to a registered terminal and waits for the synchronous
//! answer.
//!
//! Never two sales: the `MerchantUniqueCode` is a UUID v5 of the request, journalled
//! durably before the request; after a lost answer or a crash the driver asks Paywall
//! about that code (`list`, then `inquiry` by PaymentRequestId) instead of selling again.

pub mod api;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::time::Instant;

use self::api::{Envelope, PaymentRef, PaymentView, Status};
use super::cloud::{self, CallError, Credential, Reply};
use super::{Driver, DriverEnv, Health, OpContext, Outcome};
use crate::api::{Command, ErrorBody, ErrorCode, FinalState, Op, PaymentInfo, Rejection};
use crate::config::{PaywallTerminal, ProviderMode};
use crate::store::CommandRecord;

/// Journal steps (durable before/after the sale request).
pub const STEP_SENDING: &str = "paywall_sale_sending";
pub const STEP_ANSWERED: &str = "paywall_sale_answered";

/// Short calls (list, inquiry, cancel).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PaywallDriver {
    mode: ProviderMode,
    agent_id: String,
    base: String,
    terminal_guid: String,
    currency_ids: BTreeMap<String, u32>,
    op_timeout: Duration,
    recovery_window: Duration,
    /// Everything needed to call Paywall, or why this terminal cannot be used.
    link: Result<Link, String>,
}

struct Link {
    client: reqwest::Client,
    api_key: Credential,
    client_key: Credential,
}

/// What asking Paywall about a MerchantUniqueCode found.
enum Found {
    Final(Outcome, Value),
    /// Known to Paywall, still running (or a status outside the table).
    Running(PaymentView),
    Absent,
}

impl PaywallDriver {
    pub fn new(cfg: &PaywallTerminal, env: &DriverEnv) -> PaywallDriver {
        let mode_name = cloud::mode_name(cfg.mode);
        let base = match cfg.mode {
            ProviderMode::Test => cfg.test_url.clone(),
            ProviderMode::Live => cfg.live_url.clone(),
            ProviderMode::Disabled => None,
        }
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
        let link = if cfg.mode == ProviderMode::Disabled {
            Err(format!(
                "terminal {} is disabled (mode = \"disabled\" in the config)",
                cfg.id
            ))
        } else {
            let creds = cloud::credential(
                &env.secrets,
                &cfg.id,
                mode_name,
                "api_key",
                cfg.api_key_file.as_deref(),
            )
            .and_then(|k| {
                cloud::credential(
                    &env.secrets,
                    &cfg.id,
                    mode_name,
                    "client_key",
                    cfg.client_key_file.as_deref(),
                )
                .map(|c| (k, c))
            });
            creds
                .and_then(|(api_key, client_key)| {
                    cloud::http_client(CONNECT_TIMEOUT, cfg.ca_file.as_deref()).map(|client| {
                        tracing::info!(terminal = %cfg.id, mode = mode_name,
                            api_key = %api_key.source, client_key = %client_key.source,
                            "paywall credentials loaded");
                        Link {
                            client,
                            api_key,
                            client_key,
                        }
                    })
                })
                .map_err(|e| format!("terminal {} ({mode_name} mode): {e}", cfg.id))
        };
        if let Err(e) = &link {
            tracing::warn!(terminal = %cfg.id, error = %e, "paywall terminal unusable");
        }
        let mut currency_ids = cfg.currency_ids.clone();
        if currency_ids.is_empty() {
            currency_ids.insert("TRY".into(), 1);
        }
        PaywallDriver {
            mode: cfg.mode,
            agent_id: env.agent_id.clone(),
            base,
            terminal_guid: cfg.terminal_guid.clone().unwrap_or_default(),
            currency_ids,
            op_timeout: cfg.op_timeout,
            recovery_window: cfg.recovery_window,
            link,
        }
    }

    fn link(&self) -> Result<&Link, Box<Outcome>> {
        self.link.as_ref().map_err(|e| {
            Box::new(Outcome::failed(
                ErrorCode::DeviceUnavailable,
                e.clone(),
                None,
            ))
        })
    }

    fn muc_of(&self, record: &CommandRecord) -> String {
        // The journalled code wins: it is the one Paywall saw, whatever the agent id is now.
        record
            .last_step(STEP_SENDING)
            .and_then(|s| s.data.get("merchant_unique_code"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                api::merchant_unique_code(&self.agent_id, &record.cmd.id).to_string()
            })
    }

    fn request(&self, link: &Link, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        link.client
            .request(method, format!("{}{path}", self.base))
            .header("apikeyprivate", link.api_key.expose())
            .header("apiclientprivate", link.client_key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
    }

    async fn post(
        &self,
        link: &Link,
        path: &str,
        body: String,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        cloud::send(
            self.request(link, reqwest::Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(timeout)
                .body(body),
        )
        .await
    }

    /// Ask Paywall about a sale by its MerchantUniqueCode (`list`), then by its
    /// PaymentRequestId (`inquiry`) when the list shows it.
    async fn lookup(&self, link: &Link, muc: &str) -> Result<Found, String> {
        let reply = cloud::send(
            self.request(link, reqwest::Method::GET, "/api/payment/list")
                .query(&[("MerchantUniqueCode", muc)])
                .timeout(CALL_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
        if reply.status == 404 {
            return Ok(Found::Absent);
        }
        if reply.status >= 300 {
            return Err(format!("list answered HTTP {}", reply.status));
        }
        let env = Envelope::parse(&reply.body)?;
        if !env.ok() {
            return Err(format!("list refused: {}", env.describe()));
        }
        let Some(p) = env.payments().into_iter().find(|p| {
            p.merchantuniquecode
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(muc))
        }) else {
            return Ok(Found::Absent);
        };
        // The list row is enough when final; inquiry confirms by PaymentRequestId.
        let (view, raw) = match &p.paymentrequestid {
            Some(id) => match self.inquiry(link, id).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(error = %e, "inquiry failed; using the list row");
                    (p.clone(), reply.body.clone())
                }
            },
            None => (p.clone(), reply.body.clone()),
        };
        Ok(self.judge(view, raw))
    }

    async fn inquiry(&self, link: &Link, id: &str) -> Result<(PaymentView, Value), String> {
        let reply = cloud::send(
            self.request(
                link,
                reqwest::Method::GET,
                &format!("/api/payment/inquiry/{id}"),
            )
            .timeout(CALL_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
        let env = Envelope::parse(&reply.body)?;
        if reply.status >= 300 || !env.ok() {
            return Err(format!(
                "inquiry: HTTP {}: {}",
                reply.status,
                env.describe()
            ));
        }
        env.payment()
            .map(|p| (p, reply.body.clone()))
            .ok_or_else(|| "inquiry answered without a payment".to_string())
    }

    fn judge(&self, p: PaymentView, raw: Value) -> Found {
        let status = Status::from_code(p.paymentstatus.unwrap_or(-1));
        let payment = || PaymentInfo {
            method: Some("card".into()),
            transaction_id: p.paymentrequestid.clone(),
            ..Default::default()
        };
        match status {
            Status::Succeeded => {
                Found::Final(Outcome::succeeded(Some(payment()), Some(raw.clone())), raw)
            }
            Status::Cancelled => Found::Final(
                Outcome::failed(
                    ErrorCode::CancelledByCustomer,
                    "the sale was cancelled",
                    Some(raw.clone()),
                ),
                raw,
            ),
            Status::Failed => Found::Final(
                Outcome::failed(
                    ErrorCode::Declined,
                    "the sale failed on the terminal",
                    Some(raw.clone()),
                ),
                raw,
            ),
            _ => Found::Running(p),
        }
    }

    /// After an unusable answer: ask until Paywall gives a final state, says it never saw
    /// the sale (`Ok(None)`), or the window closes (`Err`).
    async fn recover(
        &self,
        link: &Link,
        muc: &str,
        window: Duration,
    ) -> Result<Option<(Outcome, Value)>, String> {
        let deadline = Instant::now() + window;
        let mut delay = Duration::from_millis(200);
        let mut last: String;
        loop {
            match self.lookup(link, muc).await {
                Ok(Found::Final(o, raw)) => return Ok(Some((o, raw))),
                Ok(Found::Absent) => return Ok(None),
                Ok(Found::Running(p)) => {
                    last = format!(
                        "the sale is still running (PaymentStatus {:?})",
                        p.paymentstatus
                    )
                }
                Err(e) => last = e,
            }
            if Instant::now() + delay > deadline {
                return Err(last);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    /// Map a usable sync sale answer.
    fn sale_outcome(reply: &Reply) -> Option<Outcome> {
        if reply.status >= 500 {
            // A server error says nothing about whether the sale went through.
            return None;
        }
        let env = Envelope::parse(&reply.body).ok()?;
        let raw = reply.body.clone();
        let p = env.payment().unwrap_or_default();
        if reply.status < 300 && env.ok() {
            let payment = PaymentInfo {
                method: Some("card".into()),
                transaction_id: p.paymentrequestid.clone(),
                ..Default::default()
            };
            return Some(Outcome::succeeded(Some(payment), Some(raw)));
        }
        if !env.refused() {
            return None;
        }
        let cm = env.clientmessage.clone().unwrap_or_default();
        let lower = cm.to_ascii_lowercase();
        let code = if reply.status == 401
            || reply.status == 403
            || lower.contains("auth")
            || lower.contains("apikey")
        {
            ErrorCode::Unauthorized
        } else if lower.contains("cancel")
            || Status::from_code(p.paymentstatus.unwrap_or(-1)) == Status::Cancelled
        {
            ErrorCode::CancelledByCustomer
        } else if lower.contains("declin")
            || lower.contains("insufficient")
            || Status::from_code(p.paymentstatus.unwrap_or(-1)) == Status::Failed
        {
            ErrorCode::Declined
        } else if reply.status == 400 || lower.contains("valid") {
            ErrorCode::BadRequest
        } else {
            ErrorCode::DeviceError
        };
        let device_code =
            json!({ "error_code": env.errorcode, "client_message": env.clientmessage });
        Some(
            Outcome::failed(code, format!("Paywall: {}", env.describe()), Some(raw))
                .with_device_code(device_code),
        )
    }

    async fn sale(&self, ctx: &mut OpContext) -> Outcome {
        let link = match self.link() {
            Ok(l) => l,
            Err(o) => return *o,
        };
        let muc = api::merchant_unique_code(&self.agent_id, &ctx.cmd().id);
        let body = match api::sale_request(ctx.cmd(), &self.terminal_guid, muc, &self.currency_ids)
            .and_then(|r| {
                serde_json::to_string(&r).map_err(|e| api::FieldError {
                    field: "products".into(),
                    message: e.to_string(),
                })
            }) {
            Ok(b) => b,
            Err(e) => return Outcome::failed(ErrorCode::BadRequest, e.to_string(), None),
        };
        let muc = muc.to_string();
        // Durable before Paywall can move money (mqtt-api.md: Durability promise 2): after
        // a crash from here on, resume asks about this code instead of selling again.
        if let Err(e) = ctx
            .journal(
                STEP_SENDING,
                json!({ "merchant_unique_code": muc, "terminal_guid": self.terminal_guid, "mode": cloud::mode_name(self.mode) }),
            )
            .await
        {
            return Outcome::failed(ErrorCode::Internal, format!("journal write failed: {e}"), None);
        }
        ctx.progress("WaitTerminal", Some(json!({ "merchant_unique_code": muc })));
        let answer = self
            .post(link, "/api/payment/sync/sale", body, self.op_timeout)
            .await;
        let outcome = match answer {
            Ok(reply) => match Self::sale_outcome(&reply) {
                Some(o) => Ok((o, reply.body)),
                None => Err(format!("HTTP {} without a definite outcome", reply.status)),
            },
            Err(CallError::NotSent(e)) => {
                return Outcome::failed(
                    ErrorCode::DeviceUnavailable,
                    format!(
                        "could not reach Paywall at {}: {e}",
                        cloud::redact_url(&self.base)
                    ),
                    None,
                )
            }
            Err(CallError::MaybeSent(e)) => Err(e),
        };
        match outcome {
            Ok((o, raw)) => self.finish(ctx, o, raw).await,
            Err(why) => {
                tracing::warn!(muc = %muc, error = %why, "sale answer unusable; asking Paywall by MerchantUniqueCode");
                self.settle(ctx, link, &muc, &why).await
            }
        }
    }

    /// Learn the outcome of a sale that may have been processed.
    async fn settle(&self, ctx: &mut OpContext, link: &Link, muc: &str, why: &str) -> Outcome {
        match self.recover(link, muc, self.recovery_window).await {
            Ok(Some((o, raw))) => self.finish(ctx, o, raw).await,
            Ok(None) => Outcome::failed(
                ErrorCode::DeviceUnavailable,
                format!("Paywall gave no usable answer ({why}) and has no sale with MerchantUniqueCode {muc}: nothing was charged"),
                None,
            ),
            Err(e) => Outcome::unknown(
                ErrorCode::Timeout,
                format!("Paywall gave no usable answer ({why}) and asking by MerchantUniqueCode {muc} gave no final state: {e}"),
            ),
        }
    }

    async fn finish(&self, ctx: &mut OpContext, o: Outcome, raw: Value) -> Outcome {
        // Durable with the result (one commit): Paywall keeps the answer by
        // MerchantUniqueCode, so a crash before that commit resumes by asking again.
        if let Err(e) = ctx.note(
            STEP_ANSWERED,
            json!({ "state": o.state.as_str(), "answer": raw }),
        ) {
            // Known but not durable; Paywall keeps it by MerchantUniqueCode for a resume.
            tracing::error!(error = %e, "journal write after the Paywall answer failed");
        }
        o
    }

    fn from_journal(record: &CommandRecord) -> Option<Outcome> {
        let step = record.last_step(STEP_ANSWERED)?;
        let body = step.data.get("answer")?.clone();
        Self::sale_outcome(&Reply {
            status: 200,
            body: body.clone(),
        })
        .or_else(|| {
            // A recovered (list/inquiry) answer: judge it again.
            let env = Envelope::parse(&body).ok()?;
            let p = env.payments().into_iter().next()?;
            let status = Status::from_code(p.paymentstatus.unwrap_or(-1));
            status.is_final().then(|| match status {
                Status::Succeeded => Outcome::succeeded(
                    Some(PaymentInfo {
                        method: Some("card".into()),
                        transaction_id: p.paymentrequestid.clone(),
                        ..Default::default()
                    }),
                    Some(body.clone()),
                ),
                Status::Cancelled => Outcome::failed(
                    ErrorCode::CancelledByCustomer,
                    "the sale was cancelled",
                    Some(body.clone()),
                ),
                _ => Outcome::failed(
                    ErrorCode::Declined,
                    "the sale failed on the terminal",
                    Some(body.clone()),
                ),
            })
        })
    }

    async fn probe(&self) -> Result<Value, String> {
        let link = self.link.as_ref().map_err(Clone::clone)?;
        // An authenticated, harmless call: list by the nil code. Proves address and keys.
        let reply = cloud::send(
            self.request(link, reqwest::Method::GET, "/api/payment/list")
                .query(&[("MerchantUniqueCode", uuid::Uuid::nil().to_string())])
                .timeout(CALL_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
        let env = Envelope::parse(&reply.body)?;
        if reply.status == 401 || reply.status == 403 {
            return Err(format!(
                "Paywall refused the credentials: {}",
                env.describe()
            ));
        }
        if reply.status >= 300 && reply.status != 404 {
            return Err(format!(
                "Paywall answered HTTP {}: {}",
                reply.status,
                env.describe()
            ));
        }
        Ok(json!({
            "mode": cloud::mode_name(self.mode),
            "url": cloud::redact_url(&self.base),
            "terminal_guid": self.terminal_guid,
        }))
    }
}

#[async_trait]
impl Driver for PaywallDriver {
    fn kind(&self) -> &'static str {
        "paywall"
    }

    fn supports(&self, op: Op) -> bool {
        matches!(op, Op::Payment | Op::DeviceInfo)
    }

    fn validate(&self, cmd: &Command) -> Result<(), Rejection> {
        if let Err(e) = &self.link {
            return Err(Rejection::new(ErrorCode::DeviceUnavailable, e.clone()));
        }
        if cmd.op == Op::Payment {
            let muc = api::merchant_unique_code(&self.agent_id, &cmd.id);
            api::sale_request(cmd, &self.terminal_guid, muc, &self.currency_ids)
                .map_err(|e| Rejection::new(ErrorCode::BadRequest, e.to_string()))?;
        }
        Ok(())
    }

    async fn execute(&self, ctx: &mut OpContext) -> Outcome {
        match ctx.cmd().op {
            Op::Payment => self.sale(ctx).await,
            Op::DeviceInfo => match self.probe().await {
                Ok(identity) => Outcome::succeeded(None, Some(identity)),
                Err(e) => Outcome::failed(ErrorCode::DeviceUnavailable, e, None),
            },
            op => Outcome::failed(
                ErrorCode::UnsupportedOp,
                format!("paywall terminals cannot run {}", op.as_str()),
                None,
            ),
        }
    }

    async fn resume(&self, ctx: &mut OpContext) -> Outcome {
        if !ctx.cmd().op.moves_money() {
            return self.execute(ctx).await;
        }
        if let Some(o) = Self::from_journal(&ctx.record) {
            return o;
        }
        if ctx.record.last_step(STEP_SENDING).is_none() {
            // Died before Paywall could have seen it.
            if chrono::Utc::now() > ctx.record.expires_at {
                return expired();
            }
            return self.execute(ctx).await;
        }
        let link = match self.link() {
            Ok(l) => l,
            Err(_) => {
                return Outcome::unknown(
                    ErrorCode::DeviceUnavailable,
                    "agent restarted during the sale and Paywall cannot be asked (terminal unusable now)",
                )
            }
        };
        let muc = self.muc_of(&ctx.record);
        // The sale may still be on the terminal: allow it the customer's time.
        match self.recover(link, &muc, self.recovery_window + self.op_timeout).await {
            Ok(Some((o, raw))) => self.finish(ctx, o, raw).await,
            Ok(None) if chrono::Utc::now() <= ctx.record.expires_at => {
                // Paywall never saw it; the same MerchantUniqueCode makes a retry safe.
                self.execute(ctx).await
            }
            Ok(None) => expired(),
            Err(e) => Outcome::unknown(
                ErrorCode::Timeout,
                format!("agent restarted during the sale; asking Paywall by MerchantUniqueCode {muc} gave no final state: {e}"),
            ),
        }
    }

    async fn query(&self, record: &CommandRecord) -> Option<Outcome> {
        if record.cmd.op != Op::Payment {
            return None;
        }
        let link = self.link.as_ref().ok()?;
        match self.lookup(link, &self.muc_of(record)).await {
            Ok(Found::Final(o, _)) => Some(o),
            _ => None,
        }
    }

    async fn health(&self) -> Health {
        match self.probe().await {
            Ok(identity) => Health {
                state: "connected",
                identity,
                error: None,
            },
            Err(e) => Health {
                state: if self.link.is_err() {
                    "error"
                } else {
                    "disconnected"
                },
                identity: json!({ "mode": cloud::mode_name(self.mode) }),
                error: Some(e),
            },
        }
    }

    fn can_cancel(&self, record: &CommandRecord) -> bool {
        record.cmd.op == Op::Payment && self.link.is_ok()
    }

    /// `sale/rollback` while the device has not received the sale, else `sync/cancel`
    /// (`paywall.md`: Related routes). The running sale then ends with its own answer.
    async fn cancel_running(&self, record: &CommandRecord) -> Result<(), ErrorBody> {
        let link = self
            .link
            .as_ref()
            .map_err(|e| ErrorBody::new(ErrorCode::DeviceUnavailable, e.clone()))?;
        let not = |m: String| ErrorBody::new(ErrorCode::NotCancellable, m);
        if record.last_step(STEP_SENDING).is_none() {
            return Err(not(
                "the sale has not been sent to Paywall yet; try again".into()
            ));
        }
        let muc = self.muc_of(record);
        let p = match self.lookup(link, &muc).await {
            Ok(Found::Running(p)) => p,
            Ok(Found::Final(..)) => {
                return Err(not("the sale already ended on the terminal".into()))
            }
            Ok(Found::Absent) => {
                return Err(not(format!(
                    "Paywall has no sale with MerchantUniqueCode {muc} yet"
                )))
            }
            Err(e) => return Err(not(format!("cannot ask Paywall about the sale: {e}"))),
        };
        let Some(id) = p.paymentrequestid.clone() else {
            return Err(not(
                "Paywall did not give the sale's PaymentRequestId".into()
            ));
        };
        let body = serde_json::to_string(&PaymentRef {
            payment_request_id: id,
        })
        .unwrap_or_default();
        let routes: &[&str] = if Status::from_code(p.paymentstatus.unwrap_or(-1)) == Status::Waiting
        {
            &[
                "/api/payment/sync/sale/rollback",
                "/api/payment/sync/cancel",
            ]
        } else {
            &["/api/payment/sync/cancel"]
        };
        let mut last = String::new();
        for route in routes {
            match self.post(link, route, body.clone(), CALL_TIMEOUT).await {
                Ok(reply) => match Envelope::parse(&reply.body) {
                    Ok(env) if reply.status < 300 && env.ok() => return Ok(()),
                    Ok(env) => last = format!("{route}: {}", env.describe()),
                    Err(e) => last = format!("{route}: {e}"),
                },
                Err(e) => last = format!("{route}: {e}"),
            }
        }
        Err(not(format!("Paywall refused the cancel: {last}")))
    }

    fn mode(&self) -> Option<&'static str> {
        Some(cloud::mode_name(self.mode))
    }
}

fn expired() -> Outcome {
    Outcome {
        state: FinalState::Expired,
        payment: None,
        device: None,
        error: Some(ErrorBody::new(
            ErrorCode::Expired,
            "deadline passed before Paywall was reached",
        )),
    }
}
