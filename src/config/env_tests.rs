//! Loading: the file and the `POSBRIDGE__SECTION__KEY` environment overrides (nested and
//! top-level keys, errors that name the variable), the process environment's plumbing,
//! and a missing file named in the error.

use std::time::Duration;

use super::test_fixtures::{load, write_file, FULL, MINIMAL};
use super::*;

#[test]
fn env_overrides_nested_and_top_level_keys() {
    let env = [
        ("POSBRIDGE__AGENT_ID", "042"),
        ("POSBRIDGE__TOPIC_PREFIX", "acme/pos"),
        ("POSBRIDGE__MQTT__URL", "mqtts://broker.example"),
        ("POSBRIDGE__MQTT__KEEP_ALIVE", "45s"),
        ("POSBRIDGE__COMMANDS__QUEUE_DEPTH", "32"),
        ("POSBRIDGE__LOG__FORMAT", "json"),
        ("OTHER__AGENT_ID", "ignored"),
    ];
    let (c, _) = load(FULL, &env);
    let c = c.expect("env overrides");
    assert_eq!(c.agent_id, "042", "a numeric-looking id stays a string");
    assert_eq!(c.topic_prefix, "acme/pos");
    assert_eq!(c.mqtt.client_id, "posbridge-shop-042", "the file's value is kept");
    let endpoint = c.mqtt.endpoint().expect("endpoint");
    assert_eq!((endpoint.tls, endpoint.port), (true, 8883));
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(45));
    assert_eq!(c.commands.queue_depth, 32);
    assert_eq!(c.commands.max_bytes, 65536);
    assert_eq!(c.log.format, LogFormat::Json);

    // A section missing from the file, and a client id derived from an overridden agent id.
    let (c, _) = load(
        MINIMAL,
        &[("POSBRIDGE__AGENT_ID", "till_2"), ("POSBRIDGE__TELEMETRY__INTERVAL", "5m")],
    );
    let c = c.expect("env-only section");
    assert_eq!(c.mqtt.client_id, "posbridge-till_2");
    assert_eq!(c.telemetry.interval, Duration::from_secs(300));
}

#[test]
fn env_errors_name_the_variable() {
    let (c, _) = load(MINIMAL, &[("POSBRIDGE__MQTT__URLL", "mqtt://x")]);
    let message = c.expect_err("unknown env key").to_string();
    assert!(
        message
            .starts_with("unknown key \"mqtt.urll\" in environment variable POSBRIDGE__MQTT__URLL"),
        "{message}"
    );

    let (c, _) = load(MINIMAL, &[("POSBRIDGE__COMMANDS__QUEUE_DEPTH", "0")]);
    let message = c.expect_err("queue depth 0").to_string();
    assert_eq!(message, "commands.queue_depth: must be at least 1 (in environment variable POSBRIDGE__COMMANDS__QUEUE_DEPTH)");

    let (c, _) = load(FULL, &[("POSBRIDGE__TERMINALS__1__ADDR", "192.0.2.99:80")]);
    let message = c.expect_err("list override").to_string();
    assert!(message.contains("cannot be overridden from the environment"), "{message}");
    assert!(
        message.ends_with("(in environment variable POSBRIDGE__TERMINALS__1__ADDR)"),
        "{message}"
    );
}

#[test]
fn load_reads_the_file_and_the_process_environment() {
    let (_dir, path) = write_file(FULL);
    // The test process sets no POSBRIDGE__ variables; this only proves the plumbing.
    let c = Config::load(&path).expect("load");
    assert_eq!(c.terminals.len(), 5);
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.toml");
    let message = Config::load_with_env(&path, Vec::<(String, String)>::new())
        .expect_err("missing")
        .to_string();
    assert!(
        message.starts_with(&format!("cannot read config file {}: ", path.display())),
        "{message}"
    );
}
