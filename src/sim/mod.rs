//! Device simulators shipped in the binary (`posbridge sim …`), used by the tests, the
//! demo and field engineers.
//!
//! Shared by several: `listen` (the TCP accept loop), `http` (HTTP/1 over TCP or TLS, the
//! odd answers), `faults` (seeded generators, fault rates and their draw) and `cloud` (the
//! one mock server the cloud providers' mocks, `paywall` and `kuveyt`, run on).

pub mod cloud;
mod faults;
pub mod http;
pub mod ip;
pub mod kaspi;
pub mod kuveyt;
mod listen;
pub mod paywall;
pub mod token;

pub use cloud::CloudMock;

/// The first half of `text`, cut on a character boundary: a JSON text cut short, for the
/// simulators' garbled-answer faults.
pub(crate) fn first_half(text: &str) -> &str {
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}
