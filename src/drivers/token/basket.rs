//! The contract's `basket` (mqtt-api.md: The basket) → the device's basket (`token.md`:
//! JSON models), validated before any device is touched. Every rejection names its field.
//!
//! Money is in kuruş on both sides, so prices and amounts map 1:1. Two conversions:
//! - `quantity`: the contract's units (≤ 3 decimals) × `quantity_scale` (default 1000,
//!   the seed's example sends 1000 for one unit; its text says ×100 — check on a device);
//! - `adjust.value`: minor units for an amount, hundredths of a percent for a percentage
//!   (the seed: "value × 100"), both passed through unchanged.
//!
//! Line totals are `price × quantity` rounded half-up to the kuruş per line, a
//! percentage adjustment is rounded half-up once on the total; the device's own rounding
//! is unverified (docs/terminals/token.md).

use serde_json::{json, Map, Value};

use super::session::FiscalInfo;

const DOCUMENT_TYPES: &[i64] = &[0, 9000, 9001, 9002, 9005, 9006, 9007, 9008];
const PAYMENT_TYPES: &[i64] = &[1, 2, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];
const MAX_ITEMS: usize = 1000;
/// Payment lines in one basket: a bound on input, far above any real sale.
const MAX_PAYMENTS: usize = 1000;

/// customerInfo fields: contract (snake_case) → device. The device spells
/// `citySubdivisonName` (sic); both spellings are accepted on our side.
const CUSTOMER_FIELDS: &[(&str, &str)] = &[
    ("building_name", "buildingName"),
    ("building_number", "buildingNumber"),
    ("city_name", "cityName"),
    ("city_subdivison_name", "citySubdivisonName"),
    ("city_subdivision_name", "citySubdivisonName"),
    ("country", "country"),
    ("email", "email"),
    ("name", "name"),
    ("postal_zone", "postalZone"),
    ("region", "region"),
    ("room", "room"),
    ("street", "street"),
    ("tax_id", "taxID"),
    ("tax_scheme", "taxScheme"),
    ("telefax", "telefax"),
    ("telephone", "telephone"),
];

/// A basket that passed every check that needs no device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceBasket {
    /// The device JSON without `basketID` (added when it is sent).
    pub body: Map<String, Value>,
    /// Items total after the adjustment, kuruş.
    pub total: i64,
}

impl DeviceBasket {
    pub fn with_id(&self, basket_id: &str) -> Value {
        let mut m = Map::new();
        m.insert("basketID".into(), Value::String(basket_id.into()));
        m.extend(self.body.clone());
        Value::Object(m)
    }

    /// Checks that need the fiscal info (`token.md`: Decisions): known sections, the
    /// receipt limit.
    pub fn check_against(&self, info: &FiscalInfo) -> Result<(), String> {
        let sections = info.section_numbers();
        if let Some(items) = self.body.get("items").and_then(Value::as_array) {
            for (i, it) in items.iter().enumerate() {
                let s = it["sectionNo"].as_i64().unwrap_or(-1);
                if !sections.contains(&s) {
                    return Err(format!(
                        "field basket.items[{i}].section_no: section {s} is not defined on the register (known: {sections:?})"
                    ));
                }
            }
        }
        if let Some(limit) = info.receipt_limit() {
            if self.total > limit {
                return Err(format!(
                    "field amount: {} exceeds the register's receipt limit {limit}",
                    self.total
                ));
            }
        }
        Ok(())
    }
}

