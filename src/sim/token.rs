//! Simulator of a Token fiscal register's Integration Hub side (`posbridge sim token`),
//! speaking the real protocol (`token.md`) over a byte stream: hello → certificate and
//! signature from its own P-384 key, key switch (with the late `4 OK` under the old key
//! that the vendor log shows), device info, fiscal info, baskets with `1 OK`, type 9,
//! type 3 and type 60 answers. A control handle counts sales per basket id and flips
//! fault knobs for the tests.
//!
//! Result faults, for rehearsing "the sale happened, its result did not arrive intact":
//! the basket is sold (it counts in [`SimControl::sales`]) and the real type 3 is what the
//! books keep ([`SimControl::sale_result`]) and what is re-sent after the next handshake
//! when [`Knobs::redeliver_after_reconnect`] is on; only the first delivery is spoiled:
//! - lost: `1 OK`, then no type 3 at all; the link stays up ([`Knobs::lose_next_result`],
//!   [`SimOptions::lose_rate`], `--lose-rate`);
//! - garbled: a valid type 3 frame whose JSON is cut short (its first half)
//!   ([`Knobs::garble_next_result`], [`SimOptions::garble_rate`], `--garble-rate`);
//! - foreign: a well-formed type 3 for another basket, `basketID` `other-<id>`
//!   ([`Knobs::foreign_next_result`]).
//!
//! They apply to sales only (not to a cancelled basket, a type 9 or a type 60). The rates
//! are drawn per sale from their own generator (seeded from `seed`): below `lose_rate`
//! lost, below `lose_rate + garble_rate` garbled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use p384::pkcs8::DecodePrivateKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    PKCS_ECDSA_P384_SHA384,
};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, Framed};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drivers::token::cert::CHALLENGE;
use crate::drivers::token::codec::{ty, Inbound, Message, TokenCodec};
use crate::drivers::token::crypto::Key;

/// A CA for strict-mode tests (stands in for Kamu SM OKC-S2).
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn generate(name: &str) -> Result<TestCa, rcgen::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "TR");
        dn.push(DnType::OrganizationName, "posbridge test");
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key)?;
        Ok(TestCa { cert, key })
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// The device's certificate and signing key.
pub struct DeviceIdentity {
    pub cert_pem: String,
    signing: SigningKey,
}

impl DeviceIdentity {
    /// `subject C=TR, O=TOKEN, serialNumber=<serial>` (as on real devices), self-signed or
    /// issued by `ca`.
    pub fn generate(serial: &str, ca: Option<&TestCa>) -> anyhow::Result<DeviceIdentity> {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "TR");
        dn.push(DnType::OrganizationName, "TOKEN");
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial);
        p.distinguished_name = dn;
        let cert = match ca {
            Some(ca) => p.signed_by(&kp, &ca.cert, &ca.key)?,
            None => p.self_signed(&kp)?,
        };
        let signing = SigningKey::from_pkcs8_der(kp.serialized_der())
            .map_err(|e| anyhow::anyhow!("device key: {e}"))?;
        Ok(DeviceIdentity {
            cert_pem: cert.pem(),
            signing,
        })
    }

    /// The type 5 payload: certificate + raw r‖s over the challenge, hex.
    fn type5(&self, corrupt: bool) -> String {
        let sig: Signature = self.signing.sign(CHALLENGE);
        let mut raw = sig.to_bytes().to_vec();
        if corrupt {
            raw[10] ^= 0x55;
        }
        json!({ "certificate": self.cert_pem, "sign": hex::encode(raw) }).to_string()
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub fiscal_no: String,
    /// The certificate's serialNumber; `None` = the fiscal number.
    pub cert_serial: Option<String>,
    /// Time the "cashier" takes before the sale result.
    pub sale_delay_ms: u64,
    /// Seeds receipt/Z numbers and result UUIDs (deterministic runs).
    pub seed: Option<u64>,
    /// Probability in [0, 1] that a sale's type 3 result is never sent (the link stays up).
    pub lose_rate: f64,
    /// Probability in [0, 1] that a sale's type 3 result carries its JSON cut short.
    pub garble_rate: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            fiscal_no: "AV0000000121".into(),
            cert_serial: None,
            sale_delay_ms: 0,
            seed: None,
            lose_rate: 0.0,
            garble_rate: 0.0,
        }
    }
}

