//! The register itself: its options ([`SimOptions`]), its books and counters (sales per
//! basket id, undelivered results, receipt and Z numbers) shared by all its links, the
//! [`SimControl`] handle the tests read them and set knobs through, and [`TokenDevice`],
//! which serves one link over any byte stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::faults::{Knobs, FAULT_SEED_MIX};
use super::identity::{DeviceIdentity, TestCa};
use super::link::DeviceLink;
use crate::drivers::token::codec::TokenCodec;
use crate::sim::faults::{check_rates, seeded};

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

pub(super) struct Shared {
    pub(super) opts: SimOptions,
    pub(super) identity: DeviceIdentity,
    pub(super) fiscal_info: Value,
    pub(super) state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) knobs: Knobs,
    /// Completed sales per basket id: the proof of "never two sales".
    pub(super) sales: HashMap<String, u32>,
    pub(super) baskets_received: u64,
    pub(super) connections: u64,
    pub(super) handshakes: u64,
    /// Sale results not delivered because the link dropped (or spoiled by a result fault).
    pub(super) pending: Vec<String>,
    /// The type 3 payload of the last sale of each basket id, as the register booked it.
    pub(super) results: HashMap<String, String>,
    pub(super) receipt_no: u64,
    pub(super) z_no: u64,
    /// Draws the result faults; `None` only in `State::default()`, never in a device.
    pub(super) fault_rng: Option<StdRng>,
}

pub(super) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters and knobs, for tests. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<Shared>,
}

impl SimControl {
    pub fn sales(&self, basket_id: &str) -> u32 {
        lock(&self.shared.state).sales.get(basket_id).copied().unwrap_or(0)
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
        check_rates(&[("lose_rate", opts.lose_rate), ("garble_rate", opts.garble_rate)])
            .map_err(anyhow::Error::msg)?;
        let serial = opts.cert_serial.clone().unwrap_or(opts.fiscal_no.clone());
        let identity = DeviceIdentity::generate(&serial, ca)?;
        let seed = opts.seed.unwrap_or(0);
        let state = State {
            receipt_no: 1 + seed % 1000,
            z_no: 10 + seed % 90,
            fault_rng: Some(seeded(opts.seed, FAULT_SEED_MIX)),
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
        SimControl { shared: self.shared.clone() }
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
