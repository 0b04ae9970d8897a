#![no_main]
//! Answers from HTTP devices and clouds: Kaspi envelopes (any status code), Paywall and
//! Kuveyt JSON bodies, decimal money strings.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let code = data.first().map(|b| 100 + (*b as u16 % 500)).unwrap_or(200);
    let body = data.get(1..).unwrap_or_default();
    let _ = posbridge::drivers::kaspi::api::parse_envelope(code, body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let _ = posbridge::drivers::paywall::api::Envelope::parse(&v);
        let _ = posbridge::drivers::kuveyt::provider::parse_status(&v);
        let _ = posbridge::drivers::kuveyt::provider::parse_created(&v);
    }
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = posbridge::drivers::cloud::money::parse_decimal(s, 2);
        let _ = posbridge::drivers::kaspi::api::parse_expiration(s);
    }
});
