//! The Integration Hub session as a typed state machine (`token.md`: Handshake and keys).
//!
//! ```text
//! Session<Unverified> --hello--> Session<Verified> --switch_key--> Session<Keyed>
//!   --device_info--> Session<Identified> --fiscal_info--> Session<Ready>
//! ```
//! Only `Session<Ready>` can send a basket, so "no sale before the device is verified and
//! its fiscal info is loaded" (the seed) is a compile-time fact. Every step answers
//! `Result<Result<_, DeviceError>, TransportError>` (tokio-modbus style): the outer error
//! is "the link broke" (the request may or may not have reached the device), the inner
//! one "the device said no". The session is generic over the byte stream, so the same
//! code runs over TCP (simulator, tests) and, later, USB.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::cert::{self, CertError, DeviceCert, CHALLENGE};
use super::codec::{ty, Inbound, Message, TokenCodec};
use super::crypto::Key;

/// The host library version we announce (`token.md`: the vendor log, v2.5.0.1).
pub const HOST_VERSION: &str = "2.5.0.1";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("link I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the device closed the link")]
    Closed,
    #[error("no answer from the device within {0:?} while waiting for {1}")]
    Timeout(Duration, &'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A type 60 message.
    #[error("device error: {0}")]
    Error(String),
    #[error("device identity rejected: {0}")]
    Certificate(#[from] CertError),
    #[error(
        "certificate serialNumber {cert:?} differs from the reported fiscal number {fiscal:?}"
    )]
    SerialMismatch { cert: Option<String>, fiscal: String },
    /// Type 9: the basket was not processed (the vendor's template: "Sepet işlenemedi").
    #[error("basket not processed by the register (type 9): {0}")]
    NotProcessed(String),
    #[error("the device closed the session (type 7)")]
    ClosedByDevice,
    #[error("unexpected answer from the device: {0}")]
    Unexpected(String),
}

pub type DevResult<T> = Result<Result<T, DeviceError>, TransportError>;

/// What strict mode checks besides the signature (`token.md`: Security).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Verify the chain against `ca_pem` and require serialNumber == fiscal number.
    pub strict: bool,
    pub ca_pem: Option<Vec<u8>>,
    pub company_name: String,
    /// SHA-256 (hex) of the register's certificate recorded at its first enrolment: a
    /// register presenting another one is refused (trust on first use).
    pub pinned: Option<String>,
}

/// The pin of a certificate: SHA-256 of its DER, hex.
pub fn cert_pin(cert: &DeviceCert) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(cert.der.first().map(Vec::as_slice).unwrap_or(&[])))
}

/// Fiscal info (type 2): kept as JSON (lenient: real devices add fields such as
/// `status`), with the few values the driver checks baskets against.
#[derive(Debug, Clone, PartialEq)]
pub struct FiscalInfo(pub Value);

impl FiscalInfo {
    pub fn section_numbers(&self) -> Vec<i64> {
        self.0["sections"]
            .as_array()
            .map(|s| s.iter().filter_map(|x| x["sectionNo"].as_i64()).collect())
            .unwrap_or_default()
    }

    /// `receiptLimit` in kuruş; `null`/0 means none.
    pub fn receipt_limit(&self) -> Option<i64> {
        self.0["receiptLimit"].as_i64().filter(|l| *l > 0)
    }
}

/// A type 3 sale result.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleResult {
    pub raw: Value,
}

impl SaleResult {
    pub fn basket_id(&self) -> &str {
        self.raw["basketID"].as_str().unwrap_or("")
    }
    pub fn status(&self) -> Option<i64> {
        self.raw["status"].as_i64()
    }
    pub fn message(&self) -> &str {
        self.raw["message"].as_str().unwrap_or("")
    }
    pub fn succeeded(&self) -> bool {
        self.status() == Some(0)
    }
}

// ------------------------------------------------------------------ states

pub struct Unverified;
pub struct Verified {
    cert: DeviceCert,
}
pub struct Keyed {
    cert: DeviceCert,
}
pub struct Identified {
    cert: DeviceCert,
    fiscal_no: String,
}
pub struct Ready {
    cert: DeviceCert,
    fiscal_no: String,
    fiscal_info: FiscalInfo,
}

