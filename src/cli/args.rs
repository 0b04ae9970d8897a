//! The command line: every subcommand and its flags (clap). What each one does is in
//! [`super::run`] and the modules beside this one.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH;

#[derive(Parser)]
#[command(
    name = "posbridge",
    version,
    about = "Edge agent between a cloud POS (MQTT) and shop payment terminals"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    Provision(super::provision::Options),
    /// Embedded broker + a simulator per terminal kind + agent + a scripted, signing cloud POS, on loopback.
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
    /// The cloud side: send one command to an agent over MQTT and watch it (`evt`, then
    /// the result; the exit code says the outcome).
    Cloud(super::cloud::CloudArgs),
    /// Many agents in this process against one broker, under a cloud load generator:
    /// reports lost results, double executions, latency percentiles and memory per agent.
    #[cfg(feature = "testkit")]
    Fleet(super::fleet::FleetArgs),
    /// Run one device simulator in the foreground.
    Sim {
        #[command(subcommand)]
        kind: SimKind,
    },
}

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Store a secret for a terminal; the value is read from stdin (never echoed, never
    /// logged). Through the running agent (its control socket) when it runs.
    Set {
        terminal: String,
        name: String,
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// After the store was found damaged at start, money commands are refused until an
    /// operator has reconciled the salvaged commands (docs/mqtt-api.md: "A store that cannot be
    /// opened"). This lifts that hold: through the running agent (its control socket), so
    /// payments resume at once; opening the store itself only when no agent runs.
    Acknowledge {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum UsbCmd {
    /// List USB devices: VID:PID, serial, whether it looks like a Token register, and
    /// whether this user may open it. Opens nothing. Exit 0 (also when this system has
    /// no USB subsystem; the message says so), 1 when listing failed otherwise.
    List,
}

#[derive(Subcommand)]
pub enum KaspiCmd {
    /// Register with the terminal's protected API: the cashier presses "Allow" on the
    /// terminal; the tokens are stored encrypted. Through the running agent when it runs.
    Register {
        terminal: String,
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum SimKind {
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
    #[cfg(feature = "sims")]
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
    /// Kaspi Smart POS (kaspi.md, LAN API v2). Amount conventions: docs/terminals/kaspi.md.
    #[cfg(feature = "sims")]
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
    /// the amount's last two minor digits (docs/terminals/paywall.md).
    #[cfg(feature = "sims")]
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
    /// amount's last two minor digits (docs/terminals/kuveyt.md).
    #[cfg(feature = "sims")]
    Kuveyt {
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: SocketAddr,
        #[command(flatten)]
        mock: MockArgs,
    },
}

/// Options shared by the cloud mocks. The keys are the mock's own, not real secrets.
#[cfg(feature = "sims")]
#[derive(clap::Args)]
pub struct MockArgs {
    /// Serve HTTPS with a self-signed certificate made at start.
    #[arg(long)]
    pub tls: bool,
    /// Where to write that certificate (PEM), for the agent's `ca_file`.
    #[arg(long)]
    pub cert_out: Option<PathBuf>,
    #[arg(long, default_value = "test-api-key")]
    pub test_api_key: String,
    /// Paywall `apiclientprivate` / Kuveyt `X-Api-Secret` of the test environment.
    #[arg(long, default_value = "test-secret")]
    pub test_secret: String,
    #[arg(long, default_value = "live-api-key")]
    pub live_api_key: String,
    #[arg(long, default_value = "live-secret")]
    pub live_secret: String,
}
