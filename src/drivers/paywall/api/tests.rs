//! The sale body, its field rules and the answers: the MerchantUniqueCode pinned, exact
//! amounts and Paywall's names in the body, every rule naming its field, answers parsed
//! whatever the key casing.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::api::{parse_command, Command};

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
    sale_request(&cmd(extra, amount), "8ff33705-57c7-42dc-8341-a0053e7f3009", Uuid::nil(), &ids())
}

#[test]
fn muc_is_a_stable_v5() {
    let a = merchant_unique_code("shop-1", "pos-1");
    assert_eq!(a, merchant_unique_code("shop-1", "pos-1"));
    assert_eq!(a.get_version_num(), 5);
    assert_ne!(a, merchant_unique_code("shop-1", "pos-2"));
    assert_ne!(a, merchant_unique_code("shop-2", "pos-1"));
    // Pinned: a change here would turn every retried request into a second sale.
    assert_eq!(a.to_string(), Uuid::new_v5(&MUC_NAMESPACE, b"shop-1/pos-1").to_string());
    assert_eq!(MUC_NAMESPACE.to_string(), "6f0e3c2a-9b1d-5e47-a0c8-2d4f1b6e8a93");
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
    let v: Value = serde_json::from_str(&serde_json::to_string(&r).expect("ser")).expect("json");
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

/// A payment of 100 with `extra` is refused, naming `field` (in the error's text too).
fn fails_on(extra: Value, field: &str) {
    let e = check(extra.clone(), 100).expect_err(&format!("{extra} must fail"));
    assert_eq!(e.field, field, "{extra}: {e}");
    assert!(e.to_string().starts_with(&format!("field {field}: ")));
}

#[test]
fn every_rule_names_its_field() {
    // A product with every key; each is required.
    let full = json!({"name":"a","amount":100,"quantity":1,"tax_group_id":1,"unit_code_id":1});
    for key in ["name", "amount", "quantity", "tax_group_id", "unit_code_id"] {
        let mut p = full.clone();
        p.as_object_mut().expect("object").remove(key);
        fails_on(json!({ "products": [p] }), &format!("products[0].{key}"));
    }
    let with = |key: &str, value: Value| {
        let mut p = full.clone();
        p[key] = value;
        json!({ "products": [p] })
    };
    // One case a line, so that the table reads as one.
    #[rustfmt::skip]
    let products: Vec<(Value, &str)> = vec![
        (json!({}), "products"),
        (json!({"products": []}), "products"),
        (json!({"products": "x"}), "products"),
        (json!({"products": [product("a", 60)]}), "products"),
        (json!({"products": [product(&"n".repeat(76), 100)]}), "products[0].name"),
        (with("amount", json!(1.5)), "products[0].amount"),
        (json!({"products": [product("a", 100), {"name":"b","amount":0,"quantity":1,"tax_group_id":1,"unit_code_id":1}]}), "products[1].amount"),
        (with("colour", json!("red")), "products[0].colour"),
    ];
    for (extra, field) in products {
        fails_on(extra, field);
    }
    // The other keys, each beside one valid product: (key, value, field).
    #[rustfmt::skip]
    let others: Vec<(&str, Value, &str)> = vec![
        ("customer", json!({"first_name":"x"}), "customer.type"),
        ("customer", json!({"type":1,"phone":"0".repeat(21)}), "customer.phone"),
        ("customer", json!({"type":1,"company_name":"c".repeat(176)}), "customer.company_name"),
        ("customer", json!({"type":1,"address":"a".repeat(256)}), "customer.address"),
        ("customer", json!({"type":1,"tax_number":"1".repeat(26)}), "customer.tax_number"),
        ("customer", json!({"type":1,"email":7}), "customer.email"),
        ("customer", json!("x"), "customer"),
        ("display_code", json!("d".repeat(26)), "display_code"),
        ("methods", json!(["card"]), "methods[0]"),
        ("receipt", json!({"top": {"text":"t".repeat(151),"font_size":10}}), "receipt.top.text"),
        ("receipt", json!({"bottom": {"text":"t","font_size":100}}), "receipt.bottom.font_size"),
        ("receipt", json!({"middle": {}}), "receipt.middle"),
        ("skip_print_customer", json!("yes"), "skip_print_customer"),
    ];
    for (key, value, field) in others {
        let mut extra = json!({"products": [product("a", 100)]});
        extra[key] = value;
        fails_on(extra, field);
    }
    // Lengths count characters, not bytes: 75 Turkish letters pass.
    assert!(check(json!({"products": [product(&"ş".repeat(75), 100)]}), 100).is_ok());
    let e = sale_request(
        &{
            let mut c = cmd(json!({"products": [product("a", 100)]}), 100);
            c.body = crate::api::Body::Payment(crate::api::Money {
                minor: 100,
                currency: crate::api::Currency::parse("USD").expect("a currency code"),
            });
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
    assert_eq!(Status::from_code(ps[0].paymentstatus.unwrap_or(0)), Status::OnDevice);
    assert!(!Status::from_code(42).is_final());
}
