//! Errors a wrong config is refused with: unknown and missing keys, bad durations, types
//! and enums, duplicate or malformed ids, the MQTT URL, and the rules between keys; each
//! message names the key and, where there is one, the file.

use super::test_fixtures::{error, load, with_terminal, FULL, MINIMAL};
use super::*;

#[test]
fn unknown_top_level_key_names_key_and_file() {
    let (c, path) = load(&format!("agnet_id = \"x\"\n{MINIMAL}"), &[]);
    let message = c.expect_err("unknown key").to_string();
    assert!(
        message.starts_with(&format!("unknown key \"agnet_id\" in {path}")),
        "{message}"
    );
    assert!(
        message.contains("agent_id, topic_prefix"),
        "lists the known keys: {message}"
    );
}

#[test]
fn unknown_nested_key_names_section_key_and_file() {
    let (c, path) = load(&format!("{MINIMAL}urll = \"mqtt://y\"\n"), &[]);
    let message = c.expect_err("unknown key").to_string();
    assert!(
        message.starts_with(&format!("unknown key \"mqtt.urll\" in {path}")),
        "{message}"
    );
    let message = error(&format!("{MINIMAL}[log]\ncolour = true\n"));
    assert!(
        message.starts_with("unknown key \"log.colour\" in inline TOML"),
        "{message}"
    );
}

#[test]
fn unknown_terminal_key_is_rejected_and_named() {
    let text = format!("{FULL}colour = \"red\"\n"); // lands in the last table: terminals[4]
    let (c, path) = load(&text, &[]);
    let message = c.expect_err("unknown terminal key").to_string();
    assert!(
        message.starts_with(&format!("unknown key \"terminals[4].colour\" in {path}")),
        "{message}"
    );
    let message = error(&with_terminal(
        "id = \"i\"\nkind = \"ip\"\naddr = \"h:1\"\nurl = \"x\"",
    ));
    assert!(
        message.starts_with("unknown key \"terminals[0].url\""),
        "{message}"
    );
    let message = error(&with_terminal(
        "id = \"t\"\nkind = \"token\"\nusb = { vidd = 1 }",
    ));
    assert!(
        message.starts_with("unknown key \"terminals[0].usb.vidd\""),
        "{message}"
    );
}

#[test]
fn unknown_kind_and_missing_keys_are_named() {
    let message = error(&with_terminal("id = \"x\"\nkind = \"visa\""));
    assert!(
        message.contains("terminals[0]") && message.contains("visa"),
        "{message}"
    );
    let message = error(&with_terminal("id = \"x\""));
    assert!(
        message.starts_with("missing key \"terminals[0].kind\""),
        "{message}"
    );
    let message = error(&with_terminal("id = \"x\"\nkind = \"ip\""));
    assert!(
        message.starts_with("missing key \"terminals[0].addr\""),
        "{message}"
    );
    let message = error("agent_id = \"a\"\n[mqtt]\n");
    assert!(message.starts_with("missing key \"mqtt.url\""), "{message}");
    let message = error("[mqtt]\nurl = \"mqtt://h\"\n");
    assert!(message.starts_with("missing key \"agent_id\""), "{message}");
}

#[test]
fn bad_duration_is_named() {
    let message = error(&format!("{MINIMAL}keep_alive = \"30 parsecs\"\n"));
    assert!(
        message.starts_with("mqtt.keep_alive: invalid duration \"30 parsecs\""),
        "{message}"
    );
    let message = error(&format!("{MINIMAL}[commands]\ndefault_ttl = 120\n"));
    assert!(
        message.starts_with("commands.default_ttl: invalid duration \"120\""),
        "{message}"
    );
    let message = error(&with_terminal(
        "id = \"i\"\nkind = \"ip\"\naddr = \"h:1\"\nop_timeout = \"soon\"",
    ));
    assert!(
        message.starts_with("terminals[0]: invalid duration \"soon\""),
        "{message}"
    );
    let message = error(&format!("{MINIMAL}[commands]\ndefault_ttl = \"0s\"\n"));
    assert!(
        message.starts_with("commands.default_ttl: must be more than 0s"),
        "{message}"
    );
}