/// Fault knobs, each applying to the next occasion (cleared when used unless noted).
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Answer the next basket with a type 60 carrying this text instead of `1 OK`.
    pub error_next_basket: Option<String>,
    /// Answer the next basket with `1 OK` then type 9 (not processed) and no sale.
    pub not_processed_next: bool,
    /// The next basket is cancelled by the customer (type 3 status -1, no sale).
    pub cancel_next: bool,
    /// After `1 OK` for the next basket, drop the link; the sale still completes.
    pub drop_link_mid_sale: bool,
    /// Sticky: results that could not be delivered are sent after the next handshake.
    pub redeliver_after_reconnect: bool,
    /// Corrupt the CRC of the next frame sent.
    pub corrupt_next_crc: bool,
    /// Sticky: sign the challenge wrongly.
    pub bad_signature: bool,
    /// Sticky: answer `4 OK` right after the certificate instead of late (after the
    /// host's key switch, as in the vendor log).
    pub early_hello_ok: bool,
    /// The next basket sold: `1 OK` is sent, the sale completes, but its type 3 result
    /// is never sent; the link stays up. Cleared by the next sale.
    pub lose_next_result: bool,
    /// The next basket sold: its type 3 result is sent in a valid frame whose JSON is cut
    /// short (the first half of the text). Cleared by the next sale.
    pub garble_next_result: bool,
    /// The next basket sold: its type 3 result carries another (non-empty) `basketID`,
    /// `other-<id>`. Cleared by the next sale.
    pub foreign_next_result: bool,
    /// The next basket sold: a careless firmware puts the full card number and track 2
    /// data in its type 3 payment item (the host must mask both).
    pub card_number_next: bool,
}

/// How the first delivery of a sale result is spoiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultFault {
    Lose,
    Garble,
    Foreign,
}

/// Mixed into the seed for the result-fault generator (any constant would do).
const FAULT_SEED_MIX: u64 = 0x5eed_fa17_0000_0003;

struct Shared {
    opts: SimOptions,
    identity: DeviceIdentity,
    fiscal_info: Value,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    knobs: Knobs,
    /// Completed sales per basket id: the proof of "never two sales".
    sales: HashMap<String, u32>,
    baskets_received: u64,
    connections: u64,
    handshakes: u64,
    /// Sale results not delivered because the link dropped (or spoiled by a result fault).
    pending: Vec<String>,
    /// The type 3 payload of the last sale of each basket id, as the register booked it.
    results: HashMap<String, String>,
    receipt_no: u64,
    z_no: u64,
    /// Draws the result faults; `None` only in `State::default()`, never in a device.
    fault_rng: Option<StdRng>,
}

