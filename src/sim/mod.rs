//! Device simulators shipped in the binary (`posbridge sim …`), used by the tests, the
//! demo and field engineers.

pub mod ip;
pub mod token;
