//! Pure parts of the driver: validation, request mapping, outcome mapping.

use super::*;

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
    assert_eq!(
        d.validate(&usd).expect_err("usd").code,
        ErrorCode::BadRequest
    );
    let bad_method = cmd(
        json!({"v":1,"id":"r","op":"refund","terminal":"k","amount":100,"currency":"KZT","transaction_id":"1","method":"cash"}),
    );
    assert_eq!(
        d.validate(&bad_method).expect_err("m").code,
        ErrorCode::BadRequest
    );
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
    assert_eq!(
        params,
        vec![
            ("amount", "1500".to_string()),
            ("owncheque", "true".to_string())
        ]
    );
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
    let refused = KaspiDriver::start_failure(CallError::Transport {
        sent: false,
        message: "connect".into(),
    });
    assert_eq!(refused.state, FinalState::Failed);
    let lost = KaspiDriver::start_failure(CallError::Transport {
        sent: true,
        message: "timeout".into(),
    });
    assert_eq!(lost.state, FinalState::Unknown);
    let busy = KaspiDriver::start_failure(CallError::Api(ApiError::Device {
        http: 200,
        code: code::LAST_OPERATION_RUNNING,
        text: "Last operation was not completed.".into(),
        message: None,
    }));
    assert_eq!(busy.state, FinalState::Failed);
    assert_eq!(
        busy.error.as_ref().and_then(|e| e.device_code.clone()),
        Some(json!(107))
    );
    let internal = KaspiDriver::start_failure(CallError::Api(ApiError::Device {
        http: 500,
        code: code::GENERIC,
        text: "Internal Error. Please, contact developers".into(),
        message: None,
    }));
    assert_eq!(internal.state, FinalState::Unknown);
    let odd = KaspiDriver::start_failure(CallError::Api(ApiError::BadBody {
        http: 200,
        detail: "x".into(),
    }));
    assert_eq!(odd.state, FinalState::Unknown);
    let auth = KaspiDriver::start_failure(CallError::Auth("re-register".into()));
    assert_eq!(auth.error.map(|e| e.code), Some(ErrorCode::Unauthorized));
}

#[test]
fn final_outcomes() {
    let fail = StatusData::parse(
        &json!({"processId":"1","status":"fail","subStatus":"ProcessCancelled","message":"m"}),
    )
    .expect("d");
    let o = KaspiDriver::final_outcome("1", End::Final(fail));
    assert_eq!(o.state, FinalState::Failed);
    assert_eq!(
        o.error.map(|e| e.code),
        Some(ErrorCode::CancelledByCustomer)
    );
    let dec = StatusData::parse(
        &json!({"processId":"1","status":"fail","subStatus":"CardTransactionFailure"}),
    )
    .expect("d");
    let o = KaspiDriver::final_outcome("1", End::Final(dec));
    assert_eq!(o.error.map(|e| e.code), Some(ErrorCode::Declined));
    let o = KaspiDriver::final_outcome(
        "77",
        End::Unknown {
            reason: "r".into(),
            last: None,
            device_code: Some(101),
        },
    );
    assert_eq!(o.state, FinalState::Unknown);
    assert_eq!(o.device.expect("device")["processId"], "77");
}
