//! What the simulated terminal shows of a process (`kaspi.md`): `/v2/status` and
//! `/v2/actualize` — waiting with its sub-status during the customer time, then its
//! outcome (or `unknown`, by convention or knob), booking a success once.

use std::collections::HashMap;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{param, Kind, Method, Plan, Reply, Terminal};
use crate::drivers::kaspi::api::code;

impl Terminal {
    /// The process as `/status` (or, with `actualize`, `/v2/actualize`) shows it now.
    fn view(&mut self, now: Instant, id: &str, actualize: bool) -> Option<Value> {
        let settings = self.settings.clone();
        let p = self.procs.get_mut(id)?;
        let elapsed = now.duration_since(p.started);
        let base = json!({ "processId": id });
        if elapsed < settings.customer_time {
            let third = settings.customer_time / 3;
            let sub = match (p.kind, p.method) {
                _ if elapsed < third => "WaitUser",
                (Kind::Refund, _) => "ProcessRefund",
                (Kind::Payment, Method::Qr) => "WaitForQrConfirmation",
                (Kind::Payment, Method::Card) if elapsed < third * 2 => "ProcessingCard",
                (Kind::Payment, Method::Card) => "WaitForPinCode",
            };
            let mut v = base;
            v["status"] = "wait".into();
            v["subStatus"] = sub.into();
            return Some(v);
        }
        let unknown = |mut v: Value| {
            v["status"] = "unknown".into();
            v["subStatus"] = "ProcessCancelled".into();
            v["message"] = "Операция жойылды".into();
            v
        };
        if p.unknown_left > 0 {
            p.unknown_left -= 1;
            return Some(unknown(base));
        }
        let plan = match &p.plan {
            Plan::UnknownThenFail if actualize && elapsed >= settings.qr_lifetime => {
                p.actualized = true;
                Plan::Fail {
                    sub: "QrTransactionFailure",
                    message: "QR-кодтың жарамдылық мерзімі өтті",
                }
            }
            Plan::UnknownThenFail if !p.actualized => return Some(unknown(base)),
            Plan::UnknownThenFail => Plan::Fail {
                sub: "QrTransactionFailure",
                message: "QR-кодтың жарамдылық мерзімі өтті",
            },
            other => other.clone(),
        };
        let mut v = base;
        match plan {
            Plan::Success => {
                let success_sub = match p.method {
                    Method::Qr => "QrTransactionSuccess",
                    Method::Card => "CardTransactionSuccess",
                };
                v["status"] = "success".into();
                v["subStatus"] = success_sub.into();
                v["chequeInfo"] = p.cheque.clone();
                let txn = p
                    .cheque
                    .get("orderNumber")
                    .or_else(|| p.cheque.get("rrn"))
                    .cloned()
                    .unwrap_or(Value::Null);
                v["transactionId"] = txn;
                v["addInfo"] = json!({ "LoanTerm": 0, "IsOffer": false, "ProductType": "Gold" });
            }
            Plan::Fail { sub, message } => {
                v["status"] = "fail".into();
                v["subStatus"] = sub.into();
                v["message"] = message.into();
            }
            Plan::UnknownThenFail => return Some(unknown(v)),
        }
        let success = v["status"] == "success";
        if success && !p.counted_final {
            p.counted_final = true;
            let (kind, tenge, refund_of) = (p.kind, p.tenge, p.refund_of.clone());
            let rid = p
                .cheque
                .get("orderNumber")
                .or_else(|| p.cheque.get("rrn"))
                .and_then(Value::as_str)
                .map(str::to_string);
            match (kind, refund_of, rid) {
                (Kind::Payment, _, Some(rid)) => {
                    self.by_refund_id.insert(rid, id.to_string());
                }
                (Kind::Refund, Some(of), _) => {
                    if let Some(pay) =
                        self.by_refund_id.get(&of).cloned().and_then(|pid| self.procs.get_mut(&pid))
                    {
                        pay.refundable -= tenge;
                    }
                }
                _ => {}
            }
        }
        Some(v)
    }

    pub fn status(&mut self, now: Instant, params: &HashMap<String, String>) -> Reply {
        self.counts.status_calls += 1;
        let id = match param(params, "processId") {
            Ok(id) => id.to_string(),
            Err(r) => return r,
        };
        let Some(v) = self.view(now, &id, false) else {
            return Reply::err(200, code::PROCESS_NOT_FOUND, "Process not found");
        };
        let mut reply = Reply::ok(v);
        if let Some(p) = self.procs.get_mut(&id).filter(|p| p.garble_status_left > 0) {
            p.garble_status_left -= 1;
            reply.body = crate::sim::first_half(&reply.body).to_string();
        }
        reply
    }

    pub fn actualize(&mut self, now: Instant, params: &HashMap<String, String>) -> Reply {
        self.counts.actualize_calls += 1;
        let id = match param(params, "processId") {
            Ok(id) => id.to_string(),
            Err(r) => return r,
        };
        // kaspi.md: at most once per 10 s — the simulator counts offenders.
        if let Some(last) = self.last_actualize.insert(id.clone(), now) {
            if now.duration_since(last) < self.settings.actualize_gap {
                self.counts.actualize_too_soon += 1;
            }
        }
        let Some(p) = self.procs.get(&id) else {
            return Reply::err(200, code::PROCESS_NOT_FOUND, "Process not found");
        };
        let in_unknown = now.duration_since(p.started) >= self.settings.customer_time
            && (p.unknown_left > 0 || (p.plan == Plan::UnknownThenFail && !p.actualized));
        if !in_unknown {
            return Reply::err(
                200,
                code::UNABLE_TO_ACTUALIZE,
                "This transaction is unable to actualize",
            );
        }
        match self.view(now, &id, true) {
            Some(v) => Reply::ok(v),
            None => Reply::err(200, code::PROCESS_NOT_FOUND, "Process not found"),
        }
    }
}
