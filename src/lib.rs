//! posbridge: an edge agent between a cloud POS (MQTT) and shop payment/fiscal terminals.

pub mod agent; //       wiring: store + engine + bus + drivers + telemetry
pub mod api; //         the MQTT contract: types, topics, validation (no I/O)
#[cfg(feature = "embedded-broker")]
pub mod broker; //      embedded rumqttd for the demo and tests
pub mod bus; //         MQTT connection, manual acks, outbox pump, status/will
pub mod cli; //         the command line and its tools: doctor, provision, demo, sim, sign
pub mod config; //      typed configuration (file + POSBRIDGE__ env)
pub mod control; //     the running agent's local control socket (secret set, kaspi register)
pub mod drivers; //     one module per terminal kind behind one trait
pub mod engine; //      dedupe, deadlines, per-terminal queues, resume at start
pub mod faults; //      test-only abort and I/O-error points (feature `failpoints`)
pub mod logging; //     journald / text / JSON log sinks
pub mod pos; //         the cloud POS side: command client and signer (demo, `posbridge cloud`, test kit)
pub mod secrets; //     secrets at rest: AES-256-GCM under the device key
pub mod sim; //         device simulators (`posbridge sim …`)
pub mod stages; //      stage timestamps for posbridge-bench (POSBRIDGE_STAGES)
pub mod store; //       sled store: commands, journal, outbox; group commit + fdatasync
pub mod systemd; //     sd_notify readiness + watchdog fed by engine progress
pub mod telemetry; //   periodic metrics
#[cfg(feature = "testkit")]
pub mod testkit; //     brokers, agent process, typed config, cloud client for tests and bench

/// The agent's version, as reported on `status` and `ping`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
