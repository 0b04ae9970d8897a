use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// The example from spec/config.md, with concrete URLs for the `…` placeholders.
pub(super) const FULL: &str = r#"
agent_id = "shop-042"
topic_prefix = "posbridge"

[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "posbridge-shop-042"
username = ""
password_file = ""
ca_file = ""
client_cert_file = ""
client_key_file = ""
keep_alive = "30s"

[store]
path = "/var/lib/posbridge"
key_file = "/var/lib/posbridge/device.key"

[commands]
default_ttl = "120s"
max_bytes = 65536
queue_depth = 16

[security]
command_keys = []

[telemetry]
interval = "60s"

[log]
format = "auto"
level = "info"

[[terminals]]
id = "kaspi-1"
kind = "kaspi"
url = "https://192.0.2.10:8080"
tls = "verify"
tls_name = ""
pin_sha256 = ""
ca_file = ""
register_name = "posbridge-shop-042"
protected = true

[[terminals]]
id = "ip-1"
kind = "ip"
addr = "192.0.2.20:8080"

[[terminals]]
id = "token-1"
kind = "token"
transport = "usb"
usb = { vid = 0x18d1, serial = "" }
addr = ""
strict = false
ca_file = ""
company_name = "posbridge"

[[terminals]]
id = "paywall-1"
kind = "paywall"
mode = "test"
test_url = "https://paywall-test.example/api"
live_url = "https://paywall.example/api"
terminal_guid = "8ff33705-57c7-42dc-8341-a0053e7f3009"
api_key_file = ""
client_key_file = ""

[[terminals]]
id = "kuveyt-1"
kind = "kuveyt"
mode = "test"
test_url = "https://kuveyt-test.example/pos"
live_url = "https://kuveyt.example/pos"
return_url = "https://shop.example/return"
cancel_url = "https://shop.example/cancel"
api_key_file = ""
api_secret_file = ""
"#;

const MINIMAL: &str = "agent_id = \"shop-042\"\n[mqtt]\nurl = \"mqtt://broker.example\"\n";

fn write_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("posbridge.toml");
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(text.as_bytes()).expect("write");
    (dir, path)
}

fn load(text: &str, env: &[(&str, &str)]) -> (Result<Config, ConfigError>, String) {
    let (_dir, path) = write_file(text);
    let env = env.iter().map(|&(k, v)| (k, v));
    (
        Config::load_with_env(&path, env),
        path.display().to_string(),
    )
}

