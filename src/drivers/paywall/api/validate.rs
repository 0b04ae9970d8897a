//! The field rules checked before any request (`paywall.md`: Decisions): products
//! required and adding up to the amount, lengths and ranges as in the seed's tables,
//! known currency, no unknown keys. [`sale_request`] builds the sync sale body from a
//! `payment` command once they hold, or names the first broken rule by its MQTT field
//! ([`FieldError`]).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::request::{raw_decimal, Method, Product, ReceiptOptions, ReceiptText, SaleRequest};
use crate::api::Command;
use crate::drivers::cloud::money;

/// Field lengths of the seed's tables: (MQTT name, Paywall name, max characters).
pub const CUSTOMER_FIELDS: &[(&str, &str, usize)] = &[
    ("first_name", "FirstName", 50),
    ("middle_name", "MiddleName", 50),
    ("last_name", "LastName", 50),
    ("company_name", "CompanyName", 175),
    ("tax_office_code", "TaxOfficeCode", 50),
    ("tax_number", "TaxNumber", 25),
    ("phone", "Phone", 20),
    ("email", "Email", 100),
    ("identity", "Identity", 20),
    ("country", "Country", 50),
    ("city", "City", 100),
    ("district", "District", 100),
    ("neighborhood", "Neighborhood", 100),
    ("address", "Address", 255),
];
pub const PRODUCT_NAME_MAX: usize = 75;
pub const DISPLAY_CODE_MAX: usize = 25;
pub const RECEIPT_TEXT_MAX: usize = 150;
/// `FontSize` is "int, 2 digits".
pub const FONT_SIZE_MAX: i64 = 99;

/// A rule broken by the command, naming its MQTT field (`products[1].name`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field {}: {}", self.field, self.message)
    }
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field: field.into(), message: message.into() })
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, FieldError> {
    v.as_object().map_or_else(|| err(field, "expected an object"), Ok)
}

fn int(v: Option<&Value>, field: &str, required: bool) -> Result<Option<i64>, FieldError> {
    match v {
        None | Some(Value::Null) if required => err(field, "required"),
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => err(field, format!("expected an integer, got {n}")),
        },
        Some(_) => err(field, "expected an integer"),
    }
}

fn text(
    v: Option<&Value>, field: &str, max: usize, required: bool,
) -> Result<Option<String>, FieldError> {
    match v {
        None | Some(Value::Null) if required => err(field, "required"),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if required && s.trim().is_empty() => {
            err(field, "must not be empty")
        }
        Some(Value::String(s)) if chars(s) > max => {
            err(field, format!("{} characters, more than the {max} Paywall allows", chars(s)))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => err(field, "expected a string"),
    }
}

fn flag(v: Option<&Value>, field: &str) -> Result<bool, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => err(field, "expected true or false"),
    }
}

fn only_keys(m: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), FieldError> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return err(format!("{at}.{k}"), "unknown field");
        }
    }
    Ok(())
}

