//! Paywall PhysicalAPI messages (`paywall.md`, seed 002): the sync sale body built from an
//! MQTT command, the field rules checked before any request, the MerchantUniqueCode, and
//! the answers parsed case-insensitively. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::api::Command;
use crate::drivers::cloud::money;

/// Namespace of posbridge's MerchantUniqueCodes (UUID v5). Fixed for ever: changing it
/// would give a retried request a new code and so a second sale.
pub const MUC_NAMESPACE: Uuid = Uuid::from_u128(0x6f0e_3c2a_9b1d_5e47_a0c8_2d4f_1b6e_8a93);

/// MerchantUniqueCode of a request: UUID v5 of `"<agent_id>/<request id>"` in
/// [`MUC_NAMESPACE`]. The agent id keeps two agents of one merchant apart even if their
/// cloud POS reuse request ids.
pub fn merchant_unique_code(agent_id: &str, request_id: &str) -> Uuid {
    Uuid::new_v5(
        &MUC_NAMESPACE,
        format!("{agent_id}/{request_id}").as_bytes(),
    )
}

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

// ------------------------------------------------------------------ request bodies

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SaleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_tag_code: Option<String>,
    #[serde(default)]
    pub send_notification_device_disconnected: bool,
    pub merchant_unique_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_code: Option<String>,
    /// A JSON decimal written from minor units, never through a float.
    pub amount: Box<RawValue>,
    pub currency_id: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
    #[serde(default)]
    pub split_payment_support: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Map<String, Value>>,
    #[serde(default)]
    pub products: Vec<Product>,
    #[serde(default)]
    pub skip_print_customer: bool,
    #[serde(default)]
    pub skip_print_merchant: bool,
    #[serde(default)]
    pub skip_payment_option_screen: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_options: Option<ReceiptOptions>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Method {
    pub payment_method_id: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Product {
    pub name: String,
    pub tax_group_id: i64,
    pub unit_code_id: i64,
    pub amount: Box<RawValue>,
    pub quantity: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method_id: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiptOptions {
    pub top_support: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<ReceiptText>,
    pub bottom_support: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottom: Option<ReceiptText>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiptText {
    pub text: String,
    pub font_size: i64,
}

/// Body of `sync/cancel`, `sync/sale/rollback`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PaymentRef {
    pub payment_request_id: String,
}

fn raw_decimal(minor: i64, exp: u32) -> Box<RawValue> {
    // A formatted decimal is always valid JSON; the fallback is unreachable in practice.
    RawValue::from_string(money::format_minor(minor, exp))
        .unwrap_or_else(|_| RawValue::from_string("0".into()).unwrap_or_default())
}

// ------------------------------------------------------------------ validation

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
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, FieldError> {
    v.as_object()
        .map_or_else(|| err(field, "expected an object"), Ok)
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
    v: Option<&Value>,
    field: &str,
    max: usize,
    required: bool,
) -> Result<Option<String>, FieldError> {
    match v {
        None | Some(Value::Null) if required => err(field, "required"),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if required && s.trim().is_empty() => {
            err(field, "must not be empty")
        }
        Some(Value::String(s)) if chars(s) > max => err(
            field,
            format!(
                "{} characters, more than the {max} Paywall allows",
                chars(s)
            ),
        ),
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
    cmd: &Command,
    terminal_guid: &str,
    muc: Uuid,
    currency_ids: &BTreeMap<String, u32>,
) -> Result<SaleRequest, FieldError> {
    let Some(amount) = cmd.amount else {
        return err("amount", "required");
    };
    let currency = cmd.currency.clone().unwrap_or_default();
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
        return err(
            "currency",
            format!("{currency:?}: posbridge does not know its minor unit"),
        );
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
            &[
                "name",
                "amount",
                "quantity",
                "tax_group_id",
                "unit_code_id",
                "payment_method_id",
            ],
        )?;
        let name =
            text(m.get("name"), &format!("{at}.name"), PRODUCT_NAME_MAX, true)?.unwrap_or_default();
        let line = int(m.get("amount"), &format!("{at}.amount"), true)?.unwrap_or(0);
        if line <= 0 {
            return err(
                format!("{at}.amount"),
                "must be a positive integer (minor units)",
            );
        }
        let quantity = int(m.get("quantity"), &format!("{at}.quantity"), true)?.unwrap_or(0);
        if quantity <= 0 {
            return err(format!("{at}.quantity"), "must be a positive integer");
        }
        let tax_group_id =
            int(m.get("tax_group_id"), &format!("{at}.tax_group_id"), true)?.unwrap_or(0);
        let unit_code_id =
            int(m.get("unit_code_id"), &format!("{at}.unit_code_id"), true)?.unwrap_or(0);
        let payment_method_id = int(
            m.get("payment_method_id"),
            &format!("{at}.payment_method_id"),
            false,
        )?;
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

    let display_code = text(
        x.get("display_code"),
        "display_code",
        DISPLAY_CODE_MAX,
        false,
    )?;
    let methods = match x.get("methods") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                int(Some(v), &format!("methods[{i}]"), true).map(|id| Method {
                    payment_method_id: id.unwrap_or(0),
                })
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
                        let text = text(
                            pm.get("text"),
                            &format!("{at}.text"),
                            RECEIPT_TEXT_MAX,
                            true,
                        )?
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

// ------------------------------------------------------------------ answers

/// The envelope every PhysicalAPI route answers with, from lower-cased keys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub errorcode: Option<i64>,
    #[serde(default)]
    pub succeeded: Option<bool>,
    #[serde(default)]
    pub failed: Option<bool>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub clientmessage: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
}

/// One payment as `sync/sale`, `inquiry` and `list` describe it (lower-cased keys).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PaymentView {
    #[serde(default)]
    pub paymentrequestid: Option<String>,
    #[serde(default)]
    pub paymentrequestactivityid: Option<String>,
    #[serde(default)]
    pub paymentstatus: Option<i64>,
    #[serde(default)]
    pub merchantuniquecode: Option<String>,
}

impl Envelope {
    /// Parse a reply body (keys already lower-cased by `cloud::classify`).
    pub fn parse(body: &Value) -> Result<Envelope, String> {
        serde_json::from_value(body.clone())
            .map_err(|e| format!("answer does not have Paywall's shape: {e}"))
    }

    pub fn ok(&self) -> bool {
        self.succeeded == Some(true)
            && self.failed != Some(true)
            && self.errorcode.unwrap_or(0) == 0
    }

    /// A definite "no": Failed, or Succeeded=false with an error code.
    pub fn refused(&self) -> bool {
        self.failed == Some(true)
            || (self.succeeded == Some(false) && self.errorcode.is_some_and(|c| c != 0))
    }

    /// `result` as one payment (sale, cancel, inquiry).
    pub fn payment(&self) -> Option<PaymentView> {
        self.result
            .as_ref()
            .and_then(|r| serde_json::from_value(r.clone()).ok())
    }

    /// `result` as a list of payments (`list`), or one payment wrapped.
    pub fn payments(&self) -> Vec<PaymentView> {
        match &self.result {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| serde_json::from_value(v.clone()).ok())
                .collect(),
            Some(Value::Object(m)) => match m.get("items").or_else(|| m.get("payments")) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| serde_json::from_value(v.clone()).ok())
                    .collect(),
                _ => self.payment().into_iter().collect(),
            },
            _ => vec![],
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(c) = self.errorcode {
            parts.push(format!("ErrorCode {c}"));
        }
        if let Some(c) = &self.clientmessage {
            parts.push(c.clone());
        }
        if let Some(m) = &self.message {
            parts.push(m.clone());
        }
        if parts.is_empty() {
            "no error detail".into()
        } else {
            parts.join(": ")
        }
    }
}

