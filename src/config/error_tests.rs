//! Errors a wrong config is refused with: unknown and missing keys, bad durations, types
//! and enums, duplicate or malformed ids, the MQTT URL, and the rules between keys; each
//! message names the key and, where there is one, the file.

use super::test_fixtures::{error, load, with_terminal, FULL, MINIMAL};
use super::*;

/// `text` as a config file is refused with a message that starts with `prefix` and names
/// the file; the message.
fn refused_in_file(text: &str, prefix: &str) -> String {
    let (c, path) = load(text, &[]);
    let message = c.expect_err(prefix).to_string();
    assert!(message.starts_with(&format!("{prefix} in {path}")), "{message}");
    message
}

/// Each config text is refused with a message that starts with its prefix.
fn refused(cases: &[(String, &str)]) {
    for (text, prefix) in cases {
        let message = error(text);
        assert!(message.starts_with(prefix), "{prefix}: {message}");
    }
}

#[test]
fn unknown_top_level_key_names_key_and_file() {
    let message =
        refused_in_file(&format!("agnet_id = \"x\"\n{MINIMAL}"), "unknown key \"agnet_id\"");
    assert!(message.contains("agent_id, topic_prefix"), "lists the known keys: {message}");
}

#[test]
fn unknown_nested_key_names_section_key_and_file() {
    refused_in_file(&format!("{MINIMAL}urll = \"mqtt://y\"\n"), "unknown key \"mqtt.urll\"");
    refused(&[(
        format!("{MINIMAL}[log]\ncolour = true\n"),
        "unknown key \"log.colour\" in inline TOML",
    )]);
}

#[test]
fn unknown_terminal_key_is_rejected_and_named() {
    // Lands in the last table: terminals[4].
    refused_in_file(&format!("{FULL}colour = \"red\"\n"), "unknown key \"terminals[4].colour\"");
    refused(&[
        (
            with_terminal("id = \"i\"\nkind = \"ip\"\naddr = \"h:1\"\nurl = \"x\""),
            "unknown key \"terminals[0].url\"",
        ),
        (
            with_terminal("id = \"t\"\nkind = \"token\"\nusb = { vidd = 1 }"),
            "unknown key \"terminals[0].usb.vidd\"",
        ),
    ]);
}

#[test]
fn unknown_kind_and_missing_keys_are_named() {
    let message = error(&with_terminal("id = \"x\"\nkind = \"visa\""));
    assert!(message.contains("terminals[0]") && message.contains("visa"), "{message}");
    refused(&[
        (with_terminal("id = \"x\""), "missing key \"terminals[0].kind\""),
        (with_terminal("id = \"x\"\nkind = \"ip\""), "missing key \"terminals[0].addr\""),
        ("agent_id = \"a\"\n[mqtt]\n".into(), "missing key \"mqtt.url\""),
        ("[mqtt]\nurl = \"mqtt://h\"\n".into(), "missing key \"agent_id\""),
    ]);
}

#[test]
fn bad_duration_is_named() {
    refused(&[
        (
            format!("{MINIMAL}keep_alive = \"30 parsecs\"\n"),
            "mqtt.keep_alive: invalid duration \"30 parsecs\"",
        ),
        (
            format!("{MINIMAL}[commands]\ndefault_ttl = 120\n"),
            "commands.default_ttl: invalid duration \"120\"",
        ),
        (
            with_terminal("id = \"i\"\nkind = \"ip\"\naddr = \"h:1\"\nop_timeout = \"soon\""),
            "terminals[0]: invalid duration \"soon\"",
        ),
        (
            format!("{MINIMAL}[commands]\ndefault_ttl = \"0s\"\n"),
            "commands.default_ttl: must be more than 0s",
        ),
    ]);
}

#[test]
fn bad_types_and_enums_are_named() {
    refused(&[
        (format!("{MINIMAL}[commands]\nmax_bytes = \"lots\"\n"), "commands.max_bytes: "),
        ("agent_id = \"a\"\nmqtt = \"mqtt://h\"\n".into(), "mqtt: "),
        ("agent_id = \"a\"\n[mqtt\n".into(), "inline TOML: invalid TOML"),
    ]);
    let message = error(&format!("{MINIMAL}[log]\nformat = \"xml\"\n"));
    assert!(message.starts_with("log.format: ") && message.contains("xml"), "{message}");
}