struct Obj<'a> {
    at: String,
    m: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(at: impl Into<String>, v: &'a Value, allowed: &[&str]) -> Result<Obj<'a>, String> {
        let at = at.into();
        let m = v.as_object().ok_or_else(|| format!("field {at}: expected an object"))?;
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(format!("field {at}.{k}: unknown field"));
            }
        }
        Ok(Obj { at, m })
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.m.get(k).filter(|v| !v.is_null())
    }

    fn int(&self, k: &str, default: Option<i64>, min: i64) -> Result<i64, String> {
        match self.get(k) {
            None => default.ok_or_else(|| format!("field {}.{k}: required", self.at)),
            Some(v) => match v.as_i64() {
                Some(n) if n >= min => Ok(n),
                Some(_) => Err(format!("field {}.{k}: must be ≥ {min}", self.at)),
                None => Err(format!("field {}.{k}: expected an integer", self.at)),
            },
        }
    }

    fn string(&self, k: &str, default: Option<&str>) -> Result<String, String> {
        match self.get(k) {
            None => default
                .map(str::to_string)
                .ok_or_else(|| format!("field {}.{k}: required", self.at)),
            Some(Value::String(s)) if s.chars().count() <= 256 => Ok(s.clone()),
            Some(Value::String(_)) => Err(format!("field {}.{k}: longer than 256", self.at)),
            Some(_) => Err(format!("field {}.{k}: expected a string", self.at)),
        }
    }

    fn boolean(&self, k: &str) -> Result<bool, String> {
        match self.get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("field {}.{k}: expected true or false", self.at)),
        }
    }

    /// A required array of 1 to `max` objects, each with only the `allowed` keys.
    fn list(&self, k: &str, max: usize, allowed: &[&str]) -> Result<Vec<Obj<'a>>, String> {
        let at = &self.at;
        let v = self.get(k).ok_or_else(|| format!("field {at}.{k}: required"))?;
        let a = v.as_array().ok_or_else(|| format!("field {at}.{k}: expected an array"))?;
        if a.is_empty() {
            return Err(format!("field {at}.{k}: must not be empty"));
        }
        if a.len() > max {
            return Err(format!("field {at}.{k}: more than {max} entries"));
        }
        a.iter().enumerate().map(|(i, v)| Obj::new(format!("{at}.{k}[{i}]"), v, allowed)).collect()
    }

    fn one_of(&self, k: &str, default: Option<i64>, set: &[i64]) -> Result<i64, String> {
        let n = self.int(k, default, i64::MIN)?;
        if set.contains(&n) {
            Ok(n)
        } else {
            Err(format!("field {}.{k}: {n} is not one of {set:?}", self.at))
        }
    }
}

/// A JSON number of units with at most 3 decimals → thousandths.
fn milli_units(v: &Value) -> Option<i64> {
    let f = v.as_f64()?;
    let m = (f * 1000.0).round();
    if !(1.0..=1e12).contains(&m) || (f * 1000.0 - m).abs() > 1e-6 {
        return None;
    }
    Some(m as i64)
}

/// `a × b / d`, rounded half-up, for non-negative inputs.
fn mul_div_round(a: i64, b: i64, d: i64) -> i128 {
    let n = a as i128 * b as i128;
    (2 * n + d as i128) / (2 * d as i128)
}

