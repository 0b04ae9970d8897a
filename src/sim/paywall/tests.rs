//! The body rules of `sync/sale` (`check_sale`), field by field.

use serde_json::{json, Value};

use super::check_sale;
use crate::drivers::paywall::api::SaleRequest;

fn body(patch: impl FnOnce(&mut Value)) -> SaleRequest {
    let mut v = json!({
        "TerminalId": "8ff33705-57c7-42dc-8341-a0053e7f3009",
        "MerchantUniqueCode": "3a0f4d0f-c5cf-57b6-8ec2-861f71b7fb90",
        "Amount": 22.50, "CurrencyId": 1,
        "Products": [{"Name":"Su","TaxGroupId":10,"UnitCodeId":1,"Amount":22.00,"Quantity":1},
                     {"Name":"Çay","TaxGroupId":10,"UnitCodeId":1,"Amount":0.50,"Quantity":1}],
        "Customer": {"Type": 1, "FirstName": "eda"}
    });
    patch(&mut v);
    serde_json::from_str(&v.to_string()).expect("shape")
}

type Patch = Box<dyn FnOnce(&mut Value)>;

#[test]
fn the_mock_checks_like_the_real_api_and_names_the_field() {
    assert_eq!(check_sale(&body(|_| {})), Ok(2250));
    let cases: Vec<(Patch, &str)> = vec![
        (Box::new(|v| v["Amount"] = json!(23)), "Products:"),
        (Box::new(|v| v["Amount"] = json!(22.505)), "Amount:"),
        (Box::new(|v| v["CurrencyId"] = json!(9)), "CurrencyId:"),
        (Box::new(|v| v["MerchantUniqueCode"] = json!("x")), "MerchantUniqueCode:"),
        (Box::new(|v| v["TerminalId"] = json!("t")), "TerminalId:"),
        (Box::new(|v| v["Products"] = json!([])), "Products:"),
        (Box::new(|v| v["Products"][0]["Name"] = json!("n".repeat(76))), "Products[0].Name:"),
        (Box::new(|v| v["Products"][1]["Quantity"] = json!(0)), "Products[1].Quantity:"),
        (Box::new(|v| v["Customer"]["Phone"] = json!("1".repeat(21))), "Customer.Phone:"),
        (
            Box::new(|v| {
                v["Customer"].as_object_mut().map(|c| c.remove("Type"));
            }),
            "Customer.Type:",
        ),
        (Box::new(|v| v["DisplayCode"] = json!("d".repeat(26))), "DisplayCode:"),
    ];
    for (patch, field) in cases {
        let e = check_sale(&body(patch)).expect_err(field);
        assert!(e.starts_with(field), "{field}: {e}");
    }
}