impl State {
    /// The spoiling of the sale result about to go out: the knobs first (lose, garble,
    /// foreign), else one draw against the rates (none while both are 0).
    fn take_result_fault(&mut self, opts: &SimOptions) -> Option<ResultFault> {
        let k = &mut self.knobs;
        let knob = [
            (std::mem::take(&mut k.lose_next_result), ResultFault::Lose),
            (
                std::mem::take(&mut k.garble_next_result),
                ResultFault::Garble,
            ),
            (
                std::mem::take(&mut k.foreign_next_result),
                ResultFault::Foreign,
            ),
        ]
        .into_iter()
        .find_map(|(on, f)| on.then_some(f));
        if knob.is_some() || (opts.lose_rate <= 0.0 && opts.garble_rate <= 0.0) {
            return knob;
        }
        let draw: f64 = self.fault_rng.as_mut()?.random();
        if draw < opts.lose_rate {
            Some(ResultFault::Lose)
        } else if draw < opts.lose_rate + opts.garble_rate {
            Some(ResultFault::Garble)
        } else {
            None
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters and knobs, for tests. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<Shared>,
}

impl SimControl {
    pub fn sales(&self, basket_id: &str) -> u32 {
        lock(&self.shared.state)
            .sales
            .get(basket_id)
            .copied()
            .unwrap_or(0)
    }
    pub fn total_sales(&self) -> u32 {
        lock(&self.shared.state).sales.values().sum()
    }
    pub fn baskets_received(&self) -> u64 {
        lock(&self.shared.state).baskets_received
    }
    pub fn connections(&self) -> u64 {
        lock(&self.shared.state).connections
    }
    pub fn handshakes(&self) -> u64 {
        lock(&self.shared.state).handshakes
    }
    pub fn set(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut lock(&self.shared.state).knobs)
    }
    /// The type 3 payload (JSON text) of the last sale of `basket_id`, as the register
    /// booked it — the real result, whatever reached the host.
    pub fn sale_result(&self, basket_id: &str) -> Option<String> {
        lock(&self.shared.state).results.get(basket_id).cloned()
    }
    pub fn cert_pem(&self) -> String {
        self.shared.identity.cert_pem.clone()
    }
}

/// The device side of one link, usable over any byte stream (`tokio::io::duplex` in
/// the session tests, TCP in `posbridge sim token`).
pub struct TokenDevice {
    shared: Arc<Shared>,
}

impl TokenDevice {
    pub fn new(opts: SimOptions, ca: Option<&TestCa>) -> anyhow::Result<TokenDevice> {
        for (name, rate) in [
            ("lose_rate", opts.lose_rate),
            ("garble_rate", opts.garble_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("{name} must be within [0, 1], got {rate}");
            }
        }
        let serial = opts.cert_serial.clone().unwrap_or(opts.fiscal_no.clone());
        let identity = DeviceIdentity::generate(&serial, ca)?;
        let seed = opts.seed.unwrap_or(0);
        let fault_rng = match opts.seed {
            Some(s) => StdRng::seed_from_u64(s ^ FAULT_SEED_MIX),
            None => StdRng::from_os_rng(),
        };
        let state = State {
            receipt_no: 1 + seed % 1000,
            z_no: 10 + seed % 90,
            fault_rng: Some(fault_rng),
            ..Default::default()
        };
        Ok(TokenDevice {
            shared: Arc::new(Shared {
                opts,
                identity,
                fiscal_info: default_fiscal_info(),
                state: Mutex::new(state),
            }),
        })
    }

    pub fn control(&self) -> SimControl {
        SimControl {
            shared: self.shared.clone(),
        }
    }

    /// Serve one link until the host closes it (or a knob drops it).
    pub async fn serve<T: AsyncRead + AsyncWrite + Unpin + Send>(&self, io: T) {
        lock(&self.shared.state).connections += 1;
        let mut link = DeviceLink {
            io: Framed::new(io, TokenCodec::default()),
            shared: self.shared.clone(),
            verified: false,
            keyed: false,
            fiscal_loaded: false,
            hello_ok_pending: false,
        };
        if let Err(e) = link.run().await {
            tracing::debug!(error = %e, "token sim: link ended");
        }
    }
}

/// What the simulated register shows as its sections and PLUs (the seed's example).
fn default_fiscal_info() -> Value {
    json!({
        "businessMode": 0, "pluCount": 1,
        "plus": [{"barcode": "", "name": "Elma", "pluNo": 0, "price": 2000, "sectionNo": 1,
                  "taxPercent": 1000, "type": 0, "unit": "Adet", "vatID": 1, "status": 1}],
        "receiptLimit": 990000, "sectionCount": 2,
        "sections": [
            {"limit": 0, "name": "GİDA", "price": 0, "sectionNo": 1, "taxPercent": 1000, "type": 0, "status": 1},
            {"limit": 0, "name": "TEKEL", "price": 0, "sectionNo": 2, "taxPercent": 2000, "type": 0, "status": 1}
        ]
    })
}

struct DeviceLink<T> {
    io: Framed<T, TokenCodec>,
    shared: Arc<Shared>,
    verified: bool,
    keyed: bool,
    fiscal_loaded: bool,
    hello_ok_pending: bool,
}

enum Flow {
    Continue,
    Close,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> DeviceLink<T> {
    async fn send(&mut self, m: Message) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        self.io.codec_mut().encode(m, &mut buf)?;
        if std::mem::take(&mut lock(&self.shared.state).knobs.corrupt_next_crc) {
            let n = buf.len();
            buf[n - 1] ^= 0xA5;
        }
        self.io.get_mut().write_all(&buf).await?;
        self.io.get_mut().flush().await
    }