/// What a `PaymentStatus` value means. Paywall does not publish the values, so they are a
/// table here (verified only against `posbridge sim paywall`; README "Terminal: paywall").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not yet received by the device: `sale/rollback` still possible.
    Waiting,
    /// On the device, the customer is paying.
    OnDevice,
    Succeeded,
    Cancelled,
    Failed,
    /// A value not in the table: treated as still running, never guessed final.
    Other(i64),
}

pub const STATUS_WAITING: i64 = 1;
pub const STATUS_ON_DEVICE: i64 = 2;
pub const STATUS_SUCCEEDED: i64 = 3;
pub const STATUS_CANCELLED: i64 = 4;
pub const STATUS_FAILED: i64 = 5;

impl Status {
    pub fn from_code(c: i64) -> Status {
        match c {
            STATUS_WAITING => Status::Waiting,
            STATUS_ON_DEVICE => Status::OnDevice,
            STATUS_SUCCEEDED => Status::Succeeded,
            STATUS_CANCELLED => Status::Cancelled,
            STATUS_FAILED => Status::Failed,
            other => Status::Other(other),
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Cancelled | Status::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_command;
    use serde_json::json;

    fn cmd(extra: Value, amount: i64) -> Command {
        let mut v = json!({"v":1,"id":"pos-1","op":"payment","terminal":"paywall-1","amount":amount,"currency":"TRY"});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        parse_command(v.to_string().as_bytes(), 65536).expect("command")
    }

    fn ids() -> BTreeMap<String, u32> {
        BTreeMap::from([("TRY".to_string(), 1)])
    }

    fn product(name: &str, amount: i64) -> Value {
        json!({"name": name, "amount": amount, "quantity": 1, "tax_group_id": 10, "unit_code_id": 1})
    }

    fn check(extra: Value, amount: i64) -> Result<SaleRequest, FieldError> {
        sale_request(
            &cmd(extra, amount),
            "8ff33705-57c7-42dc-8341-a0053e7f3009",
            Uuid::nil(),
            &ids(),
        )
    }

    #[test]
    fn muc_is_a_stable_v5() {
        let a = merchant_unique_code("shop-1", "pos-1");
        assert_eq!(a, merchant_unique_code("shop-1", "pos-1"));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, merchant_unique_code("shop-1", "pos-2"));
        assert_ne!(a, merchant_unique_code("shop-2", "pos-1"));
        // Pinned: a change here would turn every retried request into a second sale.
        assert_eq!(
            a.to_string(),
            Uuid::new_v5(&MUC_NAMESPACE, b"shop-1/pos-1").to_string()
        );
        assert_eq!(
            MUC_NAMESPACE.to_string(),
            "6f0e3c2a-9b1d-5e47-a0c8-2d4f1b6e8a93"
        );
        assert_eq!(a.to_string(), "3a0f4d0f-c5cf-57b6-8ec2-861f71b7fb90");
    }

    #[test]
    fn body_has_exact_amounts_and_seed_names() {
        let r = check(
            json!({"products":[product("Saç Tıraşı", 2200), product("Su", 50)],
                   "customer":{"type":1,"first_name":"eda"},
                   "display_code":"Kişisel Bakım","methods":[1,2],
                   "receipt":{"top":{"text":"Üst","font_size":10}}}),
            2250,
        )
        .expect("valid");
        let v: Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("ser")).expect("json");
        let text = serde_json::to_string(&r).expect("ser");
        assert!(text.contains("\"Amount\":22.50"), "{text}");
        assert!(text.contains("\"Amount\":0.50"), "{text}");
        assert_eq!(v["CurrencyId"], 1);
        assert_eq!(v["Products"][0]["Name"], "Saç Tıraşı");
        assert_eq!(v["Products"][0]["TaxGroupId"], 10);
        assert_eq!(v["Customer"]["Type"], 1);
        assert_eq!(v["Customer"]["FirstName"], "eda");
        assert_eq!(v["Methods"][1]["PaymentMethodId"], 2);
        assert_eq!(v["ReceiptOptions"]["TopSupport"], true);
        assert_eq!(v["ReceiptOptions"]["BottomSupport"], false);
        assert_eq!(v["TerminalId"], "8ff33705-57c7-42dc-8341-a0053e7f3009");
    }

