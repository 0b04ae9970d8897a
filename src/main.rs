//! CLI only: parse arguments, load config, call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use posbridge::config::{Config, LogFormat, DEFAULT_PATH};

#[derive(Parser)]
#[command(
    name = "posbridge",
    version,
    about = "Edge agent between a cloud POS (MQTT) and shop payment terminals"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (what systemd starts).
    Run {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate the configuration and print the effective settings (secrets masked).
    Check {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check broker, agent, store, disk, clock, key and file permissions and every
    /// terminal; prints a table with a fix per problem, exits 1 when anything FAILs.
    Doctor {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Write a configuration from flags, create the device key, print the broker ACL.
    Provision {
        #[arg(long)]
        agent_id: String,
        /// mqtt://host[:port]
        #[arg(long)]
        broker_url: String,
        #[arg(long)]
        username: Option<String>,
        /// A file holding the MQTT password (root:posbridge 0640).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// kind:id:addr-or-url, repeatable: ip:ip-1:192.0.2.20:8080,
        /// kaspi:kaspi-1:https://192.0.2.10:8080, token:token-1:usb, paywall:pw-1:URL,
        /// kuveyt:kv-1:URL
        #[arg(long = "terminal")]
        terminals: Vec<String>,
        #[arg(long, default_value = DEFAULT_PATH)]
        out: PathBuf,
        #[arg(long, default_value = "/var/lib/posbridge")]
        store_dir: PathBuf,
        #[arg(long, default_value = "posbridge")]
        topic_prefix: String,
        /// The agent's system user (owns the device key; the config's group), when root.
        #[arg(long, default_value = "posbridge")]
        user: String,
        /// Replace an existing configuration (kept as .bak).
        #[arg(long)]
        force: bool,
    },
    /// Embedded broker + IP terminal simulator + agent + a scripted cloud POS, on loopback.
    #[cfg(feature = "embedded-broker")]
    Demo {
        /// Print only the summary, not every message.
        #[arg(long)]
        quiet: bool,
    },
    /// Manage secrets stored encrypted at rest (AES-256-GCM under store.key_file).
    Secret {
        #[command(subcommand)]
        action: SecretCmd,
    },
    /// Store tools: lift the money hold after store damage.
    Store {
        #[command(subcommand)]
        action: StoreCmd,
    },
    /// Sign a command JSON into an envelope for agents with `security.command_keys`
    /// (for cloud vendors testing their signer). Prints the envelope on stdout.
    Sign {
        /// P-256 private key, PEM (PKCS#8 or SEC1, e.g. from `openssl ecparam -name prime256v1 -genkey`).
        #[arg(long)]
        key: PathBuf,
        /// Key id the agent knows this key's public half by.
        #[arg(long)]
        kid: String,
        /// File with the command JSON; stdin when absent. Its bytes are signed exactly as given.
        command: Option<PathBuf>,
    },
    /// Kaspi Smart POS tools (registration of the register with the terminal).
    Kaspi {
        #[command(subcommand)]
        action: KaspiCmd,
    },
    /// USB tools for the Token register (`usb list`).
    Usb {
        #[command(subcommand)]
        action: UsbCmd,
    },
    /// Run one device simulator in the foreground.
    Sim {
        #[command(subcommand)]
        kind: SimKind,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Store a secret for a terminal; the value is read from stdin (never echoed, never
    /// logged). Stop the agent first: the store is single-process.
    Set {
        terminal: String,
        name: String,
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// After the store was found damaged at start, money commands are refused until an
    /// operator has reconciled the salvaged commands (README: "A store that cannot be
    /// opened"). This lifts that hold. Stop the agent first (single-process store).
    Acknowledge {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum UsbCmd {
    /// List USB devices: VID:PID, serial, whether it looks like a Token register, and
    /// whether this user may open it. Opens nothing. Exit 0 (also when this system has
    /// no USB subsystem; the message says so), 1 when listing failed otherwise.
    List,
}

#[derive(Subcommand)]
enum KaspiCmd {
    /// Register with the terminal's protected API: the cashier presses "Allow" on the
    /// terminal; the tokens are stored encrypted. Stop the agent first (single-process store).
    Register {
        terminal: String,
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SimKind {
    /// The generic IP terminal (ip-terminal.md, protocol v1).
    Ip {
        /// Address to listen on (the seed's default is 0.0.0.0:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Probability that a payment fails (0.0–1.0).
        #[arg(long, default_value_t = 0.1)]
        fail_rate: f64,
        /// Probability that a new pay/refund executes but its answer is lost: the
        /// connection closes without one (0.0–1.0).
        #[arg(long, default_value_t = 0.0)]
        lose_rate: f64,
        /// Probability that a new pay/refund executes but its answer line is cut short
        /// (0.0–1.0).
        #[arg(long, default_value_t = 0.0)]
        garble_rate: f64,
        /// Seed for a deterministic sequence of outcomes.
        #[arg(long)]
        seed: Option<u64>,
        /// Simulated customer time per payment, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// The Token fiscal register's Integration Hub side (token.md) over TCP.
    Token {
        #[arg(long, default_value = "127.0.0.1:7010")]
        listen: SocketAddr,
        /// Seed for receipt/Z numbers and sale UUIDs.
        #[arg(long)]
        seed: Option<u64>,
        /// The fiscal number the register reports.
        #[arg(long, default_value = "AV0000000121")]
        fiscal_no: String,
        /// Simulated cashier/customer time per sale, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Probability that a basket is sold but its sale result (type 3) is never sent;
        /// the link stays up (0.0–1.0).
        #[arg(long, default_value_t = 0.0)]
        lose_rate: f64,
        /// Probability that a basket is sold but its sale result carries JSON cut short
        /// (0.0–1.0).
        #[arg(long, default_value_t = 0.0)]
        garble_rate: f64,
    },
    /// Kaspi Smart POS (kaspi.md, LAN API v2). Amount conventions: see the README.
    Kaspi {
        /// Address to listen on (the terminal's port is 8080).
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Serve HTTPS with a generated certificate and require tokens (protected API).
        #[arg(long)]
        tls: bool,
        /// The certificate's name with --tls.
        #[arg(long, default_value = "pos1.kaspiros.kz")]
        tls_name: String,
        /// Write the simulator's CA certificate (PEM) here, for the driver's ca_file.
        #[arg(long)]
        ca_out: Option<PathBuf>,
        /// Seed for a deterministic sequence of methods, outcomes and ids.
        #[arg(long)]
        seed: Option<u64>,
        /// Customer time per payment, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        customer_ms: u64,
        /// Probability that an amount without a convention is declined (0.0–1.0).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// The cashier presses "Allow" this long after a register request.
        #[arg(long, default_value_t = 2000)]
        approve_after_ms: u64,
        /// Access token lifetime (e.g. "24h", "10m").
        #[arg(long, default_value = "24h")]
        token_lifetime: humantime::Duration,
    },
    /// Mock Paywall PhysicalAPI (paywall.md): base URLs …/test and …/live; outcomes by
    /// the amount's last two minor digits (README "Terminal: paywall").
    Paywall {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        #[command(flatten)]
        mock: MockArgs,
        /// How long a slow sale waits on the "device" before succeeding, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        slow_ms: u64,
    },
    /// Mock pay-by-link API (kuveyt.md): base URLs …/test and …/live; outcomes by the
    /// amount's last two minor digits (README "Terminal: kuveyt").
    Kuveyt {
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: SocketAddr,
        #[command(flatten)]
        mock: MockArgs,
    },
}

/// Options shared by the cloud mocks. The keys are the mock's own, not real secrets.
#[derive(clap::Args)]
struct MockArgs {
    /// Serve HTTPS with a self-signed certificate made at start.
    #[arg(long)]
    tls: bool,
    /// Where to write that certificate (PEM), for the agent's `ca_file`.
    #[arg(long)]
    cert_out: Option<PathBuf>,
    #[arg(long, default_value = "test-api-key")]
    test_api_key: String,
    /// Paywall `apiclientprivate` / Kuveyt `X-Api-Secret` of the test environment.
    #[arg(long, default_value = "test-secret")]
    test_secret: String,
    #[arg(long, default_value = "live-api-key")]
    live_api_key: String,
    #[arg(long, default_value = "live-secret")]
    live_secret: String,
}

fn init_logging(format: LogFormat, level: &str) {
    posbridge::logging::init(format, level);
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        }
        t.cancel();
    });
    token
}

async fn secret_set(config: &std::path::Path, terminal: &str, name: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Read};
    let cfg = Config::load(config)?;
    if !cfg.terminals.iter().any(|t| t.id() == terminal) {
        anyhow::bail!(
            "terminal {terminal:?} is not configured in {}",
            config.display()
        );
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
    posbridge::store::refuse_root_on_foreign_store(&cfg.store.path).map_err(anyhow::Error::msg)?;
    let (store, _) = posbridge::store::Store::open(&cfg.store.path).map_err(|e| {
        anyhow::anyhow!("{e} (is the agent running? stop it first: the store is single-process)")
    })?;
    let secrets = posbridge::secrets::Secrets::open(&cfg.store.key_file, store)?;
    secrets.set(terminal, name, value.as_bytes()).await?;
    Ok(())
}

async fn store_acknowledge(config: &std::path::Path) -> anyhow::Result<String> {
    let cfg = Config::load(config)?;
    posbridge::store::refuse_root_on_foreign_store(&cfg.store.path).map_err(anyhow::Error::msg)?;
    let (store, _) = posbridge::store::Store::open(&cfg.store.path).map_err(|e| {
        anyhow::anyhow!("{e} (is the agent running? stop it first: the store is single-process)")
    })?;
    Ok(match store.lift_money_hold().await? {
        Some(h) => format!(
            "money hold lifted: the store found damaged at {} (copy kept at {}) gave {} command ids, {} of them as unknown; payments and refunds are accepted again",
            h.since, h.moved_aside, h.salvaged, h.salvaged_unknown
        ),
        None => "no money hold: nothing to acknowledge".to_string(),
    })
}

fn sign(
    key: &std::path::Path,
    kid: &str,
    command: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use std::io::Read;
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(key)
            .map_err(|e| anyhow::anyhow!("--key {}: {e}", key.display()))?,
    );
    let sk = posbridge::api::envelope::signing_key_from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("--key: {e}"))?;
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
    Ok(posbridge::api::envelope::seal(&bytes, kid, &sk).to_string())
}

/// Write a mock's TLS certificate where the agent's `ca_file` can find it.
fn write_cert(pem: Option<&str>, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    match (pem, out) {
        (Some(pem), Some(path)) => std::fs::write(path, pem)
            .map_err(|e| anyhow::anyhow!("--cert-out {}: {e}", path.display())),
        (None, Some(_)) => anyhow::bail!("--cert-out needs --tls"),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("posbridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Run { config } => {
                let cfg = match Config::load(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("posbridge: {e}");
                        return ExitCode::from(2);
                    }
                };
                init_logging(cfg.log.format, &cfg.log.level);
                match posbridge::agent::run(cfg, shutdown_on_signals()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        eprintln!("posbridge: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Cmd::Check { config } => match Config::load(&config) {
                Ok(cfg) => {
                    match serde_json::to_string_pretty(&cfg.masked_json()) {
                        Ok(s) => println!("{s}"),
                        Err(e) => eprintln!("posbridge: {e}"),
                    }
                    eprintln!("posbridge: {} is valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("posbridge: {e}");
                    ExitCode::from(2)
                }
            },
            Cmd::Doctor { config } => {
                init_logging(LogFormat::Text, "error");
                let checks = posbridge::doctor::run(&config).await;
                print!("{}", posbridge::doctor::render(&checks));
                if posbridge::doctor::failed(&checks) {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Cmd::Provision {
                agent_id,
                broker_url,
                username,
                password_file,
                terminals,
                out,
                store_dir,
                topic_prefix,
                user,
                force,
            } => {
                let opts = posbridge::provision::Options {
                    agent_id,
                    broker_url,
                    username,
                    password_file,
                    terminals,
                    out,
                    store_dir,
                    topic_prefix,
                    user,
                    force,
                };
                match posbridge::provision::run(&opts) {
                    Ok(s) => {
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
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("posbridge provision: {e:#}");
                        ExitCode::from(2)
                    }
                }
            }
            #[cfg(feature = "embedded-broker")]
            Cmd::Demo { quiet } => {
                init_logging(LogFormat::Text, "error");
                match posbridge::demo::run(quiet).await {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("posbridge demo: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Cmd::Secret {
                action:
                    SecretCmd::Set {
                        terminal,
                        name,
                        config,
                    },
            } => match secret_set(&config, &terminal, &name).await {
                Ok(()) => {
                    eprintln!("posbridge: secret {terminal}/{name} stored (encrypted)");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("posbridge secret set: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Cmd::Store {
                action: StoreCmd::Acknowledge { config },
            } => match store_acknowledge(&config).await {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("posbridge store acknowledge: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Cmd::Sign { key, kid, command } => match sign(&key, &kid, command.as_deref()) {
                Ok(env) => {
                    println!("{env}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("posbridge sign: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Cmd::Kaspi {
                action: KaspiCmd::Register { terminal, config },
            } => {
                init_logging(LogFormat::Text, "warn");
                let cfg = match Config::load(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("posbridge: {e}");
                        return ExitCode::from(2);
                    }
                };
                match posbridge::drivers::kaspi::register::run(&cfg, &terminal).await {
                    Ok(msg) => {
                        eprintln!("posbridge: {msg}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("posbridge kaspi register: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Cmd::Usb {
                action: UsbCmd::List,
            } => {
                use posbridge::drivers::token::usb;
                let port = usb::default_port(Default::default());
                let devs = tokio::task::spawn_blocking(move || port.list())
                    .await
                    .unwrap_or_else(|e| {
                        Err(usb::UsbError::new(usb::UsbErrorKind::Other, e.to_string()))
                    });
                let failed = matches!(&devs, Err(e) if e.kind != usb::UsbErrorKind::NoSubsystem);
                print!("{}", usb::list::render(devs));
                if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Cmd::Sim { kind } => match kind {
                SimKind::Paywall {
                    listen,
                    mock,
                    slow_ms,
                } => {
                    init_logging(LogFormat::Text, "info");
                    use posbridge::sim::paywall::{Keys, PaywallSim, PaywallSimOptions};
                    let opts = PaywallSimOptions {
                        test: Keys {
                            api_key: mock.test_api_key,
                            client_key: mock.test_secret,
                        },
                        live: Keys {
                            api_key: mock.live_api_key,
                            client_key: mock.live_secret,
                        },
                        slow: std::time::Duration::from_millis(slow_ms),
                        tls: mock.tls,
                    };
                    match PaywallSim::bind(listen, opts).await {
                        Ok(sim) => {
                            if let Err(e) = write_cert(sim.cert_pem(), mock.cert_out.as_deref()) {
                                eprintln!("posbridge sim paywall: {e}");
                                return ExitCode::FAILURE;
                            }
                            println!(
                                "paywall mock: test_url = {}  live_url = {}",
                                sim.base_url("test"),
                                sim.base_url("live")
                            );
                            sim.run(shutdown_on_signals()).await;
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("posbridge sim paywall: cannot listen on {listen}: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                SimKind::Kuveyt { listen, mock } => {
                    init_logging(LogFormat::Text, "info");
                    use posbridge::sim::kuveyt::{KuveytSim, KuveytSimOptions};
                    use posbridge::sim::paywall::Keys;
                    let opts = KuveytSimOptions {
                        test: Keys {
                            api_key: mock.test_api_key,
                            client_key: mock.test_secret,
                        },
                        live: Keys {
                            api_key: mock.live_api_key,
                            client_key: mock.live_secret,
                        },
                        tls: mock.tls,
                    };
                    match KuveytSim::bind(listen, opts).await {
                        Ok(sim) => {
                            if let Err(e) = write_cert(sim.cert_pem(), mock.cert_out.as_deref()) {
                                eprintln!("posbridge sim kuveyt: {e}");
                                return ExitCode::FAILURE;
                            }
                            println!(
                                "kuveyt mock: test_url = {}  live_url = {}",
                                sim.base_url("test"),
                                sim.base_url("live")
                            );
                            sim.run(shutdown_on_signals()).await;
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("posbridge sim kuveyt: cannot listen on {listen}: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                SimKind::Ip {
                    listen,
                    host,
                    port,
                    fail_rate,
                    lose_rate,
                    garble_rate,
                    seed,
                    delay_ms,
                } => {
                    init_logging(LogFormat::Text, "info");
                    let addr = match listen {
                        Some(a) => a,
                        None => match format!("{host}:{port}").parse() {
                            Ok(a) => a,
                            Err(e) => {
                                eprintln!("posbridge sim ip: --host/--port: {e}");
                                return ExitCode::from(2);
                            }
                        },
                    };
                    let opts = posbridge::sim::ip::SimOptions {
                        fail_rate,
                        lose_rate,
                        garble_rate,
                        seed,
                        delay_ms,
                        ..Default::default()
                    };
                    match posbridge::sim::ip::IpSim::bind(addr, opts).await {
                        Ok(sim) => {
                            println!("ip terminal simulator listening on {}", sim.local_addr());
                            sim.run(shutdown_on_signals()).await;
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("posbridge sim ip: cannot listen on {addr}: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                SimKind::Token {
                    listen,
                    seed,
                    fiscal_no,
                    delay_ms,
                    lose_rate,
                    garble_rate,
                } => {
                    init_logging(LogFormat::Text, "info");
                    let opts = posbridge::sim::token::SimOptions {
                        fiscal_no,
                        sale_delay_ms: delay_ms,
                        seed,
                        lose_rate,
                        garble_rate,
                        ..Default::default()
                    };
                    match posbridge::sim::token::TokenSim::bind(listen, opts, None).await {
                        Ok(sim) => {
                            println!("token register simulator listening on {}", sim.local_addr());
                            sim.run(shutdown_on_signals()).await;
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("posbridge sim token: cannot start on {listen}: {e:#}");
                            ExitCode::FAILURE
                        }
                    }
                }
                SimKind::Kaspi {
                    listen,
                    tls,
                    tls_name,
                    ca_out,
                    seed,
                    customer_ms,
                    fail_rate,
                    approve_after_ms,
                    token_lifetime,
                } => {
                    init_logging(LogFormat::Text, "info");
                    let opts = posbridge::sim::kaspi::SimOptions {
                        seed,
                        customer_time: std::time::Duration::from_millis(customer_ms),
                        tls_name: tls.then_some(tls_name),
                        protected: tls,
                        fail_rate,
                        cashier: posbridge::sim::kaspi::Cashier::Allow(
                            std::time::Duration::from_millis(approve_after_ms),
                        ),
                        token_lifetime: token_lifetime.into(),
                        ..Default::default()
                    };
                    match posbridge::sim::kaspi::KaspiSim::bind(listen, opts).await {
                        Ok(sim) => {
                            println!("kaspi simulator listening on {}", sim.url());
                            if let Some(t) = sim.tls() {
                                println!(
                                    "certificate for {}; pin_sha256 = \"{}\"",
                                    t.name, t.cert_sha256
                                );
                                if let Some(path) = &ca_out {
                                    if let Err(e) = std::fs::write(path, &t.ca_pem) {
                                        eprintln!(
                                            "posbridge sim kaspi: --ca-out {}: {e}",
                                            path.display()
                                        );
                                        return ExitCode::FAILURE;
                                    }
                                    println!("CA certificate written to {}", path.display());
                                }
                            }
                            sim.run(shutdown_on_signals()).await;
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("posbridge sim kaspi: cannot listen on {listen}: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
            },
        }
    })
}
