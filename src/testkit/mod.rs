//! The one test kit (feature `testkit`, on by default, left out of production builds):
//! brokers (a real mosquitto on loopback, or the embedded rumqttd), the agent binary as a
//! child process (so it can be killed with SIGKILL at any point), its configuration as a
//! typed spec, and a recording cloud POS client (on [`crate::pos::Client`]). Used by the black-box tests in `tests/`
//! (`tests/common` re-exports it), by `posbridge-bench` and, for its broker, by the demo.
//! Everything runs on loopback.
//!
//! Failures here are the test's failures: the kit panics with a message instead of
//! returning errors, like an assertion.

pub mod agent;
pub mod broker;
pub mod cloud;
pub mod tmpfs;

pub use agent::{agent_bin, Agent, AgentSpec};
pub use broker::{free_port, mosquitto_available, wait_port, Broker, Mosquitto};
pub use cloud::{Cloud, Msg};
pub use tmpfs::Tmpfs;