fn error(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// MINIMAL plus one terminal table.
fn with_terminal(body: &str) -> String {
    format!("{MINIMAL}[[terminals]]\n{body}\n")
}

#[test]
fn full_example_parses() {
    let c = Config::from_toml_str(FULL).expect("full example");
    assert_eq!(c.agent_id, "shop-042");
    assert_eq!(c.mqtt.username, None);
    assert_eq!(c.mqtt.password_file, None);
    let kinds: Vec<_> = c
        .terminals
        .iter()
        .map(|t| (t.id(), t.kind_name()))
        .collect();
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
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else {
        panic!("kaspi")
    };
    assert_eq!(
        (k.tls, k.protected, k.pin_sha256.clone()),
        (TlsMode::Verify, true, None)
    );
    let TerminalConfig::Ip(ip) = &c.terminals[1] else {
        panic!("ip")
    };
    assert_eq!(ip.connect_timeout, Duration::from_secs(5));
    assert_eq!(ip.op_timeout, Duration::from_secs(120));
    let TerminalConfig::Token(t) = &c.terminals[2] else {
        panic!("token")
    };
    assert_eq!(
        t.usb,
        UsbFilter {
            vid: Some(0x18d1),
            pid: None,
            serial: None,
            ..Default::default()
        }
    );
    assert_eq!((t.transport, t.addr.clone()), (Transport::Usb, None));
    assert_eq!(
        (t.quantity_scale, t.op_timeout),
        (1000, Duration::from_secs(120))
    );
    assert_eq!(t.recovery_window, Duration::from_secs(30));
    let TerminalConfig::Paywall(p) = &c.terminals[3] else {
        panic!("paywall")
    };
    assert_eq!(p.mode, ProviderMode::Test);
    let TerminalConfig::Kuveyt(k) = &c.terminals[4] else {
        panic!("kuveyt")
    };
    assert_eq!(k.cancel_url.as_deref(), Some("https://shop.example/cancel"));
    let endpoint = c.mqtt.endpoint().expect("endpoint");
    assert_eq!(
        endpoint,
        MqttEndpoint {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1883
        }
    );
}

#[test]
fn defaults_follow_the_spec() {
    let c = Config::from_toml_str(MINIMAL).expect("minimal");
    assert_eq!(c.topic_prefix, "posbridge");
    assert_eq!(c.mqtt.client_id, "posbridge-shop-042");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(c.store.path, PathBuf::from("/var/lib/posbridge"));
    assert_eq!(
        c.store.key_file,
        PathBuf::from("/var/lib/posbridge/device.key")
    );
    assert_eq!(c.commands.default_ttl, Duration::from_secs(120));
    assert_eq!((c.commands.max_bytes, c.commands.queue_depth), (65536, 16));
    assert!(c.security.command_keys.is_empty());
    assert_eq!(c.telemetry.interval, Duration::from_secs(60));
    assert_eq!(
        (c.log.format, c.log.level.as_str()),
        (LogFormat::Auto, "info")
    );
    assert!(c.terminals.is_empty());

    let moved = format!("{MINIMAL}[store]\npath = \"/data/pb\"\n");
    let c = Config::from_toml_str(&moved).expect("store.path");
    assert_eq!(c.store.key_file, PathBuf::from("/data/pb/device.key"));

    let kaspi = with_terminal("id = \"k\"\nkind = \"kaspi\"\nurl = \"http://192.0.2.1:8080\"");
    let c = Config::from_toml_str(&kaspi).expect("kaspi");
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else {
        panic!("kaspi")
    };
    assert_eq!(k.register_name, "posbridge-shop-042");
}

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
    assert_eq!(
        c.mqtt.client_id, "posbridge-shop-042",
        "the file's value is kept"
    );
    let endpoint = c.mqtt.endpoint().expect("endpoint");
    assert_eq!((endpoint.tls, endpoint.port), (true, 8883));
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(45));
    assert_eq!(c.commands.queue_depth, 32);
    assert_eq!(c.commands.max_bytes, 65536);
    assert_eq!(c.log.format, LogFormat::Json);

    // A section missing from the file, and a client id derived from an overridden agent id.
    let (c, _) = load(
        MINIMAL,
        &[
            ("POSBRIDGE__AGENT_ID", "till_2"),
            ("POSBRIDGE__TELEMETRY__INTERVAL", "5m"),
        ],
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
    assert!(
        message.contains("cannot be overridden from the environment"),
        "{message}"
    );
    assert!(
        message.ends_with("(in environment variable POSBRIDGE__TERMINALS__1__ADDR)"),
        "{message}"
    );
}

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

#[test]
fn masked_json_shows_paths_and_durations_but_no_secrets() {
    let text = FULL
        .replace("username = \"\"", "username = \"edge\"")
        .replace(
            "password_file = \"\"",
            "password_file = \"/etc/posbridge/mqtt.pass\"",
        );
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
    for key in [
        "password",
        "api_key",
        "api_secret",
        "token",
        "private_key",
        "MQTT_PASSWORD",
    ] {
        assert!(is_secret_key(key), "{key}");
    }
    for key in [
        "password_file",
        "api_key_file",
        "api_secret_file",
        "url",
        "pin_sha256",
        "serial",
        "kind",
    ] {
        assert!(!is_secret_key(key), "{key}");
    }
}

#[test]
fn kaspi_timing_keys_default_and_validate() {
    let kaspi = "id = \"k\"\nkind = \"kaspi\"\nurl = \"https://192.0.2.1\"\n";
    let c = Config::from_toml_str(&with_terminal(kaspi)).expect("defaults");
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else {
        panic!("kaspi")
    };
    assert_eq!(k.poll_interval, Duration::from_secs(1));
    assert_eq!(k.actualize_interval, Duration::from_secs(10));
    assert_eq!(k.actualize_window, Duration::from_secs(300));
    assert_eq!(k.payment_timeout, Duration::from_secs(260));
    assert_eq!(k.register_timeout, Duration::from_secs(120));
    assert_eq!(k.renew_before, Duration::from_secs(3600));
    let set = format!("{kaspi}poll_interval = \"250ms\"\nactualize_window = \"1m\"");
    let c = Config::from_toml_str(&with_terminal(&set)).expect("set");
    let TerminalConfig::Kaspi(k) = &c.terminals[0] else {
        panic!("kaspi")
    };
    assert_eq!(k.poll_interval, Duration::from_millis(250));
    assert_eq!(k.actualize_window, Duration::from_secs(60));
    let e = error(&with_terminal(&format!("{kaspi}poll_interval = \"0s\"")));
    assert!(e.starts_with("terminals[0].poll_interval: "), "{e}");
    let e = error(&with_terminal(&format!(
        "{kaspi}register_timeout = \"soon\""
    )));
    assert!(e.contains("invalid duration"), "{e}");
}
