//! Driver for the Token fiscal register over the Integration Hub protocol (`token.md`).
//!
//! Layers: `crypto` (body sealing) → `codec` (frames, triplets) → `session` (typed
//! handshake state machine, generic over the byte stream) → this driver.
//!
//! Money safety: the basket id is journalled durably before the basket is sent. The
//! protocol has no way to ask "what happened to basket X" and no promise that a repeated
//! basket id is ignored, so a basket that may have reached the device is never sent
//! again: after a lost link, an unreadable result or a crash, asking means reconnecting
//! and waiting for a sale result for that basket; without one the engine says `unknown`
//! (the register may have printed the receipt).

pub mod basket;
pub mod cert;
pub mod codec;
pub mod crypto;
pub mod session;
pub mod usb;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, Notify};

use self::basket::DeviceBasket;
use self::session::{
    handshake, DevResult, DeviceError, Policy, Ready, SaleEnd, Session, TransportError,
};
use self::usb::hotplug::{Action, Event, Presence};
use self::usb::{DevId, UsbPort};
use super::{Driver, Fact, Health, NotSentWhy, OpContext, Refusal};
use crate::api::{Command, ErrorCode, Op, PaymentInfo, Rejection};
use crate::config::{TokenTerminal, Transport, UsbFilter};

/// Journalled durably right before the basket is sent.
const STEP_BASKET: &str = "token_basket";

/// After a type 9 ("not processed"), how long a type 3 may still arrive.
const NOT_PROCESSED_GRACE: Duration = Duration::from_secs(3);

