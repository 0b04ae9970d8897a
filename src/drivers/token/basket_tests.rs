use serde_json::{json, Value};

use super::*;

fn good() -> Value {
    json!({
        "items": [
            { "name": "Su", "price": 500, "quantity": 1, "section_no": 1 },
            { "name": "Armut", "price": 1500, "quantity": 2.5, "section_no": 1, "tax_percent": 800 }
        ],
        "payments": [ { "type": 1, "amount": 2000 }, { "type": 3, "amount": 2250, "description": "kart" } ]
    })
}

fn check(b: &Value, amount: i64) -> Result<DeviceBasket, String> {
    validate(Some(b), Some(amount), Some("TRY"), 1000)
}

fn err(b: &Value, amount: i64) -> String {
    check(b, amount).expect_err("must be rejected")
}

#[test]
fn maps_one_to_one_with_defaults() {
    let d = check(&good(), 4250).expect("valid");
    assert_eq!(d.total, 4250);
    let v = d.with_id("93ced0be-99f5-4e42-b0ca-bc781c778d69");
    assert_eq!(v["basketID"], "93ced0be-99f5-4e42-b0ca-bc781c778d69");
    assert_eq!(v["documentType"], 0);
    assert_eq!(v["isVoid"], false);
    assert_eq!(v["createInvoice"], false);
    assert_eq!(
        v["items"][0],
        json!({"barcode": "", "name": "Su", "pluNo": 0, "price": 500, "sectionNo": 1,
               "taxPercent": 1000, "type": 0, "unit": "Adet", "vatID": 0, "limit": 0,
               "quantity": 1000, "paymentType": 0})
    );
    assert_eq!(v["items"][1]["quantity"], 2500);
    assert_eq!(v["items"][1]["taxPercent"], 800);
    assert_eq!(
        v["paymentItems"][1],
        json!({"description": "kart", "amount": 2250, "type": 3, "taxRate": 5})
    );
    assert_eq!(v["customerInfo"], Value::Null);
    assert_eq!(v["adjust"], Value::Null);
}

#[test]
fn quantity_scale_is_applied() {
    let b = json!({"items": [{"name": "x", "price": 100, "quantity": 3, "section_no": 1}],
                   "payments": [{"type": 1, "amount": 300}]});
    let d = validate(Some(&b), Some(300), Some("TRY"), 100).expect("valid");
    assert_eq!(d.with_id("b")["items"][0]["quantity"], 300);
    let b = json!({"items": [{"name": "x", "price": 1000, "quantity": 0.125, "section_no": 1}],
                   "payments": [{"type": 1, "amount": 125}]});
    let e = validate(Some(&b), Some(125), Some("TRY"), 100).expect_err("3 decimals at ×100");
    assert!(e.starts_with("field basket.items[0].quantity"), "{e}");
}

#[test]
fn adjust_amount_and_percent() {
    let mut b = good();
    b["adjust"] = json!({"description": "20 TL indirim", "value": 2000});
    b["payments"] = json!([{"type": 1, "amount": 2250}]);
    let v = check(&b, 2250).expect("discount").with_id("x");
    assert_eq!(
        v["adjust"],
        json!({"description": "20 TL indirim", "discountOrSurcharge": 0, "type": 0, "value": 2000})
    );
    // 10 % surcharge on 4250 = 425.
    b["adjust"] = json!({"surcharge": true, "percent": true, "value": 1000});
    b["payments"] = json!([{"type": 1, "amount": 4675}]);
    let v = check(&b, 4675).expect("surcharge").with_id("x");
    assert_eq!(v["adjust"]["discountOrSurcharge"], 1);
    assert_eq!(v["adjust"]["type"], 1);
}

#[test]
fn customer_maps_to_device_names() {
    let mut b = good();
    b["customer"] = json!({"name": "Ege", "tax_id": "0987654321", "city_subdivision_name": "Kadıköy", "is_lock": true});
    let v = check(&b, 4250).expect("valid").with_id("x");
    assert_eq!(v["customerInfo"]["name"], "Ege");
    assert_eq!(v["customerInfo"]["taxID"], "0987654321");
    assert_eq!(v["customerInfo"]["citySubdivisonName"], "Kadıköy");
    assert_eq!(v["customerInfo"]["isLock"], true);
    assert_eq!(v["customerInfo"]["email"], "");
}

