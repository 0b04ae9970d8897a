//! Unit tests of the doctor's checks that need no broker: secret file detection, file
//! and device key permissions, free space, and the table.

use std::os::unix::fs::PermissionsExt;

use super::security::{files, is_secret_file, key_file};
use super::*;

#[test]
fn secret_file_keys() {
    assert!(is_secret_file("mqtt.password_file"));
    assert!(is_secret_file("mqtt.client_key_file"));
    assert!(is_secret_file("terminals[0].api_key_file"));
    assert!(is_secret_file("terminals[1].api_secret_file"));
    assert!(!is_secret_file("security.command_keys[0].public_key_file"));
    assert!(!is_secret_file("mqtt.ca_file"));
    assert!(!is_secret_file("mqtt.client_cert_file"));
}

#[test]
fn files_are_found_generically_and_world_readable_secrets_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").expect("write");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = format!(
        "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_file = \"{}\"\n[[terminals]]\nid = \"p\"\nkind = \"paywall\"\nmode = \"disabled\"\napi_key_file = \"{}/missing\"\n",
        pw.display(),
        dir.path().display()
    );
    let cfg = Config::from_toml_str(&text).expect("config");
    let checks = files(&cfg);
    assert_eq!(checks.len(), 2, "{checks:?}");
    let pw_check = &checks[0];
    assert_eq!(pw_check.name, "mqtt.password_file");
    assert_eq!(pw_check.level, Level::Fail);
    assert!(pw_check.fix.contains("chmod 640"));
    let api = &checks[1];
    assert_eq!(api.name, "terminals[0].api_key_file");
    assert_eq!(api.level, Level::Fail);
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(files(&cfg)[0].level, Level::Ok);
}

#[test]
fn key_file_permissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n[store]\npath = \"{}\"\n",
        dir.path().display()
    );
    let cfg = Config::from_toml_str(&text).expect("config");
    assert_eq!(key_file(&cfg).level, Level::Warn); // not created yet
    std::fs::write(&cfg.store.key_file, [7u8; 32]).expect("write");
    std::fs::set_permissions(&cfg.store.key_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let c = key_file(&cfg);
    assert_eq!(c.level, Level::Fail);
    assert!(c.fix.starts_with("chmod 600"), "{c:?}");
    std::fs::set_permissions(&cfg.store.key_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    assert_eq!(key_file(&cfg).level, Level::Ok);
    std::fs::write(&cfg.store.key_file, [7u8; 5]).expect("write");
    assert_eq!(key_file(&cfg).level, Level::Fail);
}

#[test]
fn free_space_of_a_path_not_created_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let free = free_bytes(&dir.path().join("not/yet")).expect("statvfs");
    assert!(free > 0);
}

#[test]
fn table_shows_fix_only_for_problems() {
    let t = render(&[Check::ok("clock", "fine"), Check::fail("broker", "down", "start it")]);
    assert!(t.contains("clock   ok      fine"), "{t}");
    assert!(t.contains("broker  FAIL    down"), "{t}");
    assert!(t.contains("fix: start it"), "{t}");
    assert!(t.contains("1 ok, 0 warning(s), 1 failure(s)"), "{t}");
}