/// The link under a session: framing, timeouts, and what arrived out of turn.
struct Link<T> {
    io: Framed<T, TokenCodec>,
    timeout: Duration,
    /// Type 3/9/60 messages that arrived while waiting for something else.
    unsolicited: VecDeque<Message>,
    faults: u64,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Link<T> {
    async fn send(&mut self, m: Message) -> Result<(), TransportError> {
        tokio::time::timeout(self.timeout, self.io.send(m))
            .await
            .map_err(|_| TransportError::Timeout(self.timeout, "the write to complete"))??;
        Ok(())
    }

    /// The next whole message before `deadline`; codec faults are logged and skipped
    /// (the stream stays usable; a lost answer shows up as a timeout).
    async fn recv_until(
        &mut self, deadline: Instant, what: &'static str,
    ) -> Result<Message, TransportError> {
        loop {
            match tokio::time::timeout_at(deadline, self.io.next()).await {
                Err(_) => return Err(TransportError::Timeout(self.timeout, what)),
                Ok(None) => return Err(TransportError::Closed),
                Ok(Some(Err(e))) => return Err(TransportError::Io(e)),
                Ok(Some(Ok(Inbound::Fault(f)))) => {
                    self.faults += 1;
                    tracing::warn!(fault = %f, "token link: frame dropped");
                }
                Ok(Some(Ok(Inbound::Message(m)))) => return Ok(m),
            }
        }
    }

    /// Wait for the message of type `want` (data or `OK`). Sale traffic is queued for
    /// later, a type 60 is the device's answer, a type 7 closes.
    async fn expect(&mut self, want: u16, what: &'static str) -> DevResult<Message> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let m = self.recv_until(deadline, what).await?;
            match m.ty {
                t if t == want => return Ok(Ok(m)),
                ty::ERROR => return Ok(Err(DeviceError::Error(m.text()))),
                ty::CLOSE => {
                    let _ = self.send(Message::new(ty::CLOSE, "OK")).await;
                    return Ok(Err(DeviceError::ClosedByDevice));
                }
                ty::SALE_RESULT | ty::BASKET_STATUS => self.unsolicited.push_back(m),
                other => {
                    tracing::debug!(ty = other, payload = %crate::api::pan::mask_str(&m.text()), "token: ignored out-of-turn message")
                }
            }
        }
    }

    /// A request answered by an optional data message and an `OK` of the same type.
    async fn request(&mut self, m: Message, what: &'static str) -> DevResult<Option<Message>> {
        let want = m.ty;
        self.send(m).await?;
        let mut data = None;
        loop {
            match self.expect(want, what).await? {
                Err(e) => return Ok(Err(e)),
                Ok(m) if m.is_ok() => return Ok(Ok(data)),
                Ok(m) => data = Some(m),
            }
        }
    }
}

pub struct Session<S, T> {
    link: Link<T>,
    state: S,
}

macro_rules! step {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}

impl<T: AsyncRead + AsyncWrite + Unpin> Session<Unverified, T> {
    /// A fresh link under the bootstrap key.
    pub fn new(io: T, timeout: Duration) -> Self {
        Session {
            link: Link {
                io: Framed::new(io, TokenCodec::default()),
                timeout,
                unsolicited: VecDeque::new(),
                faults: 0,
            },
            state: Unverified,
        }
    }

    /// Hello → certificate + signature, verified (and, in strict mode, chained).
    pub async fn hello(mut self, policy: &Policy) -> DevResult<Session<Verified, T>> {
        self.link.send(Message::new(ty::HELLO, CHALLENGE)).await?;
        let m = step!(self.link.expect(ty::CERTIFICATE, "the certificate (type 5)").await);
        let cert = match cert::verify_type5(&m.payload) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.into())),
        };
        if let Some(pin) = &policy.pinned {
            let now = cert_pin(&cert);
            if !now.eq_ignore_ascii_case(pin) {
                return Ok(Err(CertError::Chain(format!(
                    "the register's certificate is not the one enrolled (pinned sha256 {pin}, presented {now}); if the register was replaced on purpose, store the new pin: `echo {now} | posbridge secret set <terminal> cert_pin`"
                ))
                .into()));
            }
        }
        if policy.strict {
            let Some(ca) = &policy.ca_pem else {
                return Ok(Err(CertError::Chain("strict mode needs ca_file".into()).into()));
            };
            if let Err(e) = cert::verify_chain(&cert, ca) {
                return Ok(Err(e.into()));
            }
        }
        Ok(Ok(Session { link: self.link, state: Verified { cert } }))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Session<Verified, T> {
    pub fn cert(&self) -> &DeviceCert {
        &self.state.cert
    }

    /// Send a fresh key under the current one and switch at once; the device answers
    /// `6 OK` under the new key. A late `4 OK` under the old key is opened by the
    /// codec's previous key and ignored here.
    pub async fn switch_key(mut self) -> DevResult<Session<Keyed, T>> {
        let key = Key::generate()?;
        self.link.send(Message::new(ty::KEY, key.as_bytes().to_vec())).await?;
        self.link.io.codec_mut().switch_key(key);
        let m = step!(self.link.expect(ty::KEY, "the key switch (6 OK)").await);
        if !m.is_ok() {
            return Ok(Err(DeviceError::Unexpected(format!("type 6 answer {:?}", m.text()))));
        }
        Ok(Ok(Session { link: self.link, state: Keyed { cert: self.state.cert } }))
    }
}