/// How a case changes `good()`: `key` of the object at a JSON pointer is set or removed.
enum Edit {
    Keep,
    Set(&'static str, &'static str, Value),
    Remove(&'static str, &'static str),
}

fn edited(edit: Edit) -> Value {
    let mut b = good();
    match edit {
        Edit::Keep => {}
        Edit::Set(at, key, value) => b.pointer_mut(at).expect(at)[key] = value,
        Edit::Remove(at, key) => {
            b.pointer_mut(at).and_then(Value::as_object_mut).expect(at).remove(key);
        }
    }
    b
}

#[test]
fn each_rule_names_its_field() {
    use Edit::{Keep, Remove, Set};
    // One case a line, so that the table reads as one.
    #[rustfmt::skip]
    let cases: Vec<(Edit, i64, &str)> = vec![
        (Set("", "items", json!([])), 4250, "field basket.items:"),
        (Remove("", "items"), 4250, "field basket.items:"),
        (Remove("/items/0", "name"), 4250, "field basket.items[0].name:"),
        (Remove("/items/1", "price"), 4250, "field basket.items[1].price:"),
        (Set("/items/0", "price", json!(-5)), 4250, "field basket.items[0].price:"),
        (Set("/items/0", "price", json!("500")), 4250, "field basket.items[0].price:"),
        (Remove("/items/0", "quantity"), 4250, "field basket.items[0].quantity:"),
        (Set("/items/0", "quantity", json!(1.0001)), 4250, "field basket.items[0].quantity:"),
        (Set("/items/0", "quantity", json!(0)), 4250, "field basket.items[0].quantity:"),
        (Remove("/items/0", "section_no"), 4250, "field basket.items[0].section_no:"),
        (Set("/items/0", "type", json!(7)), 4250, "field basket.items[0].type:"),
        (Set("/items/0", "limit", json!(100)), 4250, "field basket.items[0].limit:"),
        (Set("/items/0", "colour", json!("red")), 4250, "field basket.items[0].colour:"),
        (Set("", "payments", json!([])), 4250, "field basket.payments:"),
        (Remove("/payments/0", "type"), 4250, "field basket.payments[0].type:"),
        (Set("/payments/0", "type", json!(4)), 4250, "field basket.payments[0].type:"),
        (Remove("/payments/1", "amount"), 4250, "field basket.payments[1].amount:"),
        (Set("/payments/0", "amount", json!(1999)), 4249, "field basket.payments:"),
        (Keep, 4251, "field amount:"),
        (Set("", "document_type", json!(5)), 4250, "field basket.document_type:"),
        (Set("", "is_void", json!("no")), 4250, "field basket.is_void:"),
        (Set("", "adjust", json!({"value": 5000})), 4250, "field basket.adjust.value:"),
        (Set("", "adjust", json!({"description": "x"})), 4250, "field basket.adjust.value:"),
        (Set("", "customer", json!({"nmae": "x"})), 4250, "field basket.customer.nmae:"),
        (Set("", "basketID", json!("x")), 4250, "field basket.basketID:"),
    ];
    for (i, (edit, amount, want)) in cases.into_iter().enumerate() {
        let e = err(&edited(edit), amount);
        assert!(e.starts_with(want), "case {i}: {e:?} should start with {want:?}");
    }
    assert!(validate(None, Some(1), Some("TRY"), 1000)
        .expect_err("no basket")
        .starts_with("field basket:"));
    assert!(validate(Some(&good()), Some(4250), Some("EUR"), 1000)
        .expect_err("currency")
        .starts_with("field currency:"));
}

#[test]
fn fiscal_info_checks() {
    let d = check(&good(), 4250).expect("valid");
    let info = FiscalInfo(json!({"sections": [{"sectionNo": 2}], "receiptLimit": null}));
    assert!(d
        .check_against(&info)
        .expect_err("unknown section")
        .starts_with("field basket.items[0].section_no"));
    let info = FiscalInfo(json!({"sections": [{"sectionNo": 1}], "receiptLimit": 4000}));
    assert!(d.check_against(&info).expect_err("limit").starts_with("field amount"));
    let info = FiscalInfo(json!({"sections": [{"sectionNo": 1}], "receiptLimit": 0}));
    assert!(d.check_against(&info).is_ok());
}
