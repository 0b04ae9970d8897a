//! The real Paywall API's rules for a `sync/sale` body, as the mock applies them: lengths,
//! required fields, GUIDs, the currency, and the sum rule (the products add up to
//! `Amount`). A refusal names the Paywall field it is about.

use serde_json::Value;
use uuid::Uuid;

use crate::drivers::cloud::money;
use crate::drivers::paywall::api::{
    SaleRequest, CUSTOMER_FIELDS, DISPLAY_CODE_MAX, FONT_SIZE_MAX, PRODUCT_NAME_MAX,
    RECEIPT_TEXT_MAX,
};

fn is_guid(s: &str) -> bool {
    Uuid::parse_str(s).is_ok() && s.len() == 36
}

/// The real API's rules for a sale body; `Err` names the Paywall field.
pub fn check_sale(r: &SaleRequest) -> Result<i64, String> {
    let long = |field: &str, v: &str, max: usize| -> Result<(), String> {
        if v.chars().count() > max {
            Err(format!("{field}: longer than {max} characters"))
        } else {
            Ok(())
        }
    };
    match (&r.terminal_id, &r.terminal_tag_code) {
        (Some(t), _) if !is_guid(t) => return Err("TerminalId: not a GUID".into()),
        (None, Some(tag)) => long("TerminalTagCode", tag, 25)?,
        (None, None) => return Err("TerminalId: TerminalId or TerminalTagCode is required".into()),
        _ => {}
    }
    if !is_guid(&r.merchant_unique_code) {
        return Err("MerchantUniqueCode: not a GUID".into());
    }
    if r.currency_id != 1 {
        return Err(format!("CurrencyId: {} is not supported", r.currency_id));
    }
    let amount = money::parse_decimal(r.amount.get(), 2).map_err(|e| format!("Amount: {e}"))?;
    if amount <= 0 {
        return Err("Amount: must be positive".into());
    }
    if let Some(d) = &r.display_code {
        long("DisplayCode", d, DISPLAY_CODE_MAX)?;
    }
    if r.products.is_empty() {
        return Err("Products: required".into());
    }
    let mut sum = 0i64;
    for (i, p) in r.products.iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(format!("Products[{i}].Name: required"));
        }
        long(&format!("Products[{i}].Name"), &p.name, PRODUCT_NAME_MAX)?;
        let a = money::parse_decimal(p.amount.get(), 2)
            .map_err(|e| format!("Products[{i}].Amount: {e}"))?;
        if a <= 0 {
            return Err(format!("Products[{i}].Amount: must be positive"));
        }
        if p.quantity <= 0 {
            return Err(format!("Products[{i}].Quantity: must be positive"));
        }
        sum += a;
    }
    if sum != amount {
        return Err("Products: the sum of product amounts must equal Amount".into());
    }
    if let Some(c) = &r.customer {
        if !c.get("Type").is_some_and(Value::is_i64) {
            return Err("Customer.Type: required".into());
        }
        for (_, name, max) in CUSTOMER_FIELDS {
            if let Some(v) = c.get(*name) {
                let s = v.as_str().ok_or(format!("Customer.{name}: not a string"))?;
                long(&format!("Customer.{name}"), s, *max)?;
            }
        }
    }
    if let Some(o) = &r.receipt_options {
        for (name, part) in [("Top", &o.top), ("Bottom", &o.bottom)] {
            if let Some(p) = part {
                long(&format!("ReceiptOptions.{name}.Text"), &p.text, RECEIPT_TEXT_MAX)?;
                if !(0..=FONT_SIZE_MAX).contains(&p.font_size) {
                    return Err(format!("ReceiptOptions.{name}.FontSize: two digits at most"));
                }
            }
        }
    }
    Ok(amount)
}