fn device_info_request(policy: &Policy) -> Message {
    let body = json!({ "companyName": policy.company_name, "version": HOST_VERSION });
    Message::new(ty::DEVICE_INFO, body.to_string())
}

/// The fiscal number from a type 0 answer: plain text (`AV0000000121`) per the log.
fn fiscal_number(m: &Message) -> String {
    m.text().trim().trim_matches('"').to_string()
}

impl<T: AsyncRead + AsyncWrite + Unpin> Session<Keyed, T> {
    /// Device info → the fiscal number. Strict mode requires it to equal the
    /// certificate's `serialNumber`; otherwise a mismatch is only logged (test devices
    /// mismatch, `token.md`).
    pub async fn device_info(mut self, policy: &Policy) -> DevResult<Session<Identified, T>> {
        let data =
            step!(self.link.request(device_info_request(policy), "device info (type 0)").await);
        let Some(data) = data else {
            return Ok(Err(DeviceError::Unexpected(
                "device info answered OK without a fiscal number".into(),
            )));
        };
        let fiscal_no = fiscal_number(&data);
        let cert = self.state.cert;
        if cert.serial_number.as_deref() != Some(fiscal_no.as_str()) {
            if policy.strict {
                return Ok(Err(DeviceError::SerialMismatch {
                    cert: cert.serial_number,
                    fiscal: fiscal_no,
                }));
            }
            tracing::warn!(cert_serial = ?cert.serial_number, fiscal_no, "token: certificate serialNumber differs from the fiscal number (strict = false: accepted)");
        }
        Ok(Ok(Session { link: self.link, state: Identified { cert, fiscal_no } }))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Session<Identified, T> {
    pub fn fiscal_no(&self) -> &str {
        &self.state.fiscal_no
    }

    /// Fiscal info: mandatory before any sale (the seed).
    pub async fn fiscal_info(mut self) -> DevResult<Session<Ready, T>> {
        let info = step!(fetch_fiscal_info(&mut self.link).await);
        Ok(Ok(Session {
            link: self.link,
            state: Ready {
                cert: self.state.cert,
                fiscal_no: self.state.fiscal_no,
                fiscal_info: info,
            },
        }))
    }
}

async fn fetch_fiscal_info<T: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<T>,
) -> DevResult<FiscalInfo> {
    let data = step!(link.request(Message::new(ty::FISCAL_INFO, ""), "fiscal info (type 2)").await);
    let Some(data) = data else {
        return Ok(Err(DeviceError::Unexpected("fiscal info answered OK without data".into())));
    };
    match serde_json::from_str::<Value>(&data.text()) {
        Ok(v) if v.is_object() => Ok(Ok(FiscalInfo(v))),
        Ok(_) | Err(_) => Ok(Err(DeviceError::Unexpected(format!(
            "fiscal info is not a JSON object: {:.200}",
            data.text()
        )))),
    }
}

/// The whole handshake: hello, key switch, device info, fiscal info.
pub async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
    io: T, timeout: Duration, policy: &Policy,
) -> DevResult<Session<Ready, T>> {
    let s = step!(Session::new(io, timeout).hello(policy).await);
    let s = step!(s.switch_key().await);
    let s = step!(s.device_info(policy).await);
    s.fiscal_info().await
}

/// How a sale ended, as far as the device said.
#[derive(Debug, Clone, PartialEq)]
pub enum SaleEnd {
    Result(SaleResult),
    /// Type 9 and no type 3 within the grace period.
    NotProcessed(String),
    /// A type 3 in a valid frame whose payload is not a JSON object: a sale result the
    /// host cannot read (the register may have printed the receipt).
    Garbled(String),
}

impl<T: AsyncRead + AsyncWrite + Unpin> Session<Ready, T> {
    pub fn fiscal_no(&self) -> &str {
        &self.state.fiscal_no
    }
    pub fn cert(&self) -> &DeviceCert {
        &self.state.cert
    }
    pub fn fiscal_info(&self) -> &FiscalInfo {
        &self.state.fiscal_info
    }
    /// Frames dropped by the codec on this link so far.
    pub fn faults(&self) -> u64 {
        self.link.faults
    }

