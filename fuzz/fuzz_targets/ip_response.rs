#![no_main]
//! IP terminal protocol lines: responses (driver side) and requests (simulator side).
use libfuzzer_sys::fuzz_target;
use posbridge::drivers::ip::proto::{decode_request, decode_response};

fuzz_target!(|data: &[u8]| {
    let _ = decode_response(data);
    let _ = decode_request(data);
});