    #[test]
    fn every_rule_names_its_field() {
        let cases: Vec<(Value, i64, &str)> = vec![
            (json!({}), 100, "products"),
            (json!({"products": []}), 100, "products"),
            (json!({"products": "x"}), 100, "products"),
            (json!({"products": [product("a", 60)]}), 100, "products"),
            (
                json!({"products": [product(&"n".repeat(76), 100)]}),
                100,
                "products[0].name",
            ),
            (
                json!({"products": [{"amount":100,"quantity":1,"tax_group_id":1,"unit_code_id":1}]}),
                100,
                "products[0].name",
            ),
            (
                json!({"products": [{"name":"a","quantity":1,"tax_group_id":1,"unit_code_id":1}]}),
                100,
                "products[0].amount",
            ),
            (
                json!({"products": [{"name":"a","amount":100,"tax_group_id":1,"unit_code_id":1}]}),
                100,
                "products[0].quantity",
            ),
            (
                json!({"products": [{"name":"a","amount":100,"quantity":1,"unit_code_id":1}]}),
                100,
                "products[0].tax_group_id",
            ),
            (
                json!({"products": [{"name":"a","amount":100,"quantity":1,"tax_group_id":1}]}),
                100,
                "products[0].unit_code_id",
            ),
            (
                json!({"products": [{"name":"a","amount":1.5,"quantity":1,"tax_group_id":1,"unit_code_id":1}]}),
                100,
                "products[0].amount",
            ),
            (
                json!({"products": [product("a", 100), {"name":"b","amount":0,"quantity":1,"tax_group_id":1,"unit_code_id":1}]}),
                100,
                "products[1].amount",
            ),
            (
                json!({"products": [{"name":"a","amount":100,"quantity":1,"tax_group_id":1,"unit_code_id":1,"colour":"red"}]}),
                100,
                "products[0].colour",
            ),
            (
                json!({"products": [product("a", 100)], "customer": {"first_name":"x"}}),
                100,
                "customer.type",
            ),
            (
                json!({"products": [product("a", 100)], "customer": {"type":1,"phone":"0".repeat(21)}}),
                100,
                "customer.phone",
            ),
            (
                json!({"products": [product("a", 100)], "customer": {"type":1,"company_name":"c".repeat(176)}}),
                100,
                "customer.company_name",
            ),
            (
                json!({"products": [product("a", 100)], "customer": {"type":1,"address":"a".repeat(256)}}),
                100,
                "customer.address",
            ),
            (
                json!({"products": [product("a", 100)], "customer": {"type":1,"tax_number":"1".repeat(26)}}),
                100,
                "customer.tax_number",
            ),
            (
                json!({"products": [product("a", 100)], "customer": {"type":1,"email":7}}),
                100,
                "customer.email",
            ),
            (
                json!({"products": [product("a", 100)], "customer": "x"}),
                100,
                "customer",
            ),
            (
                json!({"products": [product("a", 100)], "display_code": "d".repeat(26)}),
                100,
                "display_code",
            ),
            (
                json!({"products": [product("a", 100)], "methods": ["card"]}),
                100,
                "methods[0]",
            ),
            (
                json!({"products": [product("a", 100)], "receipt": {"top": {"text":"t".repeat(151),"font_size":10}}}),
                100,
                "receipt.top.text",
            ),
            (
                json!({"products": [product("a", 100)], "receipt": {"bottom": {"text":"t","font_size":100}}}),
                100,
                "receipt.bottom.font_size",
            ),
            (
                json!({"products": [product("a", 100)], "receipt": {"middle": {}}}),
                100,
                "receipt.middle",
            ),
            (
                json!({"products": [product("a", 100)], "skip_print_customer": "yes"}),
                100,
                "skip_print_customer",
            ),
        ];
        for (extra, amount, field) in cases {
            let e = check(extra.clone(), amount).expect_err(&format!("{extra} must fail"));
            assert_eq!(e.field, field, "{extra}: {e}");
            assert!(e.to_string().starts_with(&format!("field {field}: ")));
        }
        // Lengths count characters, not bytes: 75 Turkish letters pass.
        assert!(check(json!({"products": [product(&"ş".repeat(75), 100)]}), 100).is_ok());
        let e = sale_request(
            &{
                let mut c = cmd(json!({"products": [product("a", 100)]}), 100);
                c.currency = Some("USD".into());
                c
            },
            "g",
            Uuid::nil(),
            &ids(),
        )
        .expect_err("currency");
        assert_eq!(e.field, "currency");
    }

