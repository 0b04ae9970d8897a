//! Parsing and defaults: the full example and a minimal config parse into the documented
//! values, the Kaspi timing keys default and validate, and what `posbridge check` prints
//! (`masked_json`) shows paths and durations but no secrets.

use std::path::PathBuf;
use std::time::Duration;

use super::mask::mask_secrets;
use super::test_fixtures::{error, with_terminal, FULL, MINIMAL};
use super::*;

#[test]
fn full_example_parses() {
    let c = Config::from_toml_str(FULL).expect("full example");
    assert_eq!(c.agent_id, "shop-042");
    assert_eq!(c.mqtt.username, None);
    assert_eq!(c.mqtt.password_file, None);
    let kinds: Vec<_> = c.terminals.iter().map(|t| (t.id(), t.kind_name())).collect();
    assert_eq!(
        kinds,
        [
            ("kaspi-1", "kaspi"),
            ("ip-1", "ip"),
            ("token-1", "token"),
            ("paywall-1", "paywall"),
            ("kuveyt-1", "kuveyt")
        ]
    );
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else { panic!("kaspi") };
    assert_eq!((k.tls, k.protected, k.pin_sha256.clone()), (TlsMode::Verify, true, None));
    let TerminalConfig::Ip(ip) = &c.terminals[1] else { panic!("ip") };
    assert_eq!(ip.connect_timeout, Duration::from_secs(5));
    assert_eq!(ip.op_timeout, Duration::from_secs(120));
    let TerminalConfig::Token(t) = &c.terminals[2] else { panic!("token") };
    assert_eq!(
        t.usb,
        UsbFilter { vid: Some(0x18d1), pid: None, serial: None, ..Default::default() }
    );
    assert_eq!((t.transport, t.addr.clone()), (Transport::Usb, None));
    assert_eq!((t.quantity_scale, t.op_timeout), (1000, Duration::from_secs(120)));
    assert_eq!(t.recovery_window, Duration::from_secs(30));
    let TerminalConfig::Paywall(p) = &c.terminals[3] else { panic!("paywall") };
    assert_eq!(p.mode, ProviderMode::Test);
    let TerminalConfig::Kuveyt(k) = &c.terminals[4] else { panic!("kuveyt") };
    assert_eq!(k.cancel_url.as_deref(), Some("https://shop.example/cancel"));
    let endpoint = c.mqtt.endpoint().expect("endpoint");
    assert_eq!(endpoint, MqttEndpoint { tls: false, host: "127.0.0.1".into(), port: 1883 });
}

#[test]
fn defaults_follow_the_spec() {
    let c = Config::from_toml_str(MINIMAL).expect("minimal");
    assert_eq!(c.topic_prefix, "posbridge");
    assert_eq!(c.mqtt.client_id, "posbridge-shop-042");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(c.store.path, PathBuf::from("/var/lib/posbridge"));
    assert_eq!(c.store.key_file, PathBuf::from("/var/lib/posbridge/device.key"));
    assert_eq!(c.commands.default_ttl, Duration::from_secs(120));
    assert_eq!((c.commands.max_bytes, c.commands.queue_depth), (65536, 16));
    assert!(c.security.command_keys.is_empty());
    assert_eq!(c.telemetry.interval, Duration::from_secs(60));
    assert_eq!((c.log.format, c.log.level.as_str()), (LogFormat::Auto, "info"));
    assert!(c.terminals.is_empty());

    let moved = format!("{MINIMAL}[store]\npath = \"/data/pb\"\n");
    let c = Config::from_toml_str(&moved).expect("store.path");
    assert_eq!(c.store.key_file, PathBuf::from("/data/pb/device.key"));

    let kaspi = with_terminal("id = \"k\"\nkind = \"kaspi\"\nurl = \"http://192.0.2.1:8080\"");
    let c = Config::from_toml_str(&kaspi).expect("kaspi");
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else { panic!("kaspi") };
    assert_eq!(k.register_name, "posbridge-shop-042");
}

#[test]
fn kaspi_timing_keys_default_and_validate() {
    let kaspi = "id = \"k\"\nkind = \"kaspi\"\nurl = \"https://192.0.2.1\"\n";
    let c = Config::from_toml_str(&with_terminal(kaspi)).expect("defaults");
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else { panic!("kaspi") };
    assert_eq!(k.poll_interval, Duration::from_secs(1));
    assert_eq!(k.actualize_interval, Duration::from_secs(10));
    assert_eq!(k.actualize_window, Duration::from_secs(300));
    assert_eq!(k.payment_timeout, Duration::from_secs(260));
    assert_eq!(k.register_timeout, Duration::from_secs(120));
    assert_eq!(k.renew_before, Duration::from_secs(3600));
    let set = format!("{kaspi}poll_interval = \"250ms\"\nactualize_window = \"1m\"");
    let c = Config::from_toml_str(&with_terminal(&set)).expect("set");
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else { panic!("kaspi") };
    assert_eq!(k.poll_interval, Duration::from_millis(250));
    assert_eq!(k.actualize_window, Duration::from_secs(60));
    let e = error(&with_terminal(&format!("{kaspi}poll_interval = \"0s\"")));
    assert!(e.starts_with("terminals[0].poll_interval: "), "{e}");
    let e = error(&with_terminal(&format!("{kaspi}register_timeout = \"soon\"")));
    assert!(e.contains("invalid duration"), "{e}");
}

#[test]
fn masked_json_shows_paths_and_durations_but_no_secrets() {
    let text = FULL
        .replace("username = \"\"", "username = \"edge\"")
        .replace("password_file = \"\"", "password_file = \"/etc/posbridge/mqtt.pass\"");
    let json = Config::from_toml_str(&text).expect("full").masked_json();
    assert_eq!(json["mqtt"]["password_file"], "/etc/posbridge/mqtt.pass");
    assert_eq!(json["mqtt"]["keep_alive"], "30s");
    assert_eq!(json["commands"]["default_ttl"], "2m");
    assert_eq!(json["terminals"][1]["kind"], "ip");
    assert_eq!(json["terminals"][2]["usb"]["vid"], 0x18d1);

    // Inline secrets cannot be configured (deny_unknown_fields); the mask is the backstop.
    let mut value = serde_json::json!({
        "mqtt": { "password": "hunter2", "url": "mqtts://edge:hunter2@b.example:8883/" },
        "terminals": [{ "api_key": "k3y", "api_key_file": "/k", "client_secret": "s3cret",
                        "private_key": "-----BEGIN", "token": "t0k", "tls": "pin" }],
    });
    mask_secrets(&mut value);
    let printed = value.to_string();
    for secret in ["hunter2", "k3y", "s3cret", "BEGIN", "t0k"] {
        assert!(!printed.contains(secret), "{secret} leaked: {printed}");
    }
    assert_eq!(value["mqtt"]["url"], "mqtts://***@b.example:8883/");
    assert_eq!(value["terminals"][0]["api_key_file"], "/k");
    assert_eq!(value["terminals"][0]["tls"], "pin");
}

#[test]
fn secret_key_list() {
    for key in ["password", "api_key", "api_secret", "token", "private_key", "MQTT_PASSWORD"] {
        assert!(is_secret_key(key), "{key}");
    }
    for key in
        ["password_file", "api_key_file", "api_secret_file", "url", "pin_sha256", "serial", "kind"]
    {
        assert!(!is_secret_key(key), "{key}");
    }
}