#[test]
fn bad_types_and_enums_are_named() {
    let message = error(&format!("{MINIMAL}[commands]\nmax_bytes = \"lots\"\n"));
    assert!(message.starts_with("commands.max_bytes: "), "{message}");
    let message = error(&format!("{MINIMAL}[log]\nformat = \"xml\"\n"));
    assert!(
        message.starts_with("log.format: ") && message.contains("xml"),
        "{message}"
    );
    let message = error("agent_id = \"a\"\nmqtt = \"mqtt://h\"\n");
    assert!(message.starts_with("mqtt: "), "{message}");
    let message = error("agent_id = \"a\"\n[mqtt\n");
    assert!(
        message.starts_with("inline TOML: invalid TOML"),
        "{message}"
    );
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
    let message = error(&with_terminal(
        "id = \"a b\"\nkind = \"ip\"\naddr = \"h:1\"",
    ));
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
    let ok = |tls, host: &str, port| {
        Ok(MqttEndpoint {
            tls,
            host: host.into(),
            port,
        })
    };
    assert_eq!(endpoint("mqtts://b.example"), ok(true, "b.example", 8883));
    assert_eq!(
        endpoint("mqtt://b.example:1884/"),
        ok(false, "b.example", 1884)
    );
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
    let mqtt = |extra: &str| error(&format!("{MINIMAL}{extra}\n"));
    assert!(mqtt("ca_file = \"/ca.pem\"").starts_with("mqtt.ca_file: only used with an mqtts://"));
    assert!(mqtt("password_file = \"/p\"").starts_with("mqtt.password_file: needs mqtt.username"));
    // A password over plain mqtt:// to another machine only when asked for.
    assert!(mqtt("username = \"u\"\npassword_file = \"/p\"")
        .starts_with("mqtt.url: mqtt:// would send mqtt.password_file's password in clear text"));
    assert!(Config::from_toml_str(&format!(
        "{MINIMAL}username = \"u\"\npassword_file = \"/p\"\nallow_plaintext = true\n"
    ))
    .is_ok());
    assert!(Config::from_toml_str(
        "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"u\"\npassword_file = \"/p\"\n"
    )
    .is_ok());
    assert!(mqtt("keep_alive = \"0s\"").starts_with("mqtt.keep_alive: "));
    let commands = |extra: &str| error(&format!("{MINIMAL}[commands]\n{extra}\n"));
    assert!(commands("max_bytes = 1023").starts_with("commands.max_bytes: 1023 is outside"));
    assert!(commands("max_bytes = 16777217").starts_with("commands.max_bytes: "));
    assert!(commands("queue_depth = 0").starts_with("commands.queue_depth: "));
    let terminal = |body: &str| error(&with_terminal(body));
    let kaspi = "id = \"k\"\nkind = \"kaspi\"\nurl = \"https://192.0.2.1\"\n";
    assert!(
        terminal(&format!("{kaspi}tls = \"pin\"")).starts_with("terminals[0].pin_sha256: required")
    );
    assert!(
        terminal(&format!("{kaspi}tls = \"pin\"\npin_sha256 = \"abc\""))
            .starts_with("terminals[0].pin_sha256: must be 64 hex")
    );
    let pinned = format!("{kaspi}tls = \"pin\"\npin_sha256 = \"{}\"", "aB".repeat(32));
    assert!(Config::from_toml_str(&with_terminal(&pinned)).is_ok());
    assert!(terminal("id = \"k\"\nkind = \"kaspi\"\nurl = \"ftp://h\"")
        .starts_with("terminals[0].url: "));
    assert!(terminal("id = \"i\"\nkind = \"ip\"\naddr = \"192.0.2.20\"")
        .starts_with("terminals[0].addr: "));
    assert!(
        terminal("id = \"t\"\nkind = \"token\"\ntransport = \"tcp\"")
            .starts_with("terminals[0].addr: required")
    );
    assert!(terminal("id = \"t\"\nkind = \"token\"\nstrict = true")
        .starts_with("terminals[0].ca_file: required with strict = true"));
    assert!(terminal("id = \"t\"\nkind = \"token\"\nquantity_scale = 7")
        .starts_with("terminals[0].quantity_scale: "));
    assert!(
        terminal("id = \"t\"\nkind = \"token\"\nrecovery_window = \"0s\"")
            .starts_with("terminals[0].recovery_window: ")
    );
    let paywall = "id = \"p\"\nkind = \"paywall\"\nterminal_guid = \"8ff33705-57c7-42dc-8341-a0053e7f3009\"\n";
    assert!(terminal(&format!(
        "{paywall}mode = \"live\"\ntest_url = \"https://t.example\""
    ))
    .starts_with("terminals[0].live_url: required with mode = \"live\""));
    // Live money never over plain HTTP, but to this machine itself (a simulator).
    assert!(terminal(&format!(
        "{paywall}mode = \"live\"\nlive_url = \"http://paywall.example/api\""
    ))
    .starts_with("terminals[0].live_url: \"http://paywall.example/api\": a live provider URL must be https://"));
    assert!(Config::from_toml_str(&with_terminal(&format!(
        "{paywall}mode = \"live\"\nlive_url = \"http://127.0.0.1:8443/live\""
    )))
    .is_ok());
    assert!(
        Config::from_toml_str(&with_terminal(&format!("{paywall}mode = \"disabled\""))).is_ok()
    );
    assert!(terminal(
        "id = \"p\"\nkind = \"paywall\"\nmode = \"test\"\ntest_url = \"https://t.example\""
    )
    .starts_with("terminals[0].terminal_guid: required"));
    assert!(terminal("id = \"k\"\nkind = \"kuveyt\"\nmode = \"test\"")
        .starts_with("terminals[0].test_url: required"));
    assert!(terminal(
        "id = \"k\"\nkind = \"kuveyt\"\nmode = \"disabled\"\nreturn_url = \"https://u:p@x\""
    )
    .starts_with("terminals[0].return_url: credentials"));
    assert!(
        terminal("id = \"k\"\nkind = \"kuveyt\"\nmode = \"disabled\"\npoll_interval = \"1s\"")
            .starts_with("terminals[0].poll_interval: must be at least 2s")
    );
    assert!(terminal(&format!(
        "{paywall}mode = \"disabled\"\ncurrency_ids = {{ try = 1 }}"
    ))
    .starts_with("terminals[0].currency_ids.try: "));
    assert!(terminal(&format!(
        "{paywall}mode = \"disabled\"\nop_timeout = \"0s\""
    ))
    .starts_with("terminals[0].op_timeout: "));
}
