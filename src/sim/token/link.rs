//! One link as the register speaks it: frames in and out through the codec (with the
//! corrupt-CRC knob), the handshake (certificate, the late `4 OK`, key switch), device
//! and fiscal info, results re-sent after a reconnect, and the basket: checked against
//! the fiscal info, answered `1 OK`, sold (or cancelled, not processed, dropped mid-sale)
//! and its type 3 result sent, spoiled by a result fault when one applies.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Encoder, Framed};

use super::device::{lock, Shared};
use crate::drivers::token::cert::CHALLENGE;
use crate::drivers::token::codec::{ty, Inbound, Message, TokenCodec};
use crate::drivers::token::crypto::Key;
use crate::sim::faults::AnswerFault;

pub(super) struct DeviceLink<T> {
    pub(super) io: Framed<T, TokenCodec>,
    pub(super) shared: Arc<Shared>,
    pub(super) verified: bool,
    pub(super) keyed: bool,
    pub(super) fiscal_loaded: bool,
    pub(super) hello_ok_pending: bool,
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
        self.send(Message::new(ty::ERROR, text.as_bytes().to_vec())).await
    }

    pub(super) async fn run(&mut self) -> std::io::Result<()> {
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
            self.send(Message::new(ty::BASKET_STATUS, status.to_string())).await?;
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
            Some(AnswerFault::Lose) => return Ok(Flow::Continue),
            Some(AnswerFault::Garble) => crate::sim::first_half(&result).to_string(),
            Some(AnswerFault::Foreign) => match serde_json::from_str::<Value>(&result) {
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
            format!("{}:{basket_id}:{}", self.shared.opts.seed.unwrap_or(0), s.receipt_no)
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
