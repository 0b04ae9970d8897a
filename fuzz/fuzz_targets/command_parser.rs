#![no_main]
//! The command JSON parser/validator: any bytes from the broker.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = posbridge::api::parse_command(data, 65536) {
        assert!(posbridge::api::is_valid_request_id(&cmd.id));
        if let Some(a) = cmd.amount {
            assert!(a > 0);
        }
    }
});
