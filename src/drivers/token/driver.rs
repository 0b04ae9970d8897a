//! The Token driver proper: [`TokenSettings`] from the configuration, one verified
//! session kept per terminal (probed before reuse, reconnected with the whole handshake
//! and trust-on-first-use certificate pin), the sale (basket validated, its id journalled
//! before it is sent, never resent), asking after a lost result by waiting for it on a
//! new link, device and fiscal info, and the `Driver` trait.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use super::attach::{UsbSide, RESCAN};
use super::basket::{self, DeviceBasket};
use super::outcome::sale_fact;
use super::session::{
    self, handshake, DevResult, DeviceError, Policy, Ready, Session, TransportError,
};
use super::usb;
use crate::api::{Command, ErrorCode, Op, Rejection};
use crate::config::{TokenTerminal, Transport, UsbFilter};
use crate::drivers::{Caps, Driver, Fact, Health, NotSentWhy, OpContext, Refusal};

/// After a type 9 ("not processed"), how long a type 3 may still arrive.
const NOT_PROCESSED_GRACE: Duration = Duration::from_secs(3);

/// Any byte stream a session can run over (USB, or TCP for the simulator).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Link = Session<Ready, Box<dyn Io>>;

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub transport: Transport,
    pub addr: Option<String>,
    pub usb: UsbFilter,
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
            usb: t.usb.clone(),
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
pub(super) enum ConnectError {
    Unavailable(String),
    Refused(DeviceError),
}

impl ConnectError {
    /// Nothing was sent: no link, or the register refused the handshake.
    fn fact(&self) -> Fact {
        match self {
            ConnectError::Unavailable(m) => Fact::not_sent(NotSentWhy::Unreachable, m.clone()),
            ConnectError::Refused(e) => Fact::refused(
                Refusal::DeviceError,
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

/// What this terminal kind runs; anything else is refused at admission.
const CAPS: Caps = Caps { kind: "token", ops: &[Op::Payment, Op::DeviceInfo, Op::FiscalInfo] };

pub struct TokenDriver {
    cfg: TokenSettings,
    agent_id: String,
    /// The verified session, reused across operations (one op at a time per terminal).
    link: Mutex<Option<Link>>,
    /// `transport = "usb"`: the port and the hotplug state.
    pub(super) usb: Option<Arc<UsbSide>>,
    /// Where the register's certificate pin lives (terminal id, encrypted secrets).
    pins: Option<(String, crate::secrets::Secrets)>,
}

/// The secret name of a register's certificate pin.
pub const CERT_PIN: &str = "cert_pin";

/// The basket id sent to the device: derived from the request id (`token.md`: basketID),
/// so the same command always carries the same id.
pub fn basket_id(agent_id: &str, request_id: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("posbridge:{agent_id}:{request_id}").as_bytes(),
    )
    .to_string()
}

impl TokenDriver {
    pub fn new(cfg: TokenSettings, agent_id: impl Into<String>) -> Self {
        let usb = (cfg.transport == Transport::Usb)
            .then(|| UsbSide::new(usb::default_port(cfg.usb.clone()), cfg.usb.clone(), RESCAN));
        TokenDriver { cfg, agent_id: agent_id.into(), link: Mutex::new(None), usb, pins: None }
    }

    /// Pin the register's certificate at its first enrolment (trust on first use), kept
    /// encrypted as secret `cert_pin` of terminal `id`.
    pub fn with_pins(mut self, id: &str, secrets: crate::secrets::Secrets) -> Self {
        self.pins = Some((id.to_string(), secrets));
        self
    }

    /// A USB terminal over the given port (tests: the recording fake).
    pub fn with_usb(cfg: TokenSettings, agent_id: impl Into<String>, side: Arc<UsbSide>) -> Self {
        TokenDriver {
            cfg: TokenSettings { transport: Transport::Usb, ..cfg },
            agent_id: agent_id.into(),
            link: Mutex::new(None),
            usb: Some(side),
            pins: None,
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
        let pinned = match &self.pins {
            Some((id, secrets)) => secrets
                .get(id, CERT_PIN)
                .map_err(|e| {
                    ConnectError::Unavailable(format!("reading the certificate pin: {e}"))
                })?
                .and_then(|s| s.expose_str().map(|p| p.trim().to_string())),
            None => None,
        };
        Ok(Policy {
            strict: self.cfg.strict,
            ca_pem,
            company_name: self.cfg.company_name.clone(),
            pinned,
        })
    }

    fn basket_for(&self, cmd: &Command) -> Result<DeviceBasket, String> {
        basket::validate(
            cmd.extra.get("basket"),
            cmd.amount(),
            cmd.currency().map(|c| c.as_str()),
            self.cfg.quantity_scale,
        )
    }

    /// Open the transport and run the whole handshake.
    async fn connect(&self) -> Result<Link, ConnectError> {
        let policy = self.policy()?;
        let io: Box<dyn Io> = match self.cfg.transport {
            Transport::Usb => self.usb_connect().await?,
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
                tracing::info!(fiscal_no = s.fiscal_no(), "token: register connected and verified");
                if let (Some((id, secrets)), None) = (&self.pins, &policy.pinned) {
                    // First enrolment: from now on only this register is accepted.
                    let pin = session::cert_pin(s.cert());
                    match secrets.set(id, CERT_PIN, pin.as_bytes()).await {
                        Ok(()) => {
                            tracing::info!(pin = %pin, "token: register certificate pinned at first enrolment")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "token: could not store the certificate pin; the register is not pinned yet")
                        }
                    }
                }
                Ok(s)
            }
            Ok(Err(e)) => {
                self.unlink();
                Err(ConnectError::Refused(e))
            }
            Err(e) => {
                self.unlink();
                let hint = match (&e, self.cfg.transport) {
                    (TransportError::Timeout(..), Transport::Usb) => {
                        format!(
                            " — {}",
                            usb::UsbError::new(usb::UsbErrorKind::Timeout, "")
                                .hint()
                                .unwrap_or_default()
                        )
                    }
                    _ => String::new(),
                };
                Err(ConnectError::Unavailable(format!(
                    "handshake with the register failed: {e}{hint}"
                )))
            }
        }
    }

    /// A live, ready session: the cached one if it answers a device-info probe (so a
    /// stale link is found out before a basket is journalled), else a new one.
    async fn ready<'a>(&self, slot: &'a mut Option<Link>) -> Result<&'a mut Link, ConnectError> {
        if self.usb.as_ref().is_some_and(|u| u.lost.swap(false, Ordering::SeqCst)) {
            // Unplugged: no probe over a dead link.
            *slot = None;
        }
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
        slot.as_mut().ok_or_else(|| ConnectError::Unavailable("no session".into()))
    }

