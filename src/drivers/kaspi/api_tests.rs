use serde_json::json;

use super::*;

const QR_SUCCESS: &str = r#"{ "data": { "addInfo": { "LoanTerm": 0, "IsOffer": false, "ProductType": "Gold" },
  "chequeInfo": { "address": "Абая 1", "amount": "1 ₸", "bin": "960419351140", "city": "Алматы", "date": "06.03.23 14:20:11",
                  "method": "qr", "orderNumber": "504711333", "status": "Успешно", "storeName": "Kaspi Mark",
                  "terminalId": "31452963", "type": "payment" },
  "processId": "1678090708423", "status": "success", "subStatus": "QrTransactionSuccess", "transactionId": "504711333" },
  "statusCode": 0 }"#;

const CARD_SUCCESS: &str = r#"{"data":{"chequeInfo":{"amount":"1 500 ₸","authorizationCode":"665425","bin":"960419351140",
  "cardMask":"440043*****6389","hostResponseCode":"000","icc":"Visa Debit","method":"card","rrn":"307208187011",
  "orderNumber":"1","type":"payment"},"processId":1678090708424,"status":"success","subStatus":"CardTransactionSuccess",
  "transactionId":"307208187011"},"statusCode":0}"#;

fn data(body: &str) -> Value {
    parse_envelope(200, body.as_bytes()).expect("envelope")
}

#[test]
fn qr_success_maps_order_number_and_receipt() {
    let s = StatusData::parse(&data(QR_SUCCESS)).expect("status");
    assert_eq!(s.status, ProcessStatus::Success);
    assert_eq!(s.process_id.as_deref(), Some("1678090708423"));
    let p = s.payment_info();
    assert_eq!(p.method.as_deref(), Some("qr"));
    assert_eq!(p.transaction_id.as_deref(), Some("504711333"));
    assert_eq!(p.card_mask, None);
    let r = p.receipt.expect("receipt");
    assert_eq!(r["store_name"], "Kaspi Mark");
    assert_eq!(r["order_number"], "504711333");
    assert_eq!(r["amount_tenge"], 1);
    assert_eq!(r["add_info"]["product_type"], "Gold");
    assert_eq!(r["add_info"]["loan_term"], 0);
    assert_eq!(s.raw["chequeInfo"]["bin"], "960419351140");
}

#[test]
fn card_success_maps_rrn_mask_and_auth_code() {
    let s = StatusData::parse(&data(CARD_SUCCESS)).expect("status");
    // A numeric processId is accepted.
    assert_eq!(s.process_id.as_deref(), Some("1678090708424"));
    let p = s.payment_info();
    assert_eq!(p.method.as_deref(), Some("card"));
    assert_eq!(p.transaction_id.as_deref(), Some("307208187011"));
    assert_eq!(p.card_mask.as_deref(), Some("440043*****6389"));
    assert_eq!(p.auth_code.as_deref(), Some("665425"));
    let r = p.receipt.expect("receipt");
    assert_eq!(r["host_response_code"], "000");
    assert_eq!(r["amount_tenge"], 1500);
}

