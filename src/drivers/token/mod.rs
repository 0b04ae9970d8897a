//! Driver for the Token fiscal register over the Integration Hub protocol (`token.md`).
//!
//! Layers: `crypto` (body sealing) → `codec` (frames, triplets) → `session` (typed
//! handshake state machine, generic over the byte stream) → this driver.
//!
//! Money safety: the basket id is journalled durably before the basket is sent, the
//! device's answer right after it. The protocol has no way to ask "what happened to
//! basket X" and no promise that a repeated basket id is ignored, so a basket that may
//! have reached the device is never sent again: after a lost link or a crash the driver
//! reconnects and waits for a sale result; without one the outcome is `unknown`.

pub mod basket;
pub mod cert;
pub mod codec;
pub mod crypto;
pub mod session;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use self::basket::DeviceBasket;
use self::session::{
    handshake, DevResult, DeviceError, Policy, Ready, SaleEnd, SaleResult, Session, TransportError,
};
use super::{Driver, Health, OpContext, Outcome};
use crate::api::{Command, ErrorBody, ErrorCode, FinalState, Op, PaymentInfo, Rejection};
use crate::config::{TokenTerminal, Transport};

/// Journal steps (durable before/after the device step they name).
const STEP_BASKET: &str = "token_basket";
const STEP_RESULT: &str = "token_result";

/// After a type 9 ("not processed"), how long a type 3 may still arrive.
const NOT_PROCESSED_GRACE: Duration = Duration::from_secs(3);

pub const USB_NOT_YET: &str = "USB transport not in this build yet (use transport = \"tcp\" with the simulator; USB/AOA is a later step)";

/// Any byte stream a session can run over (TCP now, USB later).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Link = Session<Ready, Box<dyn Io>>;

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub transport: Transport,
    pub addr: Option<String>,
    pub strict: bool,
    pub ca_file: Option<std::path::PathBuf>,
    pub company_name: String,
    pub quantity_scale: u32,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    pub recovery_window: Duration,
}

impl From<&TokenTerminal> for TokenSettings {
    fn from(t: &TokenTerminal) -> Self {
        TokenSettings {
            transport: t.transport,
            addr: t.addr.clone(),
            strict: t.strict,
            ca_file: t.ca_file.clone(),
            company_name: t.company_name.clone(),
            quantity_scale: t.quantity_scale,
            connect_timeout: t.connect_timeout,
            op_timeout: t.op_timeout,
            recovery_window: t.recovery_window,
        }
    }
}

/// Why no ready session could be had. Nothing was sent to the device in either case.
enum ConnectError {
    Unavailable(String),
    Refused(DeviceError),
}

impl ConnectError {
    fn outcome(&self) -> Outcome {
        match self {
            ConnectError::Unavailable(m) => {
                Outcome::failed(ErrorCode::DeviceUnavailable, m.clone(), None)
            }
            ConnectError::Refused(e) => Outcome::failed(
                ErrorCode::DeviceError,
                format!("the register failed the handshake: {e}"),
                None,
            ),
        }
    }
    fn message(&self) -> String {
        match self {
            ConnectError::Unavailable(m) => m.clone(),
            ConnectError::Refused(e) => format!("handshake refused: {e}"),
        }
    }
}

pub struct TokenDriver {
    cfg: TokenSettings,
    agent_id: String,
    /// The verified session, reused across operations (one op at a time per terminal).
    link: Mutex<Option<Link>>,
}

/// The basket id sent to the device: derived from the request id (`token.md`: basketID),
/// so the same command always carries the same id.
pub fn basket_id(agent_id: &str, request_id: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("posbridge:{agent_id}:{request_id}").as_bytes(),
    )
    .to_string()
}

fn rejected(message: String) -> Outcome {
    Outcome {
        state: FinalState::Rejected,
        payment: None,
        device: None,
        error: Some(ErrorBody::new(ErrorCode::BadRequest, message)),
    }
}

impl TokenDriver {
    pub fn new(cfg: TokenSettings, agent_id: impl Into<String>) -> Self {
        TokenDriver {
            cfg,
            agent_id: agent_id.into(),
            link: Mutex::new(None),
        }
    }