    async fn payment(&self, ctx: &mut OpContext) -> Fact {
        let basket = match self.basket_for(ctx.cmd()) {
            Ok(b) => b,
            Err(m) => return Fact::not_sent(NotSentWhy::BadRequest, m),
        };
        let id = basket_id(&self.agent_id, &ctx.cmd().id);
        let mut slot = self.link.lock().await;
        let session = match self.ready(&mut slot).await {
            Ok(s) => s,
            Err(e) => return e.fact(),
        };
        if let Err(m) = basket.check_against(session.fiscal_info()) {
            return Fact::not_sent(NotSentWhy::BadRequest, m);
        }
        let body = basket.with_id(&id).to_string();
        // Durable before the register can move money (mqtt-api.md: Durability promise 2).
        let fiscal_no = session.fiscal_no().to_string();
        if let Err(e) = ctx
            .sending_step(&super::journal::Basket {
                basket_id: id.to_string(),
                fiscal_no: fiscal_no.clone(),
            })
            .await
        {
            return Fact::not_sent(NotSentWhy::Store, format!("journal write failed: {e}"));
        }
        ctx.progress("BasketSent", Some(json!({ "basket_id": id })));
        let lost = match session.send_basket(&body).await {
            Ok(Ok(())) => {
                ctx.progress("WaitCustomer", Some(json!({ "basket_id": id })));
                match session.wait_sale(&id, self.cfg.op_timeout, NOT_PROCESSED_GRACE).await {
                    Ok(Ok(end)) => return sale_fact(&id, end),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                }
            }
            Ok(Err(DeviceError::Error(text))) => {
                // The register answered the basket with a type 60 instead of `1 OK`.
                return Fact::refused(
                    Refusal::DeviceError,
                    format!("the register refused the basket: {text}"),
                    Some(json!({ "kind": "refused", "error": text })),
                )
                .with_device_code(Value::String(text));
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // The basket may have reached the register: this link is no longer trusted.
        *slot = None;
        tracing::warn!(basket_id = %id, why = %lost, "token: sale outcome lost");
        Fact::lost(format!(
            "basket {id} was sent to the register but its sale result was not received ({lost})"
        ))
    }

    /// Wait for a sale result for basket `id` on the current link or a new one, within
    /// `left`. Never resends the basket.
    async fn wait_for_result(&self, ctx: &OpContext, id: &str, left: Duration) -> Fact {
        ctx.progress("Reconnecting", Some(json!({ "basket_id": id })));
        let deadline = tokio::time::Instant::now() + left;
        let mut last = String::from("no time left to wait");
        let mut delay = Duration::from_millis(100);
        let mut slot = self.link.lock().await;
        while tokio::time::Instant::now() < deadline {
            let mut s =
                match slot.take() {
                    Some(s) => s,
                    None => match self.connect().await {
                        Ok(s) => s,
                        Err(e) => {
                            last = e.message();
                            tokio::time::sleep(delay.min(
                                deadline.saturating_duration_since(tokio::time::Instant::now()),
                            ))
                            .await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    },
                };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match s.wait_sale(id, left, NOT_PROCESSED_GRACE).await {
                Ok(Ok(end)) => {
                    *slot = Some(s);
                    return sale_fact(id, end);
                }
                Err(TransportError::Timeout(..)) => {
                    // Connected, nothing about this basket: keep the session for later.
                    *slot = Some(s);
                    last =
                        "the register is connected but sent no sale result for the basket".into();
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
        }
        Fact::lost(format!(
            "no sale result for basket {id} ({last}); check the register's last receipt"
        ))
    }

    async fn with_session<F>(&self, f: F) -> Fact
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
            Err(e) => return e.fact(),
        };
        match f(s).await {
            Ok(Ok(v)) => Fact::approved(None, Some(v)),
            Ok(Err(e)) => Fact::refused(Refusal::DeviceError, e.to_string(), None),
            Err(e) => {
                *slot = None;
                Fact::lost(e.to_string())
            }
        }
    }
}

#[async_trait]
impl Driver for TokenDriver {
    fn caps(&self) -> &'static Caps {
        &CAPS
    }

    fn validate(&self, cmd: &Command) -> Result<(), Rejection> {
        if cmd.op() != Op::Payment {
            return Ok(());
        }
        // An amount in another currency is one the register cannot take (token.md: TRY).
        if let Some(c) = cmd.currency().filter(|c| c.as_str() != "TRY") {
            return Err(Rejection::new(
                ErrorCode::InvalidAmount,
                format!("field currency: the Token register takes TRY (kuruş) only, not {c}"),
            )
            .for_command(cmd));
        }
        self.basket_for(cmd)
            .map(|_| ())
            .map_err(|m| Rejection::new(ErrorCode::BadRequest, m).for_command(cmd))
    }

    async fn execute(&self, ctx: &mut OpContext) -> Fact {
        match ctx.cmd().op() {
            Op::Payment => self.payment(ctx).await,
            Op::DeviceInfo => {
                let policy = match self.policy() {
                    Ok(p) => p,
                    Err(e) => return e.fact(),
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
            op => Fact::unsupported(self.kind(), op),
        }
    }

    /// No way to ask the register about a basket (token.md): wait for its sale result.
    async fn ask(&self, ctx: &mut OpContext, left: Duration) -> Fact {
        let id = ctx
            .record
            .last::<super::journal::Basket>()
            .map(|b| b.basket_id)
            .unwrap_or_else(|| basket_id(&self.agent_id, &ctx.cmd().id));
        self.wait_for_result(ctx, &id, left).await
    }

    fn recovery_window(&self) -> Duration {
        self.cfg.recovery_window
    }

    async fn changed(&self) {
        match &self.usb {
            Some(side) => {
                side.start_watching();
                side.changed.notified().await
            }
            None => std::future::pending().await,
        }
    }

    async fn health(&self) -> Health {
        if let Some(side) = &self.usb {
            side.start_watching();
        }
        let mut slot = self.link.lock().await;
        match self.ready(&mut slot).await {
            Ok(s) => Health {
                state: crate::api::TerminalState::Connected,
                identity: s.identity(),
                error: None,
            },
            Err(ConnectError::Refused(e)) => Health {
                state: crate::api::TerminalState::Error,
                identity: Value::Null,
                error: Some(format!("handshake refused: {e}")),
            },
            Err(e) => Health {
                state: crate::api::TerminalState::Disconnected,
                identity: Value::Null,
                error: Some(e.message()),
            },
        }
    }
}
