//! posbridge IP terminal protocol v1 (`ip-terminal.md`), in two layers: [`wire`] (the
//! request and answer types and a pure line codec, no I/O) and [`client`] (the only I/O:
//! one request at a time over TCP, lines bounded). No engine logic lives here.

pub mod client;
pub mod wire;

pub use client::*;
pub use wire::*;

#[cfg(test)]
mod tests;
