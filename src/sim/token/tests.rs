//! The device side over `tokio::io::duplex`, driven by a bare host built from the
//! codec (no driver session), so each frame the device sends can be checked.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;

use super::*;
use crate::drivers::token::cert::CHALLENGE;
use crate::drivers::token::codec::{ty, Inbound, Message, TokenCodec};
use crate::drivers::token::crypto::Key;

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
        let mut h = Host { io: Framed::new(near, TokenCodec::default()) };
        h.send(ty::HELLO, CHALLENGE).await;
        assert_eq!(h.recv().await.ty, ty::CERTIFICATE);
        h.send(ty::KEY, KEY.as_slice()).await;
        h.io.codec_mut().switch_key(Key::from_digits(KEY).expect("digits"));
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

    /// The next message is a sale result (type 3).
    async fn sale_result(&mut self) -> Message {
        let m = self.recv().await;
        assert_eq!(m.ty, ty::SALE_RESULT);
        m
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

/// A default device with `knobs` set, and a host connected to it (with what the device
/// re-sent after the handshake).
async fn armed(knobs: impl FnOnce(&mut Knobs)) -> (Arc<TokenDevice>, SimControl, Host, Vec<Value>) {
    let (dev, ctl) = device(SimOptions::default());
    ctl.set(knobs);
    let (h, again) = Host::connect(&dev).await;
    (dev, ctl, h, again)
}

fn booked(ctl: &SimControl, id: &str) -> Value {
    let text = ctl.sale_result(id).expect("booked result");
    serde_json::from_str(&text).expect("booked JSON")
}

#[tokio::test]
async fn lost_result_is_sold_once_and_redelivered_after_reconnect() {
    let (dev, ctl, mut h, again) = armed(|k| {
        k.lose_next_result = true;
        k.redeliver_after_reconnect = true;
    })
    .await;
    assert!(again.is_empty());
    h.basket("lose-1").await;
    // No type 3, and the link is still up.
    h.nothing_before_probe().await;
    assert_eq!(ctl.sales("lose-1"), 1);
    let real = booked(&ctl, "lose-1");
    assert_eq!((real["basketID"].as_str(), real["status"].as_i64()), (Some("lose-1"), Some(0)));
    // After a reconnect the register re-sends the real result.
    drop(h);
    let (mut h, again) = Host::connect(&dev).await;
    assert_eq!(again, vec![real]);
    // Once only: the next sale's result is sent.
    h.basket("lose-2").await;
    let m = h.sale_result().await;
    let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
    assert_eq!(v["basketID"], "lose-2");
    assert_eq!((ctl.sales("lose-1"), ctl.total_sales()), (1, 2));
}

#[tokio::test]
async fn garbled_result_is_the_first_half_of_the_real_json() {
    let (dev, ctl, mut h, _) = armed(|k| k.garble_next_result = true).await;
    h.basket("garble-1").await;
    let m = h.sale_result().await;
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
    let (_dev, ctl, mut h, _) = armed(|k| k.foreign_next_result = true).await;
    h.basket("mine-1").await;
    let m = h.sale_result().await;
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
        let opts = SimOptions { garble_rate: bad, ..SimOptions::default() };
        assert!(TokenDevice::new(opts, None).is_err());
    }
    let (dev, ctl) = device(SimOptions { lose_rate: 1.0, seed: Some(3), ..SimOptions::default() });
    let (mut h, _) = Host::connect(&dev).await;
    h.basket("rate-1").await;
    h.nothing_before_probe().await;
    assert_eq!(ctl.sales("rate-1"), 1);
    assert!(ctl.sale_result("rate-1").is_some());
    let (dev, ctl) = device(SimOptions { garble_rate: 1.0, ..SimOptions::default() });
    let (mut h, _) = Host::connect(&dev).await;
    h.basket("rate-2").await;
    let m = h.recv().await;
    assert!(m.ty == ty::SALE_RESULT && serde_json::from_slice::<Value>(&m.payload).is_err());
    assert_eq!(ctl.sales("rate-2"), 1);
}

#[tokio::test]
async fn cancelled_basket_leaves_the_result_knob_armed() {
    let (_dev, ctl, mut h, _) = armed(|k| k.cancel_next = true).await;
    // The knob the cancelled basket must leave armed (knobs are read by baskets only).
    ctl.set(|k| k.lose_next_result = true);
    h.basket("cancel-1").await;
    let m = h.recv().await;
    let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
    assert_eq!(v["status"], -1);
    h.basket("sold-1").await;
    h.nothing_before_probe().await;
    assert_eq!((ctl.sales("cancel-1"), ctl.sales("sold-1")), (0, 1));
}
