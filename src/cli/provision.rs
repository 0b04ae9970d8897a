//! `posbridge provision`: write a configuration from flags, create the device key, and
//! print the broker ACL this agent needs. For field engineers setting up a new shop.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::api::Topics;
use crate::config::Config;

/// The flags of `posbridge provision`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[arg(long)]
    pub agent_id: String,
    /// mqtt://host[:port]
    #[arg(long)]
    pub broker_url: String,
    #[arg(long)]
    pub username: Option<String>,
    /// A file holding the MQTT password (root:posbridge 0640).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// kind:id:addr-or-url, repeatable: ip:ip-1:192.0.2.20:8080,
    /// kaspi:kaspi-1:https://192.0.2.10:8080, token:token-1:usb, paywall:pw-1:URL,
    /// kuveyt:kv-1:URL
    #[arg(long = "terminal")]
    pub terminals: Vec<String>,
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    pub out: PathBuf,
    #[arg(long, default_value = "/var/lib/posbridge")]
    pub store_dir: PathBuf,
    #[arg(long, default_value = "posbridge")]
    pub topic_prefix: String,
    /// The agent's system user (owns the device key; the config's group), when root.
    #[arg(long, default_value = "posbridge")]
    pub user: String,
    /// Replace an existing configuration (kept as .bak).
    #[arg(long)]
    pub force: bool,
}

/// What provisioning did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub config: PathBuf,
    pub key_file: PathBuf,
    pub key_created: bool,
    pub acl: String,
    /// Things the engineer still has to do (e.g. a Paywall GUID).
    pub notes: Vec<String>,
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `[[terminals]]` table from `kind:id:addr-or-url`:
/// - `ip:ip-1:192.0.2.20:8080`
/// - `kaspi:kaspi-1:https://192.0.2.10:8080`
/// - `token:token-1:usb` (or `token:token-1:HOST:PORT` for the simulator)
/// - `paywall:pw-1:https://…` / `kuveyt:kv-1:https://…` — written with `mode =
///   "disabled"` and the URL as `test_url`: the engineer sets the GUID/secrets and the mode.
pub fn terminal_toml(spec: &str, notes: &mut Vec<String>) -> anyhow::Result<String> {
    let mut parts = spec.splitn(3, ':');
    let (Some(kind), Some(id), Some(target)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--terminal {spec:?}: expected kind:id:addr-or-url (e.g. ip:ip-1:192.0.2.20:8080)");
    };
    let head = format!("[[terminals]]\nid = {}\nkind = {}\n", quote(id), quote(kind));
    let body = match kind {
        "ip" => format!("addr = {}\n", quote(target)),
        "kaspi" => format!(
            "url = {}\n# tls = \"verify\" | \"pin\" (with pin_sha256) | \"insecure\"; tls_name for an IP url\n",
            quote(target)
        ),
        "token" if target.is_empty() || target == "usb" => {
            "transport = \"usb\"\n# usb = { vid = 0x18d1, serial = \"\" }\n".to_string()
        }
        "token" => format!("transport = \"tcp\"\naddr = {}\n", quote(target)),
        "paywall" | "kuveyt" => {
            notes.push(format!(
                "terminal {id} ({kind}) is written with mode = \"disabled\": set {} and the mode, and store its API key with `posbridge secret set {id} api_key`",
                if kind == "paywall" { "terminal_guid" } else { "return_url/cancel_url" }
            ));
            let extra = if kind == "paywall" {
                "# terminal_guid = \"00000000-0000-0000-0000-000000000000\"\n"
            } else {
                "# return_url = \"https://…\"\n# cancel_url = \"https://…\"\n"
            };
            format!("mode = \"disabled\"   # test | live | disabled\ntest_url = {}\n{extra}", quote(target))
        }
        other => bail!(
            "--terminal {spec:?}: unknown kind {other:?} (expected ip, kaspi, token, paywall or kuveyt)"
        ),
    };
    Ok(format!("{head}{body}"))
}

