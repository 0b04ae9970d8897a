//! Simulator of a Token fiscal register's Integration Hub side (`posbridge sim token`),
//! speaking the real protocol (`token.md`) over a byte stream: hello → certificate and
//! signature from its own P-384 key, key switch (with the late `4 OK` under the old key
//! that the vendor log shows), device info, fiscal info, baskets with `1 OK`, type 9,
//! type 3 and type 60 answers. A control handle counts sales per basket id and flips
//! fault knobs for the tests.
//!
//! Result faults, for rehearsing "the sale happened, its result did not arrive intact":
//! the basket is sold (it counts in [`SimControl::sales`]) and the real type 3 is what the
//! books keep ([`SimControl::sale_result`]) and what is re-sent after the next handshake
//! when [`Knobs::redeliver_after_reconnect`] is on; only the first delivery is spoiled:
//! - lost: `1 OK`, then no type 3 at all; the link stays up ([`Knobs::lose_next_result`],
//!   [`SimOptions::lose_rate`], `--lose-rate`);
//! - garbled: a valid type 3 frame whose JSON is cut short (its first half)
//!   ([`Knobs::garble_next_result`], [`SimOptions::garble_rate`], `--garble-rate`);
//! - foreign: a well-formed type 3 for another basket, `basketID` `other-<id>`
//!   ([`Knobs::foreign_next_result`]).
//!
//! They apply to sales only (not to a cancelled basket, a type 9 or a type 60). The rates
//! are drawn per sale from their own generator (seeded from `seed`): below `lose_rate`
//! lost, below `lose_rate + garble_rate` garbled.
//!
//! Layout: `identity` (the device's certificate and signing key, a test CA), `device`
//! (the register's options, books and counters, and the [`SimControl`] handle), `faults`
//! (the [`Knobs`] and the draw of result faults), `link` (one link's protocol: the
//! handshake, the answers and the sale) and `listener` (`posbridge sim token` over TCP).

mod device;
mod faults;
mod identity;
mod link;
mod listener;
#[cfg(test)]
mod tests;

pub use device::{SimControl, SimOptions, TokenDevice};
pub use faults::Knobs;
pub use identity::{DeviceIdentity, TestCa};
pub use listener::TokenSim;