/// How often the bus is rescanned for the register (the hotplug fallback where udev
/// events do not reach the process).
const RESCAN: Duration = Duration::from_secs(2);

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
enum ConnectError {
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

pub struct TokenDriver {
    cfg: TokenSettings,
    agent_id: String,
    /// The verified session, reused across operations (one op at a time per terminal).
    link: Mutex<Option<Link>>,
    /// `transport = "usb"`: the port and the hotplug state.
    usb: Option<Arc<UsbSide>>,
    /// Where the register's certificate pin lives (terminal id, encrypted secrets).
    pins: Option<(String, crate::secrets::Secrets)>,
}

/// The secret name of a register's certificate pin.
pub const CERT_PIN: &str = "cert_pin";

/// The USB side of a terminal: the port, which device the link is on, and what the
/// hotplug watcher saw.
pub struct UsbSide {
    port: Arc<dyn UsbPort>,
    presence: std::sync::Mutex<Presence>,
    /// Woken on a relevant arrival or the loss of the linked device.
    changed: Notify,
    /// The linked device left the bus: the cached session is dead.
    lost: AtomicBool,
    watching: AtomicBool,
    rescan: Duration,
}

impl UsbSide {
    pub fn new(port: Arc<dyn UsbPort>, filter: UsbFilter, rescan: Duration) -> Arc<UsbSide> {
        Arc::new(UsbSide {
            port,
            presence: std::sync::Mutex::new(Presence::new(filter)),
            changed: Notify::new(),
            lost: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            rescan,
        })
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, Presence> {
        self.presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_linked(&self, id: Option<DevId>) {
        self.presence().set_linked(id);
    }

    /// Feed one bus event; wakes the engine when the terminal's state may have changed.
    pub fn apply(&self, ev: Event) {
        let actions = self.presence().on(ev);
        for a in actions {
            match a {
                Action::Connect => tracing::info!("token usb: register arrived"),
                Action::Lost(id) => {
                    tracing::warn!(?id, "token usb: register unplugged");
                    self.lost.store(true, Ordering::SeqCst);
                }
            }
            self.changed.notify_one();
        }
    }

    /// Start the hotplug watcher once (needs a runtime; ends with the driver).
    fn start_watching(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(watch_bus(
            Arc::downgrade(self),
            self.port.watch(),
            self.rescan,
        ));
    }
}

/// OS hotplug events when they exist, plus a periodic rescan (containers and machines
/// without udev netlink events only ever get the rescan).
async fn watch_bus(side: Weak<UsbSide>, mut events: Option<usb::port::Events>, every: Duration) {
    use futures_util::StreamExt;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let ev = tokio::select! {
            Some(ev) = async { match events.as_mut() { Some(e) => e.next().await, None => std::future::pending().await } } => ev,
            _ = tick.tick() => {
                let Some(port) = side.upgrade().map(|s| s.port.clone()) else { return };
                match tokio::task::spawn_blocking(move || port.list()).await {
                    Ok(Ok(devs)) => Event::Scan(devs),
                    Ok(Err(e)) => {
                        if !warned {
                            tracing::warn!(error = %e, "token usb: cannot list USB devices; will keep trying");
                            warned = true;
                        }
                        continue;
                    }
                    Err(_) => continue,
                }
            }
        };
        let Some(s) = side.upgrade() else { return };
        s.apply(ev);
    }
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

impl TokenDriver {
    pub fn new(cfg: TokenSettings, agent_id: impl Into<String>) -> Self {
        let usb = (cfg.transport == Transport::Usb)
            .then(|| UsbSide::new(usb::default_port(cfg.usb.clone()), cfg.usb.clone(), RESCAN));
        TokenDriver {
            cfg,
            agent_id: agent_id.into(),
            link: Mutex::new(None),
            usb,
            pins: None,
        }
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
            cfg: TokenSettings {
                transport: Transport::Usb,
                ..cfg
            },
            agent_id: agent_id.into(),
            link: Mutex::new(None),
            usb: Some(side),
            pins: None,
        }
    }

    /// Open the USB accessory (blocking work on a blocking thread).
    async fn usb_connect(&self) -> Result<Box<dyn Io>, ConnectError> {
        let side = self
            .usb
            .clone()
            .ok_or_else(|| ConnectError::Unavailable("no USB port".into()))?;
        side.start_watching();
        let port = side.port.clone();
        let s = tokio::task::spawn_blocking(move || port.connect())
            .await
            .map_err(|e| ConnectError::Unavailable(format!("USB connect task failed: {e}")))?
            .map_err(|e| ConnectError::Unavailable(format!("USB: {e}")))?;
        side.lost.store(false, Ordering::SeqCst);
        side.set_linked(Some(s.device().id()));
        Ok(Box::new(s))
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
            cmd.amount,
            cmd.currency.as_deref(),
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
                tracing::info!(
                    fiscal_no = s.fiscal_no(),
                    "token: register connected and verified"
                );
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
        if self
            .usb
            .as_ref()
            .is_some_and(|u| u.lost.swap(false, Ordering::SeqCst))
        {
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
        slot.as_mut()
            .ok_or_else(|| ConnectError::Unavailable("no session".into()))
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
            .sending(
                STEP_BASKET,
                json!({ "basket_id": id, "fiscal_no": fiscal_no }),
            )
            .await
        {
            return Fact::not_sent(NotSentWhy::Store, format!("journal write failed: {e}"));
        }
        ctx.progress("BasketSent", Some(json!({ "basket_id": id })));
        let lost = match session.send_basket(&body).await {
            Ok(Ok(())) => {
                ctx.progress("WaitCustomer", Some(json!({ "basket_id": id })));
                match session
                    .wait_sale(&id, self.cfg.op_timeout, NOT_PROCESSED_GRACE)
                    .await
                {
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

impl TokenDriver {
    /// The link is down (the hotplug state machine may connect on the next arrival).
    fn unlink(&self) {
        if let Some(u) = &self.usb {
            u.set_linked(None);
        }
    }
}

/// How a sale ended → the fact it states, checked against the basket in flight: a type 3
/// must carry this basket's id, or be the documented failure shape
/// `{"basketID":"","message":…,"status":-1}` (token.md: failures may not echo the id).
fn sale_fact(id: &str, end: SaleEnd) -> Fact {
    match end {
        SaleEnd::NotProcessed(text) => Fact::refused(
            Refusal::DeviceError,
            "the register did not process the basket (type 9); nothing was sold",
            Some(json!({ "kind": "not_processed", "status": text })),
        )
        .with_device_code(json!(9)),
        SaleEnd::Garbled(text) => Fact::unreadable(
            format!("the sale result for basket {id} could not be read"),
            json!({ "kind": "sale", "unparsed": text }),
        ),
        SaleEnd::Result(r) => {
            let status = r.status();
            let ours = r.basket_id() == id;
            let documented_failure = r.basket_id().is_empty() && status == Some(-1);
            if !ours && !documented_failure {
                return Fact::unreadable(
                    format!(
                        "a sale result with basketID {:?} and status {:?} cannot be matched to basket {id}",
                        r.basket_id(),
                        status
                    ),
                    r.raw,
                );
            }
            match status {
                Some(0) => Fact::approved(Some(payment_info(&r.raw)), Some(r.raw)),
                Some(code) => {
                    let refusal = if r.message().eq_ignore_ascii_case("CANCELLED") {
                        Refusal::CancelledByCustomer
                    } else {
                        Refusal::DeviceError
                    };
                    let msg = format!("the register reports the sale failed: {}", r.message());
                    Fact::refused(refusal, msg, Some(r.raw)).with_device_code(json!(code))
                }
                None => Fact::unreadable(
                    format!("the sale result for basket {id} has no status"),
                    r.raw,
                ),
            }
        }
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

    async fn execute(&self, ctx: &mut OpContext) -> Fact {
        match ctx.cmd().op {
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
            op => Fact::not_sent(
                NotSentWhy::Unsupported,
                format!("token terminal cannot run {}", op.as_str()),
            ),
        }
    }

    /// No way to ask the register about a basket (token.md): wait for its sale result.
    async fn ask(&self, ctx: &mut OpContext, left: Duration) -> Fact {
        let id = ctx
            .record
            .last_step(STEP_BASKET)
            .and_then(|s| s.data["basket_id"].as_str().map(str::to_string))
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