    async fn ok(&mut self, t: u16) -> std::io::Result<()> {
        self.send(Message::new(t, "OK")).await
    }

    async fn error(&mut self, text: &str) -> std::io::Result<()> {
        self.send(Message::new(ty::ERROR, text.as_bytes().to_vec()))
            .await
    }

    async fn run(&mut self) -> std::io::Result<()> {
        while let Some(item) = self.io.next().await {
            match item? {
                Inbound::Fault(f) => {
                    // The vendor library answers a frame it cannot read with type 60.
                    self.error(&format!("bad frame: {f}")).await?;
                }
                Inbound::Message(m) => {
                    if let Flow::Close = self.handle(m).await? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle(&mut self, m: Message) -> std::io::Result<Flow> {
        match m.ty {
            ty::HELLO => {
                if m.payload != CHALLENGE {
                    self.error("unexpected hello").await?;
                    return Ok(Flow::Continue);
                }
                let (bad, early) = {
                    let s = lock(&self.shared.state);
                    (s.knobs.bad_signature, s.knobs.early_hello_ok)
                };
                let t5 = self.shared.identity.type5(bad);
                self.send(Message::new(ty::CERTIFICATE, t5)).await?;
                if early {
                    self.ok(ty::HELLO).await?;
                } else {
                    self.hello_ok_pending = true;
                }
                self.verified = true;
            }
            ty::KEY => {
                let Some(key) = Key::from_digits(&m.payload).filter(|_| self.verified) else {
                    self.error("bad key share").await?;
                    return Ok(Flow::Continue);
                };
                // The late `4 OK` still under the old key (token.md: the vendor log).
                if std::mem::take(&mut self.hello_ok_pending) {
                    self.ok(ty::HELLO).await?;
                }
                *self.io.codec_mut() = TokenCodec::new(key);
                self.keyed = true;
                self.ok(ty::KEY).await?;
            }
            _ if !self.keyed => {
                self.error("handshake first").await?;
            }
            ty::DEVICE_INFO => {
                let fiscal_no = self.shared.opts.fiscal_no.clone();
                self.send(Message::new(ty::DEVICE_INFO, fiscal_no)).await?;
                self.ok(ty::DEVICE_INFO).await?;
            }
            ty::FISCAL_INFO => {
                let info = self.shared.fiscal_info.to_string();
                self.send(Message::new(ty::FISCAL_INFO, info)).await?;
                self.ok(ty::FISCAL_INFO).await?;
                if !self.fiscal_loaded {
                    self.fiscal_loaded = true;
                    lock(&self.shared.state).handshakes += 1;
                    self.redeliver().await?;
                }
            }
            ty::BASKET => return self.basket(m).await,
            ty::CLOSE => {
                self.ok(ty::CLOSE).await?;
                return Ok(Flow::Close);
            }
            other => {
                self.error(&format!("unsupported type {other}")).await?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn redeliver(&mut self) -> std::io::Result<()> {
        let pending = {
            let mut s = lock(&self.shared.state);
            if s.knobs.redeliver_after_reconnect {
                std::mem::take(&mut s.pending)
            } else {
                vec![]
            }
        };
        for p in pending {
            self.send(Message::new(ty::SALE_RESULT, p)).await?;
        }
        Ok(())
    }

    async fn basket(&mut self, m: Message) -> std::io::Result<Flow> {
        if !self.fiscal_loaded {
            self.error("fiscal info not requested").await?;
            return Ok(Flow::Continue);
        }
        let basket: Value = match serde_json::from_slice(&m.payload) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.error("basket is not JSON").await?;
                return Ok(Flow::Continue);
            }
        };
        let basket_id = basket["basketID"].as_str().unwrap_or("").to_string();
        let knobs = {
            let mut s = lock(&self.shared.state);
            s.baskets_received += 1;
            let k = s.knobs.clone();
            s.knobs.error_next_basket = None;
            s.knobs.not_processed_next = false;
            s.knobs.cancel_next = false;
            s.knobs.drop_link_mid_sale = false;
            s.knobs.card_number_next = false;
            k
        };
        if let Some(text) = knobs.error_next_basket {
            self.error(&text).await?;
            return Ok(Flow::Continue);
        }
        if let Some(problem) = check_basket(&basket, &self.shared.fiscal_info) {
            self.error(&problem).await?;
            return Ok(Flow::Continue);
        }
        self.ok(ty::BASKET).await?;
        if knobs.not_processed_next {
            let status = json!({ "basketID": basket_id, "message": "Sepet işlenemedi" });
            self.send(Message::new(ty::BASKET_STATUS, status.to_string()))
                .await?;
            return Ok(Flow::Continue);
        }
        if knobs.drop_link_mid_sale {
            // The cashier finishes the sale on the register; the host is gone.
            let result = self.complete(&basket, &basket_id, knobs.cancel_next);
            lock(&self.shared.state).pending.push(result);
            return Ok(Flow::Close);
        }
        if self.shared.opts.sale_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.shared.opts.sale_delay_ms)).await;
        }
        let mut result = self.complete(&basket, &basket_id, knobs.cancel_next);
        if knobs.card_number_next {
            if let Ok(mut v) = serde_json::from_str::<Value>(&result) {
                v["paymentItems"][0]["cardNumber"] = json!("4111111111111111");
                v["paymentItems"][0]["track2"] = json!("4111111111111111=25121010000000000000");
                result = v.to_string();
            }
        }
        let fault = if knobs.cancel_next {
            None
        } else {
            let mut s = lock(&self.shared.state);
            let fault = s.take_result_fault(&self.shared.opts);
            if fault.is_some() {
                // Not delivered intact: re-sent after a reconnect, like a dropped link's.
                s.pending.push(result.clone());
            }
            fault
        };
        if let Some(f) = fault {
            tracing::info!(basket_id = %basket_id, fault = ?f, "token sim: sale result spoiled (fault)");
        }
        let wire = match fault {
            None => result,
            Some(ResultFault::Lose) => return Ok(Flow::Continue),
            Some(ResultFault::Garble) => crate::sim::first_half(&result).to_string(),
            Some(ResultFault::Foreign) => match serde_json::from_str::<Value>(&result) {
                Ok(mut v) => {
                    v["basketID"] = json!(format!("other-{basket_id}"));
                    v.to_string()
                }
                Err(_) => result,
            },
        };
        self.send(Message::new(ty::SALE_RESULT, wire)).await?;
        Ok(Flow::Continue)
    }

    /// Book the sale (or the cancellation) and build its type 3 payload.
    fn complete(&self, basket: &Value, basket_id: &str, cancel: bool) -> String {
        if cancel {
            return json!({ "basketID": "", "message": "CANCELLED", "status": -1 }).to_string();
        }
        let mut s = lock(&self.shared.state);
        *s.sales.entry(basket_id.to_string()).or_default() += 1;
        s.receipt_no += 1;
        let payments: Vec<Value> = basket["paymentItems"]
            .as_array()
            .map(|p| {
                p.iter()
                    .map(|pi| {
                        json!({ "amount": pi["amount"], "BatchNo": 0, "currencyId": 949,
                            "description": pi["description"], "operatorId": 0, "status": 0,
                            "TxnNo": 0, "type": pi["type"] })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let uuid = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!(
                "{}:{basket_id}:{}",
                self.shared.opts.seed.unwrap_or(0),
                s.receipt_no
            )
            .as_bytes(),
        );
        let result = json!({
            "basketID": basket_id, "documentType": basket["documentType"],
            "InstanceIdentifier": "SIM", "invoiceID": "", "message": "OK",
            "paymentCount": payments.len(), "paymentItems": payments,
            "receiptNo": s.receipt_no, "status": 0, "UUID": uuid.to_string(), "zNo": s.z_no
        })
        .to_string();
        s.results.insert(basket_id.to_string(), result.clone());
        result
    }
}

/// What a register checks before taking a basket: known sections, money adds up.
fn check_basket(b: &Value, fiscal: &Value) -> Option<String> {
    let sections: Vec<i64> = fiscal["sections"]
        .as_array()
        .map(|s| s.iter().filter_map(|x| x["sectionNo"].as_i64()).collect())
        .unwrap_or_default();
    let items = b["items"].as_array()?;
    if items.is_empty() {
        return Some("basket has no items".into());
    }
    for it in items {
        let sec = it["sectionNo"].as_i64().unwrap_or(-1);
        if !sections.contains(&sec) {
            return Some(format!("section {sec} not defined"));
        }
    }
    None
}

/// `posbridge sim token`: a TCP listener serving one link per connection.
pub struct TokenSim {
    listener: TcpListener,
    addr: SocketAddr,
    device: Arc<TokenDevice>,
}

impl TokenSim {
    pub async fn bind(
        addr: SocketAddr,
        opts: SimOptions,
        ca: Option<&TestCa>,
    ) -> anyhow::Result<TokenSim> {
        let device = TokenDevice::new(opts, ca)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(TokenSim {
            listener,
            addr,
            device: Arc::new(device),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn control(&self) -> SimControl {
        self.device.control()
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                acc = self.listener.accept() => match acc {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        tracing::info!(%peer, "token sim: host connected");
                        let device = self.device.clone();
                        let stop = shutdown.clone();
                        tracker.spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = device.serve(stream) => {}
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "token sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracker.close();
        tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    //! The device side over `tokio::io::duplex`, driven by a bare host built from the
    //! codec (no driver session), so each frame the device sends can be checked.

    use futures_util::SinkExt;
    use tokio::io::DuplexStream;

    use super::*;

    const T: Duration = Duration::from_secs(5);
    const KEY: &[u8; 32] = b"73019284650192837465019283746501";

    struct Host {
        io: Framed<DuplexStream, TokenCodec>,
    }

    impl Host {
        /// A new link to `dev`, through the whole handshake up to fiscal info. Returns
        /// the host and the sale results the device re-sent after the handshake.
        async fn connect(dev: &Arc<TokenDevice>) -> (Host, Vec<Value>) {
            let (near, far) = tokio::io::duplex(64 * 1024);
            let dev = Arc::clone(dev);
            tokio::spawn(async move { dev.serve(far).await });
            let mut h = Host {
                io: Framed::new(near, TokenCodec::default()),
            };
            h.send(ty::HELLO, CHALLENGE).await;
            assert_eq!(h.recv().await.ty, ty::CERTIFICATE);
            h.send(ty::KEY, KEY.as_slice()).await;
            h.io.codec_mut()
                .switch_key(Key::from_digits(KEY).expect("digits"));
            for t in [ty::HELLO, ty::KEY] {
                let m = h.recv().await;
                assert!(m.ty == t && m.is_ok(), "{m:?}");
            }
            h.send(ty::DEVICE_INFO, "posbridge").await;
            assert_eq!(h.recv().await.ty, ty::DEVICE_INFO);
            assert!(h.recv().await.is_ok());
            h.send(ty::FISCAL_INFO, "").await;
            assert_eq!(h.recv().await.ty, ty::FISCAL_INFO);
            assert!(h.recv().await.is_ok());
            // Anything re-sent comes before the answer to this probe.
            h.send(ty::DEVICE_INFO, "posbridge").await;
            let mut redelivered = Vec::new();
            loop {
                let m = h.recv().await;
                if m.ty == ty::DEVICE_INFO {
                    assert!(h.recv().await.is_ok());
                    break;
                }
                assert_eq!(m.ty, ty::SALE_RESULT, "{m:?}");
                redelivered.push(serde_json::from_slice(&m.payload).expect("redelivered JSON"));
            }
            (h, redelivered)
        }

        async fn send(&mut self, t: u16, payload: impl Into<Vec<u8>>) {
            self.io.send(Message::new(t, payload)).await.expect("send");
        }

        async fn recv(&mut self) -> Message {
            match tokio::time::timeout(T, self.io.next()).await {
                Ok(Some(Ok(Inbound::Message(m)))) => m,
                other => panic!("expected a message, got {other:?}"),
            }
        }

        /// Sends a basket and expects `1 OK`.
        async fn basket(&mut self, id: &str) {
            let b = json!({"basketID": id, "documentType": 0, "createInvoice": false,
                "isVoid": false,
                "items": [{"name": "Su", "price": 500, "quantity": 1000, "sectionNo": 1}],
                "paymentItems": [{"type": 1, "amount": 500, "description": "", "taxRate": 5}]});
            self.send(ty::BASKET, b.to_string()).await;
            let m = self.recv().await;
            assert!(m.ty == ty::BASKET && m.is_ok(), "{m:?}");
        }

        /// The next message is the answer to a device-info probe: nothing else was sent
        /// in between (the device serves one request at a time).
        async fn nothing_before_probe(&mut self) {
            self.send(ty::DEVICE_INFO, "posbridge").await;
            let m = self.recv().await;
            assert_eq!(m.ty, ty::DEVICE_INFO, "{m:?}");
            assert!(self.recv().await.is_ok());
        }
    }

    fn device(opts: SimOptions) -> (Arc<TokenDevice>, SimControl) {
        let dev = Arc::new(TokenDevice::new(opts, None).expect("device"));
        let ctl = dev.control();
        (dev, ctl)
    }

    fn booked(ctl: &SimControl, id: &str) -> Value {
        let text = ctl.sale_result(id).expect("booked result");
        serde_json::from_str(&text).expect("booked JSON")
    }

    #[tokio::test]
    async fn lost_result_is_sold_once_and_redelivered_after_reconnect() {
        let (dev, ctl) = device(SimOptions::default());
        ctl.set(|k| {
            k.lose_next_result = true;
            k.redeliver_after_reconnect = true;
        });
        let (mut h, again) = Host::connect(&dev).await;
        assert!(again.is_empty());
        h.basket("lose-1").await;
        // No type 3, and the link is still up.
        h.nothing_before_probe().await;
        assert_eq!(ctl.sales("lose-1"), 1);
        let real = booked(&ctl, "lose-1");
        assert_eq!(
            (real["basketID"].as_str(), real["status"].as_i64()),
            (Some("lose-1"), Some(0))
        );
        // After a reconnect the register re-sends the real result.
        drop(h);
        let (mut h, again) = Host::connect(&dev).await;
        assert_eq!(again, vec![real]);
        // Once only: the next sale's result is sent.
        h.basket("lose-2").await;
        let m = h.recv().await;
        assert_eq!(m.ty, ty::SALE_RESULT);
        let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
        assert_eq!(v["basketID"], "lose-2");
        assert_eq!((ctl.sales("lose-1"), ctl.total_sales()), (1, 2));
    }

    #[tokio::test]
    async fn garbled_result_is_the_first_half_of_the_real_json() {
        let (dev, ctl) = device(SimOptions::default());
        ctl.set(|k| k.garble_next_result = true);
        let (mut h, _) = Host::connect(&dev).await;
        h.basket("garble-1").await;
        let m = h.recv().await;
        assert_eq!(m.ty, ty::SALE_RESULT);
        assert!(serde_json::from_slice::<Value>(&m.payload).is_err());
        assert_eq!(ctl.sales("garble-1"), 1);
        let real = ctl.sale_result("garble-1").expect("booked");
        assert_eq!(m.text(), real[..real.len() / 2]);
        assert_eq!(booked(&ctl, "garble-1")["status"], 0);
        h.nothing_before_probe().await;
        ctl.set(|k| k.redeliver_after_reconnect = true);
        drop(h);
        let (_h, again) = Host::connect(&dev).await;
        assert_eq!(again, vec![booked(&ctl, "garble-1")]);
        assert_eq!(ctl.sales("garble-1"), 1);
    }

    #[tokio::test]
    async fn foreign_result_names_another_basket() {
        let (dev, ctl) = device(SimOptions::default());
        ctl.set(|k| k.foreign_next_result = true);
        let (mut h, _) = Host::connect(&dev).await;
        h.basket("mine-1").await;
        let m = h.recv().await;
        assert_eq!(m.ty, ty::SALE_RESULT);
        let foreign: Value = serde_json::from_slice(&m.payload).expect("well-formed");
        assert_eq!(foreign["basketID"], "other-mine-1");
        assert_eq!(ctl.sales("mine-1"), 1);
        assert_eq!(ctl.sales("other-mine-1"), 0);
        let real = booked(&ctl, "mine-1");
        assert_eq!(real["basketID"], "mine-1");
        assert_eq!(real["UUID"], foreign["UUID"]);
        h.nothing_before_probe().await;
    }

    #[tokio::test]
    async fn rates_spoil_sales_and_are_validated() {
        for bad in [1.5, -0.5, f64::NAN] {
            let opts = SimOptions {
                garble_rate: bad,
                ..SimOptions::default()
            };
            assert!(TokenDevice::new(opts, None).is_err());
        }
        let (dev, ctl) = device(SimOptions {
            lose_rate: 1.0,
            seed: Some(3),
            ..SimOptions::default()
        });
        let (mut h, _) = Host::connect(&dev).await;
        h.basket("rate-1").await;
        h.nothing_before_probe().await;
        assert_eq!(ctl.sales("rate-1"), 1);
        assert!(ctl.sale_result("rate-1").is_some());
        let (dev, ctl) = device(SimOptions {
            garble_rate: 1.0,
            ..SimOptions::default()
        });
        let (mut h, _) = Host::connect(&dev).await;
        h.basket("rate-2").await;
        let m = h.recv().await;
        assert!(m.ty == ty::SALE_RESULT && serde_json::from_slice::<Value>(&m.payload).is_err());
        assert_eq!(ctl.sales("rate-2"), 1);
    }

    #[tokio::test]
    async fn cancelled_basket_leaves_the_result_knob_armed() {
        let (dev, ctl) = device(SimOptions::default());
        ctl.set(|k| {
            k.cancel_next = true;
            k.lose_next_result = true;
        });
        let (mut h, _) = Host::connect(&dev).await;
        h.basket("cancel-1").await;
        let m = h.recv().await;
        let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
        assert_eq!(v["status"], -1);
        h.basket("sold-1").await;
        h.nothing_before_probe().await;
        assert_eq!((ctl.sales("cancel-1"), ctl.sales("sold-1")), (0, 1));
    }
}
