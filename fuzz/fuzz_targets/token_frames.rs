#![no_main]
//! Token link bytes from the register: the frame decoder and message reassembly under the
//! bootstrap key, fed in arbitrary chunks. Never a panic, never an unbounded allocation.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use posbridge::drivers::token::codec::TokenCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = TokenCodec::default();
    let mut buf = BytesMut::new();
    // The first byte picks the chunk size so split points vary.
    let step = data.first().map(|b| (*b as usize % 64) + 1).unwrap_or(1);
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
});
