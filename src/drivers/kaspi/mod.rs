//! Driver for Kaspi Smart POS (`kaspi.md`, LAN API v2).

pub mod api;
pub mod process;
