//! Device simulators shipped in the binary (`posbridge sim …`), used by the tests, the
//! demo and field engineers.

pub mod http;
pub mod ip;
pub mod kaspi;
pub mod kuveyt;
pub mod paywall;
pub mod token;

/// The first half of `text`, cut on a character boundary: a JSON text cut short, for the
/// simulators' garbled-answer faults.
pub(crate) fn first_half(text: &str) -> &str {
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}