#[test]
fn duplicate_terminal_id() {
    let text = format!(
        "{MINIMAL}[[terminals]]\nid = \"t\"\nkind = \"ip\"\naddr = \"h:1\"\n\
         [[terminals]]\nid = \"t\"\nkind = \"token\"\n"
    );
    let (c, path) = load(&text, &[]);
    let message = c.expect_err("duplicate").to_string();
    assert_eq!(
        message,
        format!("terminals[1].id: duplicate terminal id \"t\" (also terminals[0]) (in {path})")
    );
}

#[test]
fn bad_ids() {
    for bad in ["", "shop 42", "shop/42", "ä", &"x".repeat(65)] {
        let message = error(&MINIMAL.replace("shop-042", bad));
        assert!(message.starts_with("agent_id: "), "{bad:?}: {message}");
    }
    assert!(Config::from_toml_str(&MINIMAL.replace("shop-042", &"x".repeat(64))).is_ok());
    let message = error(&with_terminal("id = \"a b\"\nkind = \"ip\"\naddr = \"h:1\""));
    assert!(message.starts_with("terminals[0].id: "), "{message}");
    for bad in ["", "a/", "a/+/b", "#", "$SYS"] {
        let message = error(&format!("topic_prefix = \"{bad}\"\n{MINIMAL}"));
        assert!(message.starts_with("topic_prefix: "), "{bad:?}: {message}");
    }
}

