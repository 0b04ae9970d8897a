mod cases {
    use serde_json::Value;

    use crate::api::{parse_command, Command, ErrorCode, Op, Rejection, RAW_ECHO_BYTES};

    fn parse(s: &str) -> Result<Command, Rejection> {
        parse_command(s.as_bytes(), 65536)
    }

    #[test]
    fn payment_parses() {
        let c = parse(r#"{"v":1,"id":"pos-1","op":"payment","terminal":"ip-1","amount":1500,"currency":"AZN","expires_at":"2026-11-22T13:05:00Z","own_receipt":true}"#).expect("valid");
        assert_eq!(c.op(), Op::Payment);
        assert_eq!(c.amount(), Some(1500));
        assert_eq!(c.extra.get("own_receipt"), Some(&Value::Bool(true)));
        assert!(c.expires_at.is_some());
    }

    #[test]
    fn invalid_json_has_null_id_and_raw() {
        let r = parse("{not json").expect_err("invalid");
        assert_eq!(r.id, None);
        assert_eq!(r.code, ErrorCode::BadRequest);
        assert_eq!(r.raw.as_deref(), Some("{not json"));
    }

    /// A key given twice, at the top or deep in a driver field, refuses the payload
    /// naming the key, before any field is read (which `amount` would count?).
    #[test]
    fn a_key_given_twice_is_refused_naming_it() {
        let r = parse(r#"{"v":1,"id":"d-1","op":"payment","terminal":"t","amount":1,"amount":99999,"currency":"AZN"}"#)
            .expect_err("amount twice");
        assert_eq!(r.code, ErrorCode::BadRequest);
        assert!(r.message.contains(r#"the key "amount" twice"#), "{}", r.message);
        let r = parse(r#"{"v":1,"id":"d-2","op":"payment","terminal":"t","amount":1,"currency":"AZN","basket":{"items":[{"price":1,"price":2}]}}"#)
            .expect_err("price twice");
        assert!(r.message.contains(r#"the key "price" twice"#), "{}", r.message);
        // Not JSON stays "not valid JSON", with serde_json's position.
        let r = parse(r#"{"v":1,"id":"d-3","op":"ping"} trailing"#).expect_err("trailing");
        assert!(
            r.message.starts_with("payload is not valid JSON") && r.message.contains("column"),
            "{}",
            r.message
        );
    }

    #[test]
    fn oversize_is_rejected_unparsed() {
        let big = format!(r#"{{"v":1,"id":"x","op":"ping","pad":"{}"}}"#, "a".repeat(2000));
        let r = parse_command(big.as_bytes(), 1024).expect_err("too big");
        assert_eq!(r.id, None);
        assert!(r.message.contains("max_bytes"));
        assert_eq!(r.raw.map(|s| s.len()), Some(RAW_ECHO_BYTES));
    }

    #[test]
    fn wrong_type_names_the_field_and_keeps_id() {
        let r = parse(
            r#"{"v":1,"id":"a1","op":"payment","terminal":"t","amount":"12","currency":"KZT"}"#,
        )
        .expect_err("bad amount");
        assert_eq!(r.id.as_deref(), Some("a1"));
        assert!(r.message.starts_with("field amount"), "{}", r.message);
        let r = parse(
            r#"{"v":1,"id":"a1","op":"payment","terminal":"t","amount":12.5,"currency":"KZT"}"#,
        )
        .expect_err("fractional amount");
        assert!(r.message.starts_with("field amount"), "{}", r.message);
    }

    #[test]
    fn unknown_field_and_op_are_named() {
        let r = parse(r#"{"v":1,"id":"a1","op":"ping","ammount":1}"#).expect_err("typo");
        assert!(r.message.contains("ammount"));
        let r = parse(r#"{"v":1,"id":"a1","op":"charge"}"#).expect_err("op");
        assert!(r.message.starts_with("field op"));
    }

    #[test]
    fn per_op_requirements() {
        assert!(parse(r#"{"v":1,"id":"a","op":"payment","terminal":"t","amount":1}"#)
            .expect_err("currency")
            .message
            .contains("currency"));
        assert!(parse(r#"{"v":1,"id":"a","op":"refund","terminal":"t","amount":1}"#).is_err());
        assert!(parse(
            r#"{"v":1,"id":"a","op":"refund","terminal":"t","amount":1,"original":"p1"}"#
        )
        .is_ok());
        assert!(parse(
            r#"{"v":1,"id":"a","op":"refund","terminal":"t","amount":1,"transaction_id":"x"}"#
        )
        .expect_err("method")
        .message
        .contains("method"));
        assert!(parse(r#"{"v":1,"id":"a","op":"cancel"}"#).is_err());
        assert!(parse(r#"{"v":1,"id":"a","op":"list","limit":501}"#).is_err());
        assert!(parse(r#"{"v":1,"id":"a","op":"list","state":"bogus"}"#).is_err());
        assert!(parse(r#"{"v":1,"id":"a","op":"ping"}"#).is_ok());
    }

    #[test]
    fn version_and_id_rules() {
        assert!(parse(r#"{"id":"a","op":"ping"}"#).is_err());
        assert!(parse(r#"{"v":2,"id":"a","op":"ping"}"#).is_err());
        let r = parse(r#"{"v":1,"id":"has space","op":"ping"}"#).expect_err("id");
        assert_eq!(r.id, None);
        let r = parse(r#"{"v":1,"id":7,"op":"ping"}"#).expect_err("id type");
        assert_eq!(r.id, None);
        assert!(parse(r#"[1,2]"#).is_err());
    }
}

mod props {
    use proptest::prelude::*;

    use crate::api::{parse_command, RAW_ECHO_BYTES};

    proptest! {
        /// Any bytes: never a panic, and an error always carries a bad_request-class code
        /// and a message.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            match parse_command(&bytes, 1024) {
                Ok(c) => prop_assert!(crate::api::is_valid_request_id(&c.id)),
                Err(r) => {
                    prop_assert!(!r.message.is_empty());
                    prop_assert!(r.raw.as_ref().is_none_or(|s| s.len() <= RAW_ECHO_BYTES * 3));
                }
            }
        }

        /// Well-formed payments parse back to what was sent.
        #[test]
        fn valid_payments_round_trip(
            id in "[A-Za-z0-9._:-]{1,64}",
            term in "[A-Za-z0-9_-]{1,64}",
            amount in 1i64..=i64::MAX,
            cur in "[A-Z]{3}",
        ) {
            let v = serde_json::json!({"v":1,"id":id,"op":"payment","terminal":term,"amount":amount,"currency":cur});
            let c = parse_command(v.to_string().as_bytes(), 65536).expect("valid");
            prop_assert_eq!(c.id.as_str(), id.as_str());
            prop_assert_eq!(c.amount(), Some(amount));
            prop_assert_eq!(c.terminal.as_deref(), Some(term.as_str()));
        }

        /// Mutating one field of a valid command to a value of the wrong type is refused
        /// with that field named.
        #[test]
        fn wrong_types_name_the_field(field in prop::sample::select(vec!["amount", "currency", "terminal", "expires_at", "op"])) {
            let mut v = serde_json::json!({"v":1,"id":"p","op":"payment","terminal":"t","amount":5,"currency":"KZT"});
            v[field] = serde_json::json!([1]);
            let r = parse_command(v.to_string().as_bytes(), 65536).expect_err("wrong type");
            let prefix = format!("field {field}");
            prop_assert!(r.message.starts_with(&prefix), "{}", r.message);
        }
    }
}
