//! Driver for the Token fiscal register over the Integration Hub protocol (`token.md`).
//!
//! Layers: `crypto` (body sealing) → `codec` (frames, triplets) → `session` (typed
//! handshake state machine, generic over the byte stream) → the driver: `driver` (the
//! [`TokenDriver`]: connect and verify, the sale, asking after a lost result, the
//! `Driver` trait), `outcome` (what a sale's end means as a fact) and `attach` (the USB
//! side: [`UsbSide`], the hotplug watcher, opening the accessory).
//!
//! Money safety: the basket id is journalled durably before the basket is sent. The
//! protocol has no way to ask "what happened to basket X" and no promise that a repeated
//! basket id is ignored, so a basket that may have reached the device is never sent
//! again: after a lost link, an unreadable result or a crash, asking means reconnecting
//! and waiting for a sale result for that basket; without one the engine says `unknown`
//! (the register may have printed the receipt).

pub mod basket;
pub mod cert;
pub mod codec;
pub mod crypto;
pub mod journal;
pub mod session;
pub mod usb;

mod attach;
mod driver;
mod outcome;

pub use attach::UsbSide;
pub use driver::{basket_id, Io, TokenDriver, TokenSettings, CERT_PIN};
