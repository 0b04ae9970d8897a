//! The command line (`posbridge …`): [`args`] declares it, [`run`] dispatches to the
//! agent or to one of the tools grouped here — [`doctor`], [`provision`], [`demo`], the
//! simulators ([`sim`]) and the small field tools ([`tools`]). Runtime plumbing (the
//! agent, its store, engine, bus and drivers) lives outside this module.

pub mod args;
mod cloud;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod doctor;
#[cfg(feature = "testkit")]
mod fleet;
pub mod provision;
mod sim;
mod tools;
mod watch;

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

pub use args::Cli;
use args::{Cmd, KaspiCmd, SecretCmd, StoreCmd, UsbCmd};

use crate::config::{Config, LogFormat};

/// Run one subcommand to its end; the exit code is the process's (2: bad configuration).
pub async fn run(cli: Cli) -> ExitCode {
    match cli.cmd {
        Cmd::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cfg.log.format, &cfg.log.level);
            match crate::agent::run(cfg, shutdown_on_signals()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("posbridge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { config } => match load(&config) {
            Ok(cfg) => {
                match serde_json::to_string_pretty(&cfg.masked_json()) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("posbridge: {e}"),
                }
                eprintln!("posbridge: {} is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Doctor { config } => {
            init_logging(LogFormat::Text, "error");
            let checks = doctor::run(&config).await;
            print!("{}", doctor::render(&checks));
            if doctor::failed(&checks) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Cmd::Provision(opts) => match provision::run(&opts) {
            Ok(s) => {
                tools::provision_report(&s);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("posbridge provision: {e:#}");
                ExitCode::from(2)
            }
        },
        #[cfg(feature = "embedded-broker")]
        Cmd::Demo { quiet } => {
            init_logging(LogFormat::Text, "error");
            match demo::run(quiet).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("posbridge demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Secret { action: SecretCmd::Set { terminal, name, config } } => {
            outcome("secret set", tools::secret_set(&config, &terminal, &name).await, Out::Stderr)
        }
        Cmd::Store { action: StoreCmd::Acknowledge { config } } => {
            outcome("store acknowledge", tools::store_acknowledge(&config).await, Out::Stdout)
        }
        Cmd::Sign { key, kid, command } => {
            outcome("sign", tools::sign(&key, &kid, command.as_deref()), Out::Stdout)
        }
        Cmd::Kaspi { action: KaspiCmd::Register { terminal, config } } => {
            init_logging(LogFormat::Text, "warn");
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            outcome(
                "kaspi register",
                crate::drivers::kaspi::register::run(&cfg, &terminal)
                    .await
                    .map(|m| format!("posbridge: {m}")),
                Out::Stderr,
            )
        }
        Cmd::Usb { action: UsbCmd::List } => tools::usb_list().await,
        Cmd::Sim { kind } => sim::run(kind).await,
        Cmd::Cloud(a) => cloud::run(a).await,
        #[cfg(feature = "testkit")]
        Cmd::Fleet(a) => {
            init_logging(LogFormat::Text, "error");
            match fleet::run(a).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("posbridge fleet: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The configuration, or exit code 2 after saying what is wrong with it.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("posbridge: {e}");
        ExitCode::from(2)
    })
}

enum Out {
    Stdout,
    Stderr,
}

/// A tool's message on success (on `out`), or `posbridge <what>: <error>` and failure.
fn outcome(what: &str, r: anyhow::Result<String>, out: Out) -> ExitCode {
    match r {
        Ok(msg) => {
            match out {
                Out::Stdout => println!("{msg}"),
                Out::Stderr => eprintln!("{msg}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("posbridge {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    crate::logging::init(format, level);
}

/// Cancelled on SIGTERM or SIGINT.
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