/// Validate the command's basket and map it to the device's shape.
pub fn validate(
    basket: Option<&Value>, amount: Option<i64>, currency: Option<&str>, quantity_scale: u32,
) -> Result<DeviceBasket, String> {
    if let Some(c) = currency {
        if c != "TRY" {
            return Err(format!(
                "field currency: the Token register takes TRY (kuruş) only, not {c}"
            ));
        }
    }
    let basket = basket.ok_or("field basket: required for a payment on a token terminal")?;
    let b = Obj::new(
        "basket",
        basket,
        &["document_type", "create_invoice", "is_void", "items", "payments", "customer", "adjust"],
    )?;
    let document_type = b.one_of("document_type", Some(0), DOCUMENT_TYPES)?;
    let item_objs = b.list(
        "items",
        MAX_ITEMS,
        &[
            "name",
            "price",
            "quantity",
            "section_no",
            "tax_percent",
            "plu_no",
            "barcode",
            "unit",
            "type",
            "vat_id",
            "limit",
            "payment_type",
        ],
    )?;
    let mut items = vec![];
    let mut total: i128 = 0;
    for (i, it) in item_objs.iter().enumerate() {
        let name = it.string("name", None)?;
        if name.trim().is_empty() {
            return Err(format!("field basket.items[{i}].name: must not be empty"));
        }
        let price = it.int("price", None, 0)?;
        let q = it.get("quantity").ok_or(format!("field basket.items[{i}].quantity: required"))?;
        let milli = milli_units(q).ok_or(format!(
            "field basket.items[{i}].quantity: expected a positive number of units with at most 3 decimals"
        ))?;
        let scaled = milli as i128 * quantity_scale as i128;
        if scaled % 1000 != 0 {
            return Err(format!(
                "field basket.items[{i}].quantity: more decimals than the register's quantity_scale ({quantity_scale}) can carry"
            ));
        }
        let line = mul_div_round(price, milli, 1000);
        let limit = it.int("limit", Some(0), 0)?;
        if limit > 0 && line > limit as i128 {
            return Err(format!(
                "field basket.items[{i}].limit: line total {line} exceeds the item limit {limit}"
            ));
        }
        total += line;
        items.push(json!({
            "barcode": it.string("barcode", Some(""))?,
            "name": name,
            "pluNo": it.int("plu_no", Some(0), 0)?,
            "price": price,
            "sectionNo": it.int("section_no", None, 0)?,
            "taxPercent": it.int("tax_percent", Some(1000), 0)?,
            "type": it.one_of("type", Some(0), &[0, 1, 2])?,
            "unit": it.string("unit", Some("Adet"))?,
            "vatID": it.int("vat_id", Some(0), 0)?,
            "limit": limit,
            "quantity": (scaled / 1000) as i64,
            "paymentType": it.int("payment_type", Some(0), 0)?,
        }));
    }

    let adjust = match b.get("adjust") {
        None => Value::Null,
        Some(v) => {
            let a =
                Obj::new("basket.adjust", v, &["description", "surcharge", "percent", "value"])?;
            let surcharge = a.boolean("surcharge")?;
            let percent = a.boolean("percent")?;
            let value = a.int("value", None, 0)?;
            if percent && !surcharge && value > 10000 {
                return Err("field basket.adjust.value: a discount above 100 % (10000)".into());
            }
            let delta = if percent {
                mul_div_round(total.min(i64::MAX as i128) as i64, value, 10000)
            } else {
                value as i128
            };
            total = if surcharge { total + delta } else { total - delta };
            if total < 0 {
                return Err(
                    "field basket.adjust.value: the discount exceeds the items total".into()
                );
            }
            json!({
                "description": a.string("description", Some(""))?,
                "discountOrSurcharge": if surcharge { 1 } else { 0 },
                "type": if percent { 1 } else { 0 },
                "value": value,
            })
        }
    };
    let total = i64::try_from(total).map_err(|_| "field basket.items: total too large")?;

    let pay_objs =
        b.list("payments", MAX_PAYMENTS, &["type", "amount", "description", "tax_rate"])?;
    let mut payments = vec![];
    let mut paid: i128 = 0;
    for p in &pay_objs {
        let amount = p.int("amount", None, 0)?;
        paid += amount as i128;
        payments.push(json!({
            "description": p.string("description", Some(""))?,
            "amount": amount,
            "type": p.one_of("type", None, PAYMENT_TYPES)?,
            "taxRate": p.int("tax_rate", Some(5), 0)?,
        }));
    }
    if paid != total as i128 {
        return Err(format!(
            "field basket.payments: payments add up to {paid}, the items total after adjust is {total}"
        ));
    }
    match amount {
        Some(a) if a as i128 == paid => {}
        Some(a) => {
            return Err(format!(
                "field amount: {a} differs from the basket's payments total {paid}"
            ))
        }
        None => return Err("field amount: required".into()),
    }

    let customer = match b.get("customer") {
        None => Value::Null,
        Some(v) => {
            let mut allowed: Vec<&str> = CUSTOMER_FIELDS.iter().map(|(k, _)| *k).collect();
            allowed.push("is_lock");
            let c = Obj::new("basket.customer", v, &allowed)?;
            let mut out = Map::new();
            for (ours, theirs) in CUSTOMER_FIELDS {
                if c.get(ours).is_some() || !out.contains_key(*theirs) {
                    out.insert((*theirs).into(), Value::String(c.string(ours, Some(""))?));
                }
            }
            out.insert("isLock".into(), Value::Bool(c.boolean("is_lock")?));
            Value::Object(out)
        }
    };

    let mut body = Map::new();
    body.insert("createInvoice".into(), Value::Bool(b.boolean("create_invoice")?));
    body.insert("documentType".into(), json!(document_type));
    body.insert("isVoid".into(), Value::Bool(b.boolean("is_void")?));
    body.insert("items".into(), Value::Array(items));
    body.insert("paymentItems".into(), Value::Array(payments));
    body.insert("customerInfo".into(), customer);
    body.insert("adjust".into(), adjust);
    Ok(DeviceBasket { body, total })
}

#[cfg(test)]
#[path = "basket_tests.rs"]
mod tests;
