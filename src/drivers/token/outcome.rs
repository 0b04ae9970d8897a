//! What a sale's end means: a `SaleEnd` from the session (a type 3 result, a type 9
//! "not processed", or a result that could not be read) turned into the fact the engine
//! records, matched against the basket in flight, with the receipt's details as
//! `PaymentInfo`.

use serde_json::{json, Value};

use super::session::SaleEnd;
use crate::api::PaymentInfo;
use crate::drivers::{Fact, Refusal};

/// How a sale ended → the fact it states, checked against the basket in flight: a type 3
/// must carry this basket's id, or be the documented failure shape
/// `{"basketID":"","message":…,"status":-1}` (token.md: failures may not echo the id).
pub(super) fn sale_fact(id: &str, end: SaleEnd) -> Fact {
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
