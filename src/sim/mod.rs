//! Device simulators shipped in the binary (`posbridge sim …`), used by the tests, the
//! demo and field engineers.

pub mod http;
pub mod ip;
pub mod kaspi;
pub mod kuveyt;
pub mod paywall;
pub mod token;
