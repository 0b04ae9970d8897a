//! Pure parts of the driver: validation, request mapping, outcome mapping.

use super::*;
use crate::drivers::http::Transport;

fn driver() -> KaspiDriver {
    KaspiDriver {
        id: "k".into(),
        client: Err("not needed".into()),
        timing: Timing {
            poll: Duration::from_secs(1),
            actualize_every: Duration::from_secs(10),
            actualize_window: Duration::from_secs(60),
            deadline: Duration::from_secs(260),
        },
        actualized: Mutex::new(HashMap::new()),
    }
}

fn cmd(v: Value) -> Command {
    crate::api::parse_command(v.to_string().as_bytes(), 65536).expect("command")
}

#[test]
fn validate_amounts_and_currency() {
    let d = driver();
    let ok =
        cmd(json!({"v":1,"id":"a","op":"payment","terminal":"k","amount":150000,"currency":"KZT"}));
    assert!(d.validate(&ok).is_ok());
    let odd =
        cmd(json!({"v":1,"id":"a","op":"payment","terminal":"k","amount":150050,"currency":"KZT"}));
    let r = d.validate(&odd).expect_err("tiyn");
    assert_eq!(r.code, ErrorCode::InvalidAmount);
    assert!(r.message.contains("multiple of 100"), "{}", r.message);
    let usd =
        cmd(json!({"v":1,"id":"a","op":"payment","terminal":"k","amount":100,"currency":"USD"}));
    assert_eq!(d.validate(&usd).expect_err("usd").code, ErrorCode::BadRequest);
    let bad_method = cmd(
        json!({"v":1,"id":"r","op":"refund","terminal":"k","amount":100,"currency":"KZT","transaction_id":"1","method":"cash"}),
    );
    assert_eq!(d.validate(&bad_method).expect_err("m").code, ErrorCode::BadRequest);
    let by_original =
        cmd(json!({"v":1,"id":"r","op":"refund","terminal":"k","amount":100,"original":"p"}));
    assert!(d.validate(&by_original).is_ok());
    let info = cmd(json!({"v":1,"id":"i","op":"device_info","terminal":"k"}));
    assert!(d.validate(&info).is_ok());
}

#[test]
fn requests_carry_whole_tenge_and_owncheque() {
    let c = cmd(
        json!({"v":1,"id":"a","op":"payment","terminal":"k","amount":150000,"currency":"KZT","own_receipt":true}),
    );
    let (route, params) = KaspiDriver::request_for(&c).expect("req");
    assert_eq!(route, "payment");
    assert_eq!(params, vec![("amount", "1500".to_string()), ("owncheque", "true".to_string())]);
    let r = cmd(
        json!({"v":1,"id":"r","op":"refund","terminal":"k","amount":100,"currency":"KZT","transaction_id":"504711333","method":"qr"}),
    );
    let (route, params) = KaspiDriver::request_for(&r).expect("req");
    assert_eq!(route, "refund");
    assert!(params.contains(&("transactionId", "504711333".to_string())));
    assert!(params.contains(&("method", "qr".to_string())));
    assert!(params.contains(&("owncheque", "false".to_string())));
}

#[test]
fn start_failures_never_guess() {
    let refused =
        KaspiDriver::start_failure(CallError::Transport(Transport::NotSent("connect".into())));
    assert!(matches!(refused, Fact::NotSent { why: NotSentWhy::Unreachable, .. }));
    let lost =
        KaspiDriver::start_failure(CallError::Transport(Transport::MaybeSent("timeout".into())));
    assert!(matches!(lost, Fact::CannotAsk { .. }), "{lost:?}");
    let busy = KaspiDriver::start_failure(CallError::Api(ApiError::Device {
        http: 200,
        code: code::LAST_OPERATION_RUNNING,
        text: "Last operation was not completed.".into(),
        message: None,
    }));
    match busy {
        Fact::Answer(crate::drivers::Answer::Refused {
            refusal: Refusal::DeviceError,
            device_code,
            ..
        }) => assert_eq!(device_code, Some(json!(107))),
        other => panic!("{other:?}"),
    }
    let internal = KaspiDriver::start_failure(CallError::Api(ApiError::Device {
        http: 500,
        code: code::GENERIC,
        text: "Internal Error. Please, contact developers".into(),
        message: None,
    }));
    assert!(matches!(internal, Fact::CannotAsk { .. }));
    let odd = KaspiDriver::start_failure(CallError::Api(ApiError::BadBody {
        http: 200,
        detail: "x".into(),
    }));
    assert!(matches!(odd, Fact::CannotAsk { .. }));
    let auth = KaspiDriver::start_failure(CallError::Auth("re-register".into()));
    assert!(matches!(
        auth,
        Fact::Answer(crate::drivers::Answer::Refused { refusal: Refusal::Unauthorized, .. })
    ));
}

fn pay(amount_tiyn: i64) -> Command {
    cmd(json!({"v":1,"id":"a","op":"payment","terminal":"k","amount":amount_tiyn,"currency":"KZT"}))
}

fn refusal_of(f: &Fact) -> Option<Refusal> {
    match f {
        Fact::Answer(crate::drivers::Answer::Refused { refusal, .. }) => Some(*refusal),
        _ => None,
    }
}

#[test]
fn final_facts() {
    let c = pay(150000);
    let fail = StatusData::parse(
        &json!({"processId":"1","status":"fail","subStatus":"ProcessCancelled","message":"m"}),
    )
    .expect("d");
    let f = KaspiDriver::end_fact(&c, "1", End::Final(fail));
    assert_eq!(refusal_of(&f), Some(Refusal::CancelledByCustomer));
    let dec = StatusData::parse(
        &json!({"processId":"1","status":"fail","subStatus":"CardTransactionFailure"}),
    )
    .expect("d");
    let f = KaspiDriver::end_fact(&c, "1", End::Final(dec));
    assert_eq!(refusal_of(&f), Some(Refusal::Declined));
    let f = KaspiDriver::end_fact(
        &c,
        "77",
        End::Unknown { reason: "r".into(), last: None, device_code: Some(101) },
    );
    match f {
        Fact::Pending { device, .. } => assert_eq!(device.expect("device")["processId"], "77"),
        other => panic!("{other:?}"),
    }
}

/// kaspi.md: the authoritative amount is the one requested; a receipt for another amount
/// is not this operation's answer.
#[test]
fn a_receipt_for_another_amount_is_not_this_payment() {
    let ok = |amount: &str| {
        StatusData::parse(
            &json!({"processId":"1","status":"success","subStatus":"CardTransactionSuccess",
            "transactionId":"9","chequeInfo":{"amount": amount, "method":"card"}}),
        )
        .expect("d")
    };
    let f = KaspiDriver::final_fact(&pay(150000), ok("1 500 ₸"));
    assert!(matches!(f, Fact::Answer(crate::drivers::Answer::Approved { .. })), "{f:?}");
    let f = KaspiDriver::final_fact(&pay(150000), ok("1 501 ₸"));
    assert!(matches!(f, Fact::Unreadable { .. }), "{f:?}");
    let f = KaspiDriver::final_fact(&pay(150000), ok("₸"));
    assert!(matches!(f, Fact::Unreadable { .. }), "{f:?}");
    // A refund receipt shows the amount negative.
    let refund =
        cmd(json!({"v":1,"id":"r","op":"refund","terminal":"k","amount":100,"currency":"KZT",
        "transaction_id":"9","method":"card"}));
    let f = KaspiDriver::final_fact(&refund, ok("- 1 ₸"));
    assert!(matches!(f, Fact::Answer(crate::drivers::Answer::Approved { .. })), "{f:?}");
}