    pub fn identity(&self) -> Value {
        json!({
            "fiscal_no": self.state.fiscal_no,
            "cert_serial": self.state.cert.serial_number,
            "cert_subject": self.state.cert.subject,
        })
    }

    pub async fn refresh_fiscal_info(&mut self) -> DevResult<&FiscalInfo> {
        let info = step!(fetch_fiscal_info(&mut self.link).await);
        self.state.fiscal_info = info;
        Ok(Ok(&self.state.fiscal_info))
    }

    /// Ask the device info again (a liveness probe that moves no money).
    pub async fn device_info(&mut self, policy: &Policy) -> DevResult<String> {
        let data =
            step!(self.link.request(device_info_request(policy), "device info (type 0)").await);
        match data {
            Some(d) => Ok(Ok(fiscal_number(&d))),
            None => Ok(Ok(self.state.fiscal_no.clone())),
        }
    }

    /// Send a basket (type 1) and wait for the device to take it (`1 OK`). A type 60
    /// instead of the `OK` means the device refused the basket. A `TransportError` here
    /// means it may or may not have reached the device.
    pub async fn send_basket(&mut self, basket_json: &str) -> DevResult<()> {
        self.link.unsolicited.clear();
        self.link.send(Message::new(ty::BASKET, basket_json.as_bytes().to_vec())).await?;
        loop {
            let m = step!(self.link.expect(ty::BASKET, "the basket acknowledgement (1 OK)").await);
            if m.is_ok() {
                return Ok(Ok(()));
            }
            tracing::debug!(payload = %crate::api::pan::mask_str(&m.text()), "token: type 1 data before OK");
        }
    }

    /// Wait for the outcome of the basket in flight: a type 3 for `basket_id` (or one
    /// with an empty id: failures may not echo it, `token.md`), or a type 9 "not
    /// processed" followed by no type 3 within `grace`.
    pub async fn wait_sale(
        &mut self, basket_id: &str, within: Duration, grace: Duration,
    ) -> DevResult<SaleEnd> {
        let mut deadline = Instant::now() + within;
        let mut not_processed: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            let m = match self.link.unsolicited.pop_front() {
                Some(m) => m,
                None => match self.link.recv_until(deadline, "the sale result (type 3)").await {
                    Ok(m) => m,
                    Err(TransportError::Timeout(..)) if not_processed.is_some() => {
                        return Ok(Ok(SaleEnd::NotProcessed(not_processed.unwrap_or_default())))
                    }
                    Err(TransportError::Timeout(_, what)) => {
                        tracing::warn!(?last_error, "token: no sale result in time");
                        return Err(TransportError::Timeout(within, what));
                    }
                    Err(e) => return Err(e),
                },
            };
            match m.ty {
                ty::SALE_RESULT => {
                    let raw = match serde_json::from_str::<Value>(&m.text()) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => {
                            tracing::warn!(payload = %crate::api::pan::mask_str(&m.text()), "token: unreadable sale result");
                            return Ok(Ok(SaleEnd::Garbled(m.text())));
                        }
                    };
                    // Returned even for another basket: the driver judges it (an answer
                    // that is not this basket's is asked about again, never taken).
                    let r = SaleResult { raw };
                    if !r.basket_id().is_empty() && r.basket_id() != basket_id {
                        tracing::warn!(
                            got = r.basket_id(),
                            want = basket_id,
                            "token: sale result for another basket"
                        );
                    }
                    return Ok(Ok(SaleEnd::Result(r)));
                }
                ty::BASKET_STATUS => {
                    if not_processed.is_none() {
                        deadline = deadline.min(Instant::now() + grace);
                    }
                    not_processed = Some(m.text());
                }
                ty::ERROR => {
                    // After `1 OK` a type 60 does not prove the sale did not happen: note
                    // it and keep waiting for the device's verdict.
                    tracing::warn!(error = %crate::api::pan::mask_str(&m.text()), "token: device error during a sale");
                    last_error = Some(m.text());
                }
                ty::CLOSE => {
                    let _ = self.link.send(Message::new(ty::CLOSE, "OK")).await;
                    return Ok(Err(DeviceError::ClosedByDevice));
                }
                other => tracing::debug!(ty = other, "token: ignored message during a sale"),
            }
        }
    }

    /// Close politely (type 7 → `7 OK`).
    pub async fn close(mut self) {
        let _ = self.link.request(Message::new(ty::CLOSE, ""), "close (7 OK)").await;
    }
}

#[cfg(all(test, feature = "sims"))]
#[path = "session_tests.rs"]
mod tests;