    #[test]
    fn answers_parse_whatever_the_key_casing() {
        use crate::drivers::cloud::classify;
        for body in [
            r#"{"Result":{"PaymentRequestId":"p1","PaymentStatus":3},"ErrorCode":0,"Succeeded":true,"Failed":false}"#,
            r#"{"result":{"paymentRequestId":"p1","paymentStatus":3},"errorCode":0,"succeeded":true,"failed":false}"#,
            r#"{"RESULT":{"PAYMENTREQUESTID":"p1","PAYMENTSTATUS":3},"SUCCEEDED":true}"#,
        ] {
            let r = classify(200, Some("application/json"), body.as_bytes()).expect("json");
            let e = Envelope::parse(&r.body).expect("envelope");
            assert!(e.ok(), "{body}");
            let p = e.payment().expect("payment");
            assert_eq!(p.paymentrequestid.as_deref(), Some("p1"));
            assert_eq!(p.paymentstatus, Some(3));
        }
        let r = classify(
            200,
            Some("application/json"),
            br#"{"Succeeded":false,"Failed":true,"ErrorCode":51,"ClientMessage":"PaymentDeclined","Message":"Reddedildi"}"#,
        )
        .expect("json");
        let e = Envelope::parse(&r.body).expect("envelope");
        assert!(!e.ok() && e.refused());
        assert_eq!(e.describe(), "ErrorCode 51: PaymentDeclined: Reddedildi");
        // Wrong types are an error, not a crash.
        let r = classify(200, Some("application/json"), br#"{"Succeeded":"yes"}"#).expect("json");
        assert!(Envelope::parse(&r.body).is_err());
        // A list answer.
        let r = classify(
            200,
            Some("application/json"),
            br#"{"Succeeded":true,"Result":[{"PaymentRequestId":"a","PaymentStatus":2,"MerchantUniqueCode":"m"}]}"#,
        )
        .expect("json");
        let ps = Envelope::parse(&r.body).expect("env").payments();
        assert_eq!(ps.len(), 1);
        assert_eq!(
            Status::from_code(ps[0].paymentstatus.unwrap_or(0)),
            Status::OnDevice
        );
        assert!(!Status::from_code(42).is_final());
    }
}