/// The configuration text.
pub fn render(o: &Options, notes: &mut Vec<String>) -> anyhow::Result<String> {
    let mut s = format!(
        "# Written by `posbridge provision` on {}. Check it with `posbridge check`.\n\
         # Every key: docs/configuration.md. Environment overrides: POSBRIDGE__SECTION__KEY.\n\
         agent_id = {}\n",
        crate::api::ts(chrono::Utc::now()),
        quote(&o.agent_id)
    );
    if o.topic_prefix != "posbridge" {
        s.push_str(&format!("topic_prefix = {}\n", quote(&o.topic_prefix)));
    }
    s.push_str(&format!("\n[mqtt]\nurl = {}\n", quote(&o.broker_url)));
    if let Some(u) = &o.username {
        s.push_str(&format!("username = {}\n", quote(u)));
    }
    if let Some(p) = &o.password_file {
        s.push_str(&format!("password_file = {}\n", quote(&p.to_string_lossy())));
    }
    s.push_str(&format!(
        "\n[store]\npath = {}\n\n[security]\n# Signed commands are the default (docs/mqtt-api.md: Signed commands): add the cloud's P-256\n# public key(s). Without keys the agent refuses to start with payment terminals,\n# unless allow_unsigned = true (only for a broker nobody else can write to).\n# command_keys = [{{ kid = \"cloud-1\", public_key_file = \"/etc/posbridge/cloud-1.pub\" }}]\n# allow_unsigned = false\n\n[log]\nformat = \"auto\"   # journald under systemd, text on a terminal\nlevel = \"info\"\n",
        quote(&o.store_dir.to_string_lossy())
    ));
    for t in &o.terminals {
        s.push('\n');
        s.push_str(&terminal_toml(t, notes)?);
    }
    Ok(s)
}

/// The mosquitto ACL lines for this agent.
pub fn acl(cfg: &Config) -> String {
    let root = Topics::new(&cfg.topic_prefix, &cfg.agent_id);
    let root = root.root();
    let user = match &cfg.mqtt.username {
        Some(u) => format!("user {u}\n"),
        None => format!(
            "# mqtt.username is not set: give the agent a user of its own (mosquitto_passwd) —\n\
             # an anonymous client cannot be held to these lines, and anonymous access must stay off.\n\
             user {}\n",
            cfg.agent_id
        ),
    };
    let prefix = &cfg.topic_prefix;
    format!(
        "# mosquitto acl_file entry for agent {agent} (least privilege: it reads only its commands\n\
         # and writes only what it publishes; it can never write a command):\n{user}\
         topic read {root}/cmd\n\
         topic write {root}/result\ntopic write {root}/evt\ntopic write {root}/status\n\
         topic write {root}/telemetry\ntopic write {root}/terminals/#\n\
         # lets `posbridge doctor` (same user) read the agent's retained status and terminal states:\n\
         topic read {root}/status\ntopic read {root}/terminals/#\n\
         # the cloud POS, the reverse (one user for the fleet, or one per shop with the agent id):\n\
         # user cloud-pos\n# topic write {prefix}/+/cmd\n# topic read {prefix}/+/result\n\
         # topic read {prefix}/+/evt\n# topic read {prefix}/+/status\n# topic read {prefix}/+/telemetry\n\
         # topic read {prefix}/+/terminals/#\n",
        agent = cfg.agent_id
    )
}

