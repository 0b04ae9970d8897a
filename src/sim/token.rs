//! Simulator of a Token fiscal register's Integration Hub side (`posbridge sim token`),
//! speaking the real protocol (`token.md`) over a byte stream: hello → certificate and
//! signature from its own P-384 key, key switch (with the late `4 OK` under the old key
//! that the vendor log shows), device info, fiscal info, baskets with `1 OK`, type 9,
//! type 3 and type 60 answers. A control handle counts sales per basket id and flips
//! fault knobs for the tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use p384::pkcs8::DecodePrivateKey;
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
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            fiscal_no: "AV0000000121".into(),
            cert_serial: None,
            sale_delay_ms: 0,
            seed: None,
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
}

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
    /// Sale results not delivered because the link dropped.
    pending: Vec<String>,
    receipt_no: u64,
    z_no: u64,
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
        let serial = opts.cert_serial.clone().unwrap_or(opts.fiscal_no.clone());
        let identity = DeviceIdentity::generate(&serial, ca)?;
        let seed = opts.seed.unwrap_or(0);
        let state = State {
            receipt_no: 1 + seed % 1000,
            z_no: 10 + seed % 90,
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
        let result = self.complete(&basket, &basket_id, knobs.cancel_next);
        self.send(Message::new(ty::SALE_RESULT, result)).await?;
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
        json!({
            "basketID": basket_id, "documentType": basket["documentType"],
            "InstanceIdentifier": "SIM", "invoiceID": "", "message": "OK",
            "paymentCount": payments.len(), "paymentItems": payments,
            "receiptNo": s.receipt_no, "status": 0, "UUID": uuid.to_string(), "zNo": s.z_no
        })
        .to_string()
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