#[test]
fn fail_and_unknown_shapes() {
    let fail = data(
        r#"{"data":{"message":"Клиент отказался","processId":"1","status":"fail","subStatus":"QrTransactionFailure"},"statusCode":0}"#,
    );
    let s = StatusData::parse(&fail).expect("fail");
    assert_eq!(s.status, ProcessStatus::Fail);
    assert_eq!(s.sub_status.as_deref(), Some("QrTransactionFailure"));
    assert_eq!(s.message.as_deref(), Some("Клиент отказался"));
    let unk = data(
        r#"{"data":{"message":"Операция жойылды","processId":"1","status":"unknown","subStatus":"ProcessCancelled"},"statusCode":0}"#,
    );
    assert_eq!(StatusData::parse(&unk).expect("unknown").status, ProcessStatus::Unknown);
    let wait =
        data(r#"{"data":{"processId":"1","status":"wait","subStatus":"WaitUser"},"statusCode":0}"#);
    assert_eq!(StatusData::parse(&wait).expect("wait").status, ProcessStatus::Wait);
}

#[test]
fn error_envelopes_are_named() {
    let e = parse_envelope(
        400,
        br#"{ "errorText": "Param unvalidated: amount. Must be greater 0", "statusCode": 999 }"#,
    )
    .expect_err("999");
    assert_eq!(e.device_code(), Some(999));
    assert!(e.to_string().contains("Param unvalidated: amount"), "{e}");
    let e = parse_envelope(
        200,
        br#"{"data":{"message":"Register Error. Last register request not completed"},"errorText":"Error acquired in service process","statusCode":105}"#,
    )
    .expect_err("105");
    assert!(
        matches!(e, ApiError::Device { code: 105, message: Some(ref m), .. } if m.contains("Last register"))
    );
    let e = parse_envelope(200, br#"{"statusCode":"101","errorText":"Process not found"}"#)
        .expect_err("101 as string");
    assert_eq!(e.device_code(), Some(code::PROCESS_NOT_FOUND));
    assert_eq!(
        parse_envelope(
            401,
            br#"{"statusCode":999,"errorText":"Session expires and need to be updated"}"#
        ),
        Err(ApiError::Unauthorized("Session expires and need to be updated".into()))
    );
    assert_eq!(
        parse_envelope(401, b""),
        Err(ApiError::Unauthorized("Authorization failed".into()))
    );
    assert_eq!(parse_envelope(403, b"whatever"), Err(ApiError::Forbidden));
    assert!(parse_envelope(401, b"").expect_err("401").is_auth());
}

#[test]
fn odd_bodies_are_clear_errors() {
    let cases: [(u16, &[u8], &str); 7] = [
        (200, b"", "empty body"),
        (200, b"<html>gateway</html>", "not a JSON object"),
        (200, b"[1,2]", "not a JSON object"),
        (200, br#"{"data":{}}"#, "no numeric statusCode"),
        (200, br#"{"statusCode":0}"#, "without a data object"),
        (200, br#"{"statusCode":0,"data":"x"}"#, "without a data object"),
        (500, br#"{"statusCode":0,"data":{}}"#, "statusCode 0 with HTTP 500"),
    ];
    for (http, body, want) in cases {
        let e = parse_envelope(http, body).expect_err("odd");
        assert!(
            matches!(e, ApiError::BadBody { .. }) && e.to_string().contains(want),
            "{want}: {e}"
        );
    }
    // A long body is quoted briefly.
    let long = vec![b'x'; 10_000];
    let e = parse_envelope(200, &long).expect_err("long");
    assert!(e.to_string().len() < 400, "{e}");
    // Inside a good envelope: missing or odd fields name themselves.
    let e = StatusData::parse(&json!({"processId":"1","status":"maybe"})).expect_err("status");
    assert!(e.to_string().contains("status answer"), "{e}");
    let e = StatusData::parse(&json!({"processId":"1"})).expect_err("no status");
    assert!(e.to_string().contains("status"), "{e}");
    let e = Started::parse(&json!({"status":"wait"})).expect_err("no processId");
    assert!(e.to_string().contains("processId"), "{e}");
    let e = Started::parse(&json!({"processId":"","status":"wait"})).expect_err("empty");
    assert!(e.to_string().contains("non-empty id"), "{e}");
    assert!(TokenAnswer::parse(&json!({"accessToken":"a","refreshToken":"","expirationDate":"x"}))
        .is_err());
}

#[test]
fn started_device_info_and_tokens_parse() {
    let d =
        data(r#"{ "data": { "processId": "1678090451700", "status": "wait" }, "statusCode": 0 }"#);
    assert_eq!(Started::parse(&d).expect("started").process_id, "1678090451700");
    let d = data(
        r#"{ "data": { "posNum": "0", "serialNum": "00043010171", "terminalId": "31452963" }, "statusCode": 0 }"#,
    );
    let info = DeviceInfo::parse(&d).expect("info");
    assert_eq!(info.identity()["serial"], "00043010171");
    assert_eq!(info.identity()["terminal_id"], "31452963");
    let d = data(
        r#"{ "data": { "accessToken": "99af", "expirationDate": "Mar 7, 2023 15:02:56", "refreshToken": "d4a8" }, "statusCode": 0 }"#,
    );
    let t = TokenAnswer::parse(&d).expect("token");
    assert_eq!((t.access_token.as_str(), t.refresh_token.as_str()), ("99af", "d4a8"));
}

#[test]
fn expiration_date_round_trips_in_local_time() {
    let t = parse_expiration("Mar 7, 2023 15:02:56").expect("parse");
    assert_eq!(
        t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string(),
        "2023-03-07 15:02:56"
    );
    assert!(parse_expiration("Dec 17, 2023 09:00:00").is_some());
    assert_eq!(parse_expiration("2023-03-07T15:02:56Z"), None);
    assert_eq!(parse_expiration(""), None);
    let now = Utc::now();
    let back = parse_expiration(&format_expiration(now)).expect("round trip");
    assert!((now - back).num_seconds().abs() <= 1);
}

#[test]
fn amounts() {
    assert_eq!(tenge_from_minor(150_000), Ok(1500));
    assert_eq!(tenge_from_minor(100), Ok(1));
    assert_eq!(tenge_from_minor(150), Err(AmountError::NotWholeTenge(150)));
    assert_eq!(tenge_from_minor(0), Err(AmountError::NotPositive(0)));
    assert_eq!(tenge_from_minor(-100), Err(AmountError::NotPositive(-100)));
    assert_eq!(cheque_amount("1 500 ₸"), Some(1500));
    assert_eq!(cheque_amount("- 1 ₸"), Some(-1));
    assert_eq!(cheque_amount("1\u{a0}500 T"), Some(1500));
    assert_eq!(cheque_amount("12 тенге"), Some(12));
    assert_eq!(cheque_amount("₸"), None);
}

#[test]
fn snake_case_keys() {
    assert_eq!(snake_case("storeName"), "store_name");
    assert_eq!(snake_case("LoanTerm"), "loan_term");
    assert_eq!(snake_case("rrn"), "rrn");
    assert_eq!(snake_case("IsOffer"), "is_offer");
}