/// Write the configuration (validated before it replaces anything), create the device
/// key, and hand both to the agent's user when run as root.
pub fn run(o: &Options) -> anyhow::Result<Summary> {
    if o.out.exists() && !o.force {
        bail!(
            "{} exists; pass --force to replace it (the old one is kept as .bak)",
            o.out.display()
        );
    }
    if let Some(p) = &o.password_file {
        std::fs::metadata(p)
            .with_context(|| format!("--password-file {}: cannot read it", p.display()))?;
        if o.username.is_none() {
            bail!("--password-file needs --username");
        }
    }
    let mut notes = Vec::new();
    let text = render(o, &mut notes)?;
    let dir = o.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Validate through the same loader as `run`, from a temporary file beside the target.
    let tmp = tempfile::Builder::new()
        .prefix(".posbridge-provision")
        .suffix(".toml")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::fs::write(tmp.path(), &text)?;
    let cfg = Config::load(tmp.path())
        .map_err(|e| anyhow::anyhow!("the configuration from these flags is invalid: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o640))?;
    }
    let owner = system_user(&o.user);
    if let Some((_, gid)) = owner {
        chown(tmp.path(), None, Some(gid))?;
    }
    if o.out.exists() {
        let bak = PathBuf::from(format!("{}.bak", o.out.display()));
        std::fs::rename(&o.out, &bak)
            .with_context(|| format!("cannot keep the old config as {}", bak.display()))?;
    }
    tmp.persist(&o.out).with_context(|| format!("cannot write {}", o.out.display()))?;

    let key_file = cfg.store.key_file.clone();
    let key_created = crate::secrets::ensure_key(&key_file)
        .with_context(|| format!("device key {}", key_file.display()))?;
    if let Some((uid, gid)) = owner {
        chown(&o.store_dir, Some(uid), Some(gid))?;
        chown(&key_file, Some(uid), Some(gid))?;
    } else if is_root() {
        notes.push(format!(
            "user {:?} does not exist: {} is owned by root; the agent's user must own it (chown)",
            o.user,
            key_file.display()
        ));
    }
    Ok(Summary { config: o.out.clone(), key_file, key_created, acl: acl(&cfg), notes })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) of a system user, when running as root and the user exists.
fn system_user(name: &str) -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam takes a NUL-terminated name; the result is read immediately, before
    // any other call that could reuse its static buffer.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, uid, gid)
        .with_context(|| format!("cannot chown {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> Options {
        Options {
            agent_id: "shop-042".into(),
            broker_url: "mqtt://192.0.2.5:1883".into(),
            username: Some("shop-042".into()),
            password_file: None,
            terminals: vec![
                "ip:ip-1:192.0.2.20:8080".into(),
                "kaspi:kaspi-1:https://192.0.2.10:8080".into(),
                "token:token-1:usb".into(),
                "paywall:pw-1:https://pw.example/api".into(),
                "kuveyt:kv-1:https://kv.example/api".into(),
            ],
            out: dir.join("etc/posbridge.toml"),
            store_dir: dir.join("state"),
            topic_prefix: "posbridge".into(),
            user: "posbridge-no-such-user".into(),
            force: false,
        }
    }

    #[test]
    fn every_kind_renders_a_valid_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut notes = vec![];
        let text = render(&opts(dir.path()), &mut notes).expect("render");
        let cfg = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let kinds: Vec<_> = cfg.terminals.iter().map(|t| t.kind_name()).collect();
        assert_eq!(kinds, ["ip", "kaspi", "token", "paywall", "kuveyt"]);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn bad_terminal_specs_are_named() {
        let mut n = vec![];
        let e = terminal_toml("ip-only", &mut n).expect_err("no colons");
        assert!(e.to_string().contains("kind:id:addr-or-url"));
        let e = terminal_toml("fax:f-1:1.2.3.4:5", &mut n).expect_err("kind");
        assert!(e.to_string().contains("unknown kind \"fax\""));
        // Quotes cannot break out of the TOML string.
        let t = terminal_toml("ip:x:a\"\nkind = \"kaspi", &mut n).expect("renders");
        assert!(Config::from_toml_str(&format!(
            "agent_id = \"a\"\n[mqtt]\nurl = \"mqtt://h\"\n{t}"
        ))
        .is_err());
    }

    #[test]
    fn run_writes_config_and_key_and_prints_acl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(dir.path());
        let s = run(&o).expect("provision");
        assert!(s.key_created);
        let key = std::fs::read(&s.key_file).expect("key");
        assert_eq!(key.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.key_file).expect("m").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cmode = std::fs::metadata(&o.out).expect("m").permissions().mode() & 0o777;
        assert_eq!(cmode, 0o640);
        assert!(s.acl.contains("user shop-042\n"));
        assert!(s.acl.contains("topic read posbridge/shop-042/cmd\n"));
        assert!(s.acl.contains("topic write posbridge/shop-042/result\n"));
        // Least privilege: the agent can never publish a command, and there is no
        // pattern that would let it.
        assert!(!s.acl.contains("topic write posbridge/shop-042/#"));
        assert!(!s.acl.contains("topic write posbridge/shop-042/cmd"));
        assert!(!s.acl.contains("\ntopic readwrite"));
        Config::load(&o.out).expect("valid");
        // Not replaced without --force; with it, the old one is kept and the key is not.
        assert!(run(&o).is_err());
        let s2 = run(&Options { force: true, ..o.clone() }).expect("again");
        assert!(!s2.key_created);
        assert_eq!(std::fs::read(&s2.key_file).expect("key"), key);
        assert!(dir.path().join("etc/posbridge.toml.bak").exists());
    }
}
