//! Device simulators shipped in the binary (`posbridge sim …`), used by the tests, the
//! demo and field engineers.
//!
//! Shared by several: `listen` (the TCP accept loop), `http` (HTTP/1 over TCP or TLS, the
//! odd answers), `faults` (seeded generators, fault rates and their draw) and `cloud` (the
//! one mock server the cloud providers' mocks, `paywall` and `kuveyt`, run on).
//!
//! The production build (`--no-default-features`) keeps only the IP terminal's simulator
//! (`posbridge sim ip`, which `deploy/qemu-smoke.sh` runs on the cross-built binary); the
//! others, with their HTTP server and certificate generation, are in feature `sims`.

#[cfg(feature = "sims")]
pub mod cloud;
mod faults;
#[cfg(feature = "sims")]
pub mod http;
pub mod ip;
#[cfg(feature = "sims")]
pub mod kaspi;
#[cfg(feature = "sims")]
pub mod kuveyt;
mod listen;
#[cfg(feature = "sims")]
pub mod paywall;
#[cfg(feature = "sims")]
pub mod token;

#[cfg(feature = "sims")]
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
