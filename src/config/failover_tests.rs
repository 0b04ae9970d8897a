//! `mqtt.urls`: several brokers tried in order, or `mqtt.url` for one.

use super::Config;

fn config(mqtt: &str) -> Result<Config, String> {
    Config::from_toml_str(&format!(
        "agent_id = \"shop-1\"\n[mqtt]\n{mqtt}\n[store]\npath = \"/tmp/x\"\n"
    ))
    .map_err(|e| e.to_string())
}

#[test]
fn urls_are_the_brokers_in_order() {
    let c = config(r#"urls = ["mqtt://mq1.example", "mqtts://mq2.example:8884"]"#).expect("valid");
    let eps = c.mqtt.endpoints().expect("endpoints");
    let got: Vec<_> = eps.iter().map(|e| (e.tls, e.host.as_str(), e.port)).collect();
    assert_eq!(got, vec![(false, "mq1.example", 1883), (true, "mq2.example", 8884)]);
    // The first is what the one-broker accessor gives.
    assert_eq!(c.mqtt.endpoint().expect("first"), eps[0]);
    // `url` is the one-element form.
    let one = config(r#"url = "mqtt://mq1.example""#).expect("valid");
    assert_eq!(one.mqtt.endpoints().expect("one"), vec![eps[0].clone()]);
}

#[test]
fn a_wrong_list_is_refused_naming_the_entry() {
    for (mqtt, starts) in [
        (
            r#"url = "mqtt://a"
urls = ["mqtt://b"]"#,
            "mqtt.urls: set mqtt.url or mqtt.urls, not both",
        ),
        (r#"urls = ["mqtt://a", "http://b"]"#, "mqtt.urls[1]: "),
        (r#"urls = ["mqtt://a", "mqtt://a:1883"]"#, "mqtt.urls[1]: "),
        ("keep_alive = \"30s\"", "missing key \"mqtt.url\""),
    ] {
        let e = config(mqtt).expect_err(mqtt);
        assert!(e.starts_with(starts), "{mqtt}: {e}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("\"mqtt://h{i}\"")).collect();
    let e = config(&format!("urls = [{}]", many.join(", "))).expect_err("17 brokers");
    assert!(e.starts_with("mqtt.urls: more than 16"), "{e}");
}

#[test]
fn a_password_is_never_sent_in_clear_to_any_broker_of_the_list() {
    let base = "username = \"u\"\npassword_file = \"/etc/pw\"\n";
    // Loopback in clear and a remote one over TLS: fine.
    config(&format!("{base}urls = [\"mqtt://127.0.0.1\", \"mqtts://mq.example\"]")).expect("valid");
    // One remote broker in clear: refused, unless asked for.
    let clear = format!("{base}urls = [\"mqtts://mq.example\", \"mqtt://mq3.example\"]");
    let e = config(&clear).expect_err("clear text");
    assert!(e.starts_with("mqtt.urls: mqtt:// would send"), "{e}");
    config(&format!("{clear}\nallow_plaintext = true")).expect("asked for");
    // TLS files are for mqtts:// brokers: fine when any broker of the list is one.
    config("urls = [\"mqtt://127.0.0.1\", \"mqtts://mq.example\"]\nca_file = \"/etc/ca.pem\"")
        .expect("valid");
}
