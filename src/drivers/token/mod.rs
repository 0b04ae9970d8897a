//! Driver for the Token fiscal register over the Integration Hub protocol (`token.md`).
//!
//! Layers: `crypto` (body sealing) → `codec` (frames, triplets) → `session` (typed
//! handshake state machine, generic over the byte stream) → this driver.

pub mod cert;
pub mod codec;
pub mod crypto;
pub mod session;