/// Build the sync sale body from a `payment` command, or name the first broken rule
/// (`paywall.md`: Decisions — products required and summing to the amount, lengths as in
/// the seed's tables, currency known).
pub fn sale_request(
    cmd: &Command, terminal_guid: &str, muc: Uuid, currency_ids: &BTreeMap<String, u32>,
) -> Result<SaleRequest, FieldError> {
    let Some(amount) = cmd.amount() else {
        return err("amount", "required");
    };
    let currency = cmd.currency().map(|c| c.to_string()).unwrap_or_default();
    let Some(&currency_id) = currency_ids.get(&currency) else {
        let known: Vec<&str> = currency_ids.keys().map(String::as_str).collect();
        return err(
            "currency",
            format!(
                "{currency:?} has no Paywall CurrencyId configured (known: {}; see currency_ids)",
                known.join(", ")
            ),
        );
    };
    let Some(exp) = money::exponent(&currency) else {
        return err("currency", format!("{currency:?}: posbridge does not know its minor unit"));
    };
    let x = &cmd.extra;

    let products = match x.get("products") {
        None | Some(Value::Null) => return err("products", "required by Paywall"),
        Some(Value::Array(a)) if a.is_empty() => {
            return err("products", "at least one product is required")
        }
        Some(Value::Array(a)) => a,
        Some(_) => return err("products", "expected an array"),
    };
    let mut out_products = Vec::with_capacity(products.len());
    let mut sum: i64 = 0;
    for (i, p) in products.iter().enumerate() {
        let at = format!("products[{i}]");
        let m = object(p, &at)?;
        only_keys(
            m,
            &at,
            &["name", "amount", "quantity", "tax_group_id", "unit_code_id", "payment_method_id"],
        )?;
        let name =
            text(m.get("name"), &format!("{at}.name"), PRODUCT_NAME_MAX, true)?.unwrap_or_default();
        let line = int(m.get("amount"), &format!("{at}.amount"), true)?.unwrap_or(0);
        if line <= 0 {
            return err(format!("{at}.amount"), "must be a positive integer (minor units)");
        }
        let quantity = int(m.get("quantity"), &format!("{at}.quantity"), true)?.unwrap_or(0);
        if quantity <= 0 {
            return err(format!("{at}.quantity"), "must be a positive integer");
        }
        let tax_group_id =
            int(m.get("tax_group_id"), &format!("{at}.tax_group_id"), true)?.unwrap_or(0);
        let unit_code_id =
            int(m.get("unit_code_id"), &format!("{at}.unit_code_id"), true)?.unwrap_or(0);
        let payment_method_id =
            int(m.get("payment_method_id"), &format!("{at}.payment_method_id"), false)?;
        sum = match sum.checked_add(line) {
            Some(s) => s,
            None => return err(format!("{at}.amount"), "sum of products overflows"),
        };
        out_products.push(Product {
            name,
            tax_group_id,
            unit_code_id,
            amount: raw_decimal(line, exp),
            quantity,
            payment_method_id,
        });
    }
    if sum != amount {
        return err(
            "products",
            format!(
                "product amounts add up to {sum}, not the command's amount {amount} (Paywall: the sum of product amounts must equal Amount)"
            ),
        );
    }

    let customer = match x.get("customer") {
        None | Some(Value::Null) => None,
        Some(c) => {
            let m = object(c, "customer")?;
            let mut allowed: Vec<&str> = CUSTOMER_FIELDS.iter().map(|f| f.0).collect();
            allowed.push("type");
            only_keys(m, "customer", &allowed)?;
            let mut out = Map::new();
            let ty = int(m.get("type"), "customer.type", true)?.unwrap_or(0);
            out.insert("Type".into(), Value::from(ty));
            for (mqtt, paywall, max) in CUSTOMER_FIELDS {
                if let Some(v) = text(m.get(*mqtt), &format!("customer.{mqtt}"), *max, false)? {
                    out.insert((*paywall).into(), Value::String(v));
                }
            }
            Some(out)
        }
    };

    let display_code = text(x.get("display_code"), "display_code", DISPLAY_CODE_MAX, false)?;
    let methods = match x.get("methods") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                int(Some(v), &format!("methods[{i}]"), true)
                    .map(|id| Method { payment_method_id: id.unwrap_or(0) })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return err("methods", "expected an array of payment method ids"),
    };
    let receipt_options = match x.get("receipt") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let m = object(r, "receipt")?;
            only_keys(m, "receipt", &["top", "bottom"])?;
            let part = |key: &str| -> Result<Option<ReceiptText>, FieldError> {
                match m.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => {
                        let at = format!("receipt.{key}");
                        let pm = object(v, &at)?;
                        only_keys(pm, &at, &["text", "font_size"])?;
                        let text =
                            text(pm.get("text"), &format!("{at}.text"), RECEIPT_TEXT_MAX, true)?
                                .unwrap_or_default();
                        let font_size = int(pm.get("font_size"), &format!("{at}.font_size"), true)?
                            .unwrap_or(0);
                        if !(1..=FONT_SIZE_MAX).contains(&font_size) {
                            return err(
                                format!("{at}.font_size"),
                                format!("must be 1 to {FONT_SIZE_MAX} (two digits)"),
                            );
                        }
                        Ok(Some(ReceiptText { text, font_size }))
                    }
                }
            };
            let top = part("top")?;
            let bottom = part("bottom")?;
            Some(ReceiptOptions {
                top_support: top.is_some(),
                top,
                bottom_support: bottom.is_some(),
                bottom,
            })
        }
    };
    Ok(SaleRequest {
        terminal_id: Some(terminal_guid.to_string()),
        terminal_tag_code: None,
        send_notification_device_disconnected: false,
        merchant_unique_code: muc.to_string(),
        display_code,
        amount: raw_decimal(amount, exp),
        currency_id,
        methods,
        split_payment_support: false,
        customer,
        products: out_products,
        skip_print_customer: flag(x.get("skip_print_customer"), "skip_print_customer")?,
        skip_print_merchant: flag(x.get("skip_print_merchant"), "skip_print_merchant")?,
        skip_payment_option_screen: flag(
            x.get("skip_payment_option_screen"),
            "skip_payment_option_screen",
        )?,
        receipt_options,
    })
}