    fn policy(&self) -> Result<Policy, ConnectError> {
        let ca_pem = match (&self.cfg.ca_file, self.cfg.strict) {
            (Some(p), true) => Some(std::fs::read(p).map_err(|e| {
                ConnectError::Unavailable(format!(
                    "strict mode: cannot read ca_file {}: {e}",
                    p.display()
                ))
            })?),
            _ => None,
        };
        Ok(Policy {
            strict: self.cfg.strict,
            ca_pem,
            company_name: self.cfg.company_name.clone(),
        })
    }

    fn basket_for(&self, cmd: &Command) -> Result<DeviceBasket, String> {
        basket::validate(
            cmd.extra.get("basket"),
            cmd.amount,
            cmd.currency.as_deref(),
            self.cfg.quantity_scale,
        )
    }

    /// Open the transport and run the whole handshake.
    async fn connect(&self) -> Result<Link, ConnectError> {
        let policy = self.policy()?;
        let io: Box<dyn Io> = match self.cfg.transport {
            Transport::Usb => return Err(ConnectError::Unavailable(USB_NOT_YET.into())),
            Transport::Tcp => {
                let addr = self.cfg.addr.clone().unwrap_or_default();
                let s = tokio::time::timeout(
                    self.cfg.connect_timeout,
                    tokio::net::TcpStream::connect(&addr),
                )
                .await
                .map_err(|_| ConnectError::Unavailable(format!("connecting to {addr} timed out")))?
                .map_err(|e| {
                    ConnectError::Unavailable(format!(
                        "cannot connect to the register at {addr}: {e}"
                    ))
                })?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        };
        match handshake(io, self.cfg.connect_timeout, &policy).await {
            Ok(Ok(s)) => {
                tracing::info!(
                    fiscal_no = s.fiscal_no(),
                    "token: register connected and verified"
                );
                Ok(s)
            }
            Ok(Err(e)) => Err(ConnectError::Refused(e)),
            Err(e) => Err(ConnectError::Unavailable(format!(
                "handshake with the register failed: {e}"
            ))),
        }
    }

    /// A live, ready session: the cached one if it answers a device-info probe (so a
    /// stale link is found out before a basket is journalled), else a new one.
    async fn ready<'a>(&self, slot: &'a mut Option<Link>) -> Result<&'a mut Link, ConnectError> {
        if let Some(s) = slot.as_mut() {
            let policy = self.policy()?;
            match s.device_info(&policy).await {
                Ok(Ok(_)) => {}
                other => {
                    tracing::info!(?other, "token: cached session is gone; reconnecting");
                    *slot = None;
                }
            }
        }
        if slot.is_none() {
            *slot = Some(self.connect().await?);
        }
        slot.as_mut()
            .ok_or_else(|| ConnectError::Unavailable("no session".into()))
    }

    async fn payment(&self, ctx: &mut OpContext) -> Outcome {
        let basket = match self.basket_for(ctx.cmd()) {
            Ok(b) => b,
            Err(m) => return rejected(m),
        };
        let id = basket_id(&self.agent_id, &ctx.cmd().id);
        let mut slot = self.link.lock().await;
        let session = match self.ready(&mut slot).await {
            Ok(s) => s,
            Err(e) => return e.outcome(),
        };
        if let Err(m) = basket.check_against(session.fiscal_info()) {
            return rejected(m);
        }
        let body = basket.with_id(&id).to_string();
        // Durable before the register can move money (mqtt-api.md: Durability promise 2).
        let fiscal_no = session.fiscal_no().to_string();
        if let Err(e) = ctx
            .journal(
                STEP_BASKET,
                json!({ "basket_id": id, "fiscal_no": fiscal_no }),
            )
            .await
        {
            return Outcome::failed(
                ErrorCode::Internal,
                format!("journal write failed: {e}"),
                None,
            );
        }
        ctx.progress("BasketSent", Some(json!({ "basket_id": id })));
        let lost = match session.send_basket(&body).await {
            Ok(Ok(())) => {
                ctx.progress("WaitCustomer", Some(json!({ "basket_id": id })));
                match session
                    .wait_sale(&id, self.cfg.op_timeout, NOT_PROCESSED_GRACE)
                    .await
                {
                    Ok(Ok(end)) => {
                        drop(slot);
                        return self.finish(ctx, end_record(&end)).await;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                }
            }
            Ok(Err(DeviceError::Error(text))) => {
                // The register answered the basket with a type 60 instead of `1 OK`.
                drop(slot);
                let rec = json!({ "kind": "refused", "error": text });
                return self.finish(ctx, rec).await;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // The basket may have reached the register: this link is no longer trusted.
        *slot = None;
        drop(slot);
        self.recover(ctx, &id, &lost).await
    }

    /// The basket may have reached the register but its answer is lost: reconnect and
    /// wait for a sale result within the recovery window. Never resend the basket.
    async fn recover(&self, ctx: &mut OpContext, id: &str, why: &str) -> Outcome {
        tracing::warn!(
            basket_id = id,
            why,
            "token: sale outcome lost; reconnecting to wait for it"
        );
        ctx.progress("Reconnecting", Some(json!({ "basket_id": id })));
        let deadline = tokio::time::Instant::now() + self.cfg.recovery_window;
        let mut last = why.to_string();
        let mut delay = Duration::from_millis(100);
        while tokio::time::Instant::now() < deadline {
            let mut s = match self.connect().await {
                Ok(s) => s,
                Err(e) => {
                    last = e.message();
                    tokio::time::sleep(
                        delay.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                    )
                    .await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let end: DevResult<SaleEnd> = s.wait_sale(id, left, NOT_PROCESSED_GRACE).await;
            match end {
                Ok(Ok(end)) => {
                    *self.link.lock().await = Some(s);
                    return self.finish(ctx, end_record(&end)).await;
                }
                Err(TransportError::Timeout(..)) => {
                    // Connected, nothing about this basket: keep the session for later.
                    *self.link.lock().await = Some(s);
                    last = "the register reconnected but sent no sale result for the basket".into();
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
        }
        Outcome::unknown(
            ErrorCode::Timeout,
            format!(
                "basket {id} was sent to the register but its sale result was not received ({last}); check the register's last receipt"
            ),
        )
    }

    /// Journal the device's answer (durable), then map it.
    async fn finish(&self, ctx: &mut OpContext, rec: Value) -> Outcome {
        if let Err(e) = ctx.journal(STEP_RESULT, rec.clone()).await {
            tracing::error!(error = %e, "journal write after the sale result failed");
        }
        outcome_of(&rec)
    }

    async fn with_session<F>(&self, f: F) -> Outcome
    where
        F: for<'s> FnOnce(
            &'s mut Link,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = DevResult<Value>> + Send + 's>,
        >,
    {
        let mut slot = self.link.lock().await;
        let s = match self.ready(&mut slot).await {
            Ok(s) => s,
            Err(e) => return e.outcome(),
        };
        match f(s).await {
            Ok(Ok(v)) => Outcome::succeeded(None, Some(v)),
            Ok(Err(e)) => Outcome::failed(ErrorCode::DeviceError, e.to_string(), None),
            Err(e) => {
                *slot = None;
                Outcome::failed(ErrorCode::DeviceUnavailable, e.to_string(), None)
            }
        }
    }
}

/// The journal record of how a sale ended.
fn end_record(end: &SaleEnd) -> Value {
    match end {
        SaleEnd::Result(r) => json!({ "kind": "sale", "result": r.raw }),
        SaleEnd::NotProcessed(text) => json!({ "kind": "not_processed", "status": text }),
    }
}

/// A journalled answer → the command's outcome.
fn outcome_of(rec: &Value) -> Outcome {
    match rec["kind"].as_str() {
        Some("sale") => {
            let r = SaleResult {
                raw: rec["result"].clone(),
            };
            if r.succeeded() {
                return Outcome::succeeded(Some(payment_info(&r.raw)), Some(r.raw));
            }
            let code = if r.message().eq_ignore_ascii_case("CANCELLED") {
                ErrorCode::CancelledByCustomer
            } else {
                ErrorCode::DeviceError
            };
            let msg = format!("the register reports the sale failed: {}", r.message());
            let status = r.raw["status"].clone();
            Outcome::failed(code, msg, Some(r.raw)).with_device_code(status)
        }
        Some("refused") => {
            let text = rec["error"].as_str().unwrap_or("").to_string();
            Outcome::failed(
                ErrorCode::DeviceError,
                format!("the register refused the basket: {text}"),
                Some(rec.clone()),
            )
            .with_device_code(Value::String(text))
        }
        Some("not_processed") => Outcome::failed(
            ErrorCode::DeviceError,
            "the register did not process the basket (type 9); nothing was sold",
            Some(rec.clone()),
        )
        .with_device_code(json!(9)),
        _ => Outcome::unknown(
            ErrorCode::Internal,
            format!("unreadable journal record {rec}"),
        ),
    }
}

fn payment_info(raw: &Value) -> PaymentInfo {
    let types: Vec<i64> = raw["paymentItems"]
        .as_array()
        .map(|p| p.iter().filter_map(|x| x["type"].as_i64()).collect())
        .unwrap_or_default();
    let method = match types.as_slice() {
        [] => None,
        t if t.iter().all(|x| *x == 1) => Some("cash"),
        t if t.iter().all(|x| *x == 3) => Some("card"),
        _ => Some("mixed"),
    };
    PaymentInfo {
        method: method.map(str::to_string),
        transaction_id: raw["UUID"].as_str().map(str::to_string),
        card_mask: None,
        auth_code: None,
        receipt: Some(json!({
            "receipt_no": raw["receiptNo"], "z_no": raw["zNo"], "uuid": raw["UUID"],
            "invoice_id": raw["invoiceID"], "basket_id": raw["basketID"],
            "document_type": raw["documentType"],
        })),
    }
}

#[async_trait]
impl Driver for TokenDriver {
    fn kind(&self) -> &'static str {
        "token"
    }

    fn supports(&self, op: Op) -> bool {
        matches!(op, Op::Payment | Op::DeviceInfo | Op::FiscalInfo)
    }

    fn validate(&self, cmd: &Command) -> Result<(), Rejection> {
        if cmd.op != Op::Payment {
            return Ok(());
        }
        self.basket_for(cmd).map(|_| ()).map_err(|m| {
            let code = if m.starts_with("field currency") {
                ErrorCode::InvalidAmount
            } else {
                ErrorCode::BadRequest
            };
            Rejection::new(code, m).for_command(cmd)
        })
    }

    async fn execute(&self, ctx: &mut OpContext) -> Outcome {
        match ctx.cmd().op {
            Op::Payment => self.payment(ctx).await,
            Op::DeviceInfo => {
                let policy = match self.policy() {
                    Ok(p) => p,
                    Err(e) => return e.outcome(),
                };
                self.with_session(move |s| {
                    Box::pin(async move {
                        let fiscal = match s.device_info(&policy).await? {
                            Ok(f) => f,
                            Err(e) => return Ok(Err(e)),
                        };
                        let mut v = s.identity();
                        v["fiscal_no"] = Value::String(fiscal);
                        Ok(Ok(v))
                    })
                })
                .await
            }
            Op::FiscalInfo => {
                self.with_session(|s| {
                    Box::pin(async move { Ok(s.refresh_fiscal_info().await?.map(|i| i.0.clone())) })
                })
                .await
            }
            op => Outcome::failed(
                ErrorCode::UnsupportedOp,
                format!("token terminal cannot run {}", op.as_str()),
                None,
            ),
        }
    }

    async fn resume(&self, ctx: &mut OpContext) -> Outcome {
        if ctx.cmd().op != Op::Payment {
            return self.execute(ctx).await;
        }
        if let Some(done) = ctx.record.last_step(STEP_RESULT) {
            return outcome_of(&done.data);
        }
        let Some(sent) = ctx.record.last_step(STEP_BASKET).map(|s| s.data.clone()) else {
            // Died before the basket could have been sent: run it now if still in time.
            if chrono::Utc::now() > ctx.record.expires_at {
                return Outcome {
                    state: FinalState::Expired,
                    ..Outcome::failed(
                        ErrorCode::Expired,
                        "deadline passed before the register was reached",
                        None,
                    )
                };
            }
            return self.execute(ctx).await;
        };
        let id = sent["basket_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| basket_id(&self.agent_id, &ctx.cmd().id));
        self.recover(
            ctx,
            &id,
            "the agent restarted while the basket was in flight",
        )
        .await
    }

    async fn health(&self) -> Health {
        if self.cfg.transport == Transport::Usb {
            return Health {
                state: "disconnected",
                identity: Value::Null,
                error: Some(USB_NOT_YET.into()),
            };
        }
        let mut slot = self.link.lock().await;
        match self.ready(&mut slot).await {
            Ok(s) => Health {
                state: "connected",
                identity: s.identity(),
                error: None,
            },
            Err(ConnectError::Refused(e)) => Health {
                state: "error",
                identity: Value::Null,
                error: Some(format!("handshake refused: {e}")),
            },
            Err(e) => Health {
                state: "disconnected",
                identity: Value::Null,
                error: Some(e.message()),
            },
        }
    }
}
