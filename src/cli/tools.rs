//! Small field tools: `secret set`, `store acknowledge`, `sign`, `usb list`, and the
//! report `provision` prints.

use std::process::ExitCode;

use crate::config::Config;

pub(super) async fn secret_set(
    config: &std::path::Path, terminal: &str, name: &str,
) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    let cfg = Config::load(config)?;
    if !cfg.terminals.iter().any(|t| t.id() == terminal) {
        anyhow::bail!("terminal {terminal:?} is not configured in {}", config.display());
    }
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("value for {terminal}/{name}: "))?
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end_matches(['\r', '\n']).to_string()
    };
    let value = zeroize::Zeroizing::new(value);
    if value.is_empty() {
        anyhow::bail!("empty value: nothing stored");
    }
    // The running agent holds the store: it stores the secret, and payments go on.
    let req = serde_json::json!({"op": "secret_set", "terminal": terminal, "name": name, "value": value.as_str()});
    if let Some(m) = crate::control::call(&cfg.store.path, &req).await? {
        return Ok(format!("posbridge: {m}"));
    }
    let (_store, secrets) = crate::control::open_directly(&cfg)?;
    secrets.set(terminal, name, value.as_bytes()).await?;
    Ok(format!("posbridge: secret {terminal}/{name} stored (encrypted)"))
}

pub(super) async fn store_acknowledge(config: &std::path::Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    // The running agent holds the store: it lifts the hold, and payments resume at once.
    let req = serde_json::json!({"op": "store_acknowledge"});
    if let Some(m) = crate::control::call(&cfg.store.path, &req).await? {
        return Ok(m);
    }
    let store = crate::control::open_store(&cfg)?;
    Ok(crate::control::acknowledged(store.lift_money_hold().await?))
}

/// The cloud's P-256 private key from the PEM file `--key` names (the text is wiped after).
pub(super) fn signing_key(key: &std::path::Path) -> anyhow::Result<p256::ecdsa::SigningKey> {
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(key)
            .map_err(|e| anyhow::anyhow!("--key {}: {e}", key.display()))?,
    );
    crate::api::signature::signing_key_from_pem(&pem).map_err(|e| anyhow::anyhow!("--key: {e}"))
}

pub(super) fn sign(
    key: &std::path::Path, kid: &str, command: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use std::io::Read;
    let sk = signing_key(key)?;
    let mut bytes = Vec::new();
    match command {
        Some(p) => bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => {
            std::io::stdin().read_to_end(&mut bytes)?;
        }
    }
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| anyhow::anyhow!("the command is not valid JSON: {e}"))?;
    Ok(crate::api::signature::seal(&bytes, kid, &sk).to_string())
}

/// What `provision` prints after writing the files: where they are, the ACL for the broker
/// and the next steps.
pub(super) fn provision_report(s: &crate::cli::provision::Summary) {
    println!("wrote {}", s.config.display());
    println!(
        "device key {} {}",
        s.key_file.display(),
        if s.key_created {
            "created (0600) — back it up with the store"
        } else {
            "already existed (kept)"
        }
    );
    for n in &s.notes {
        println!("note: {n}");
    }
    println!("\n{}", s.acl);
    println!(
        "next: posbridge check --config {c}; systemctl restart posbridge; sudo -u posbridge posbridge doctor --config {c}",
        c = s.config.display()
    );
}

/// `usb list`: what is on the bus, and which device the Token driver would take.
pub(super) async fn usb_list() -> ExitCode {
    use crate::drivers::token::usb;
    let port = usb::default_port(Default::default());
    let devs = tokio::task::spawn_blocking(move || port.list())
        .await
        .unwrap_or_else(|e| Err(usb::UsbError::new(usb::UsbErrorKind::Other, e.to_string())));
    let failed = matches!(&devs, Err(e) if e.kind != usb::UsbErrorKind::NoSubsystem);
    print!("{}", usb::list::render(devs));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
