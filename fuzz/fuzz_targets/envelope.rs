#![no_main]
//! Signed-envelope verification with a fixed key: any bytes must be refused or verified,
//! never panic.
use libfuzzer_sys::fuzz_target;
use posbridge::api::envelope::{open, CommandKeys};

const PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEUm8xFzzAI7mmQwuBVz69f19kmAhs
a4iUlCj/zGKPTCCYQuE8vedA9G7EatTAiZQ5JcidtFkpVWCEpFGMt9gDqg==
-----END PUBLIC KEY-----";

fuzz_target!(|data: &[u8]| {
    let mut keys = CommandKeys::default();
    if keys.add_pem("k", PUB).is_ok() {
        let _ = open(data, &keys);
    }
});