#[test]
fn mqtt_url_and_endpoint() {
    let endpoint = |url: &str| {
        Config::from_toml_str(&MINIMAL.replace("mqtt://broker.example", url))
            .map(|c| c.mqtt.endpoint().expect("validated"))
            .map_err(|e| e.to_string())
    };
    let ok = |tls, host: &str, port| Ok(MqttEndpoint { tls, host: host.into(), port });
    assert_eq!(endpoint("mqtts://b.example"), ok(true, "b.example", 8883));
    assert_eq!(endpoint("mqtt://b.example:1884/"), ok(false, "b.example", 1884));
    assert_eq!(endpoint("MQTTS://[::1]:9000"), ok(true, "::1", 9000));
    for bad in [
        "http://b.example",
        "b.example:1883",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://b.example:0",
        "mqtt://b.example:99999",
        "mqtt://b.example/topic",
        "mqtt://user:hunter2@b.example",
        "mqtt://::1",
    ] {
        let message = endpoint(bad).expect_err(bad);
        assert!(message.starts_with("mqtt.url: "), "{bad}: {message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn cross_key_rules() {
    let mqtt = |extra: &str| format!("{MINIMAL}{extra}\n");
    let commands = |extra: &str| format!("{MINIMAL}[commands]\n{extra}\n");
    let kaspi = "id = \"k\"\nkind = \"kaspi\"\nurl = \"https://192.0.2.1\"\n";
    let paywall = "id = \"p\"\nkind = \"paywall\"\nterminal_guid = \"8ff33705-57c7-42dc-8341-a0053e7f3009\"\n";
    let pinned = format!("{kaspi}tls = \"pin\"\npin_sha256 = \"{}\"", "aB".repeat(32));
    refused(&[
        (mqtt("ca_file = \"/ca.pem\""), "mqtt.ca_file: only used with an mqtts://"),
        (mqtt("password_file = \"/p\""), "mqtt.password_file: needs mqtt.username"),
        // A password over plain mqtt:// to another machine only when asked for (below).
        (
            mqtt("username = \"u\"\npassword_file = \"/p\""),
            "mqtt.url: mqtt:// would send mqtt.password_file's password in clear text",
        ),
        (mqtt("keep_alive = \"0s\""), "mqtt.keep_alive: "),
        (commands("max_bytes = 1023"), "commands.max_bytes: 1023 is outside"),
        (commands("max_bytes = 16777217"), "commands.max_bytes: "),
        (commands("queue_depth = 0"), "commands.queue_depth: "),
    ]);
    refused(
        &[
            (format!("{kaspi}tls = \"pin\""), "terminals[0].pin_sha256: required"),
            (
                format!("{kaspi}tls = \"pin\"\npin_sha256 = \"abc\""),
                "terminals[0].pin_sha256: must be 64 hex",
            ),
            ("id = \"k\"\nkind = \"kaspi\"\nurl = \"ftp://h\"".into(), "terminals[0].url: "),
            ("id = \"i\"\nkind = \"ip\"\naddr = \"192.0.2.20\"".into(), "terminals[0].addr: "),
            (
                "id = \"t\"\nkind = \"token\"\ntransport = \"tcp\"".into(),
                "terminals[0].addr: required",
            ),
            (
                "id = \"t\"\nkind = \"token\"\nstrict = true".into(),
                "terminals[0].ca_file: required with strict = true",
            ),
            (
                "id = \"t\"\nkind = \"token\"\nquantity_scale = 7".into(),
                "terminals[0].quantity_scale: ",
            ),
            (
                "id = \"t\"\nkind = \"token\"\nrecovery_window = \"0s\"".into(),
                "terminals[0].recovery_window: ",
            ),
            (
                format!("{paywall}mode = \"live\"\ntest_url = \"https://t.example\""),
                "terminals[0].live_url: required with mode = \"live\"",
            ),
            // Live money never over plain HTTP, but to this machine itself (a simulator).
            (
                format!("{paywall}mode = \"live\"\nlive_url = \"http://paywall.example/api\""),
                "terminals[0].live_url: \"http://paywall.example/api\": a live provider URL must be https://",
            ),
            (
                "id = \"p\"\nkind = \"paywall\"\nmode = \"test\"\ntest_url = \"https://t.example\"".into(),
                "terminals[0].terminal_guid: required",
            ),
            (
                "id = \"k\"\nkind = \"kuveyt\"\nmode = \"test\"".into(),
                "terminals[0].test_url: required",
            ),
            (
                "id = \"k\"\nkind = \"kuveyt\"\nmode = \"disabled\"\nreturn_url = \"https://u:p@x\"".into(),
                "terminals[0].return_url: credentials",
            ),
            (
                "id = \"k\"\nkind = \"kuveyt\"\nmode = \"disabled\"\npoll_interval = \"1s\"".into(),
                "terminals[0].poll_interval: must be at least 2s",
            ),
            (
                format!("{paywall}mode = \"disabled\"\ncurrency_ids = {{ try = 1 }}"),
                "terminals[0].currency_ids.try: ",
            ),
            (
                format!("{paywall}mode = \"disabled\"\nop_timeout = \"0s\""),
                "terminals[0].op_timeout: ",
            ),
        ]
        .map(|(body, prefix)| (with_terminal(&body), prefix)),
    );
    for ok in [
        mqtt("username = \"u\"\npassword_file = \"/p\"\nallow_plaintext = true"),
        "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"u\"\npassword_file = \"/p\"\n".into(),
        with_terminal(&pinned),
        with_terminal(&format!("{paywall}mode = \"live\"\nlive_url = \"http://127.0.0.1:8443/live\"")),
        with_terminal(&format!("{paywall}mode = \"disabled\"")),
    ] {
        assert!(Config::from_toml_str(&ok).is_ok(), "{ok}");
    }
}

/// A retention shorter than a day would let a resent payment run again once its id was
/// pruned: refused, whatever the unit, unless a test build asks for a short one (the soak
/// bench, `POSBRIDGE_TEST_SHORT_RETENTION`).
#[test]
fn a_retention_under_a_day_is_refused() {
    let floor = "store.retention: must be at least 1d";
    refused(&[
        (format!("{MINIMAL}[store]\nretention = \"2m\"\n"), floor),
        (format!("{MINIMAL}[store]\nretention = \"23h\"\n"), floor),
        (format!("{MINIMAL}[store]\nretention = \"0s\"\n"), floor),
    ]);
    assert!(Config::from_toml_str(&format!("{MINIMAL}[store]\nretention = \"1d\"\n")).is_ok());
    let day = Duration::from_secs(86_400);
    assert!(validate::check_retention(day, false).is_ok());
    assert!(validate::check_retention(day - Duration::from_secs(1), false).is_err());
    assert!(validate::check_retention(Duration::from_secs(120), true).is_ok());
    assert!(validate::check_retention(Duration::ZERO, true).is_err());
}
