//! `posbridge sim …`: run one device simulator in the foreground until SIGTERM/Ctrl-C.

use std::fmt::Display;
use std::future::Future;
#[cfg(feature = "sims")]
use std::net::SocketAddr;
use std::process::ExitCode;
#[cfg(feature = "sims")]
use std::time::Duration;

#[cfg(feature = "sims")]
use anyhow::Context;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "sims")]
use super::args::MockArgs;
use super::args::SimKind;
use super::{init_logging, shutdown_on_signals};
use crate::config::LogFormat;
use crate::sim;

pub(super) async fn run(kind: SimKind) -> ExitCode {
    init_logging(LogFormat::Text, "info");
    match kind {
        #[cfg(feature = "sims")]
        SimKind::Paywall { listen, mock, slow_ms } => {
            let (test, live) = keys(&mock);
            let opts = sim::paywall::PaywallSimOptions {
                test,
                live,
                slow: Duration::from_millis(slow_ms),
                tls: mock.tls,
            };
            let bound = sim::paywall::PaywallSim::bind(listen, opts).await;
            serve_mock("paywall", listen, &mock, bound).await
        }
        #[cfg(feature = "sims")]
        SimKind::Kuveyt { listen, mock } => {
            let (test, live) = keys(&mock);
            let opts = sim::kuveyt::KuveytSimOptions { test, live, tls: mock.tls };
            let bound = sim::kuveyt::KuveytSim::bind(listen, opts).await;
            serve_mock("kuveyt", listen, &mock, bound).await
        }
        SimKind::Ip { listen, host, port, fail_rate, lose_rate, garble_rate, seed, delay_ms } => {
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
            let opts = sim::ip::SimOptions {
                fail_rate,
                lose_rate,
                garble_rate,
                seed,
                delay_ms,
                ..Default::default()
            };
            let bound = sim::ip::IpSim::bind(addr, opts).await;
            let announce = |s: &sim::ip::IpSim| {
                println!("ip terminal simulator listening on {}", s.local_addr());
                Ok(())
            };
            serve("ip", addr, bound, announce, sim::ip::IpSim::run).await
        }
        #[cfg(feature = "sims")]
        SimKind::Token { listen, seed, fiscal_no, delay_ms, lose_rate, garble_rate } => {
            let opts = sim::token::SimOptions {
                fiscal_no,
                sale_delay_ms: delay_ms,
                seed,
                lose_rate,
                garble_rate,
                ..Default::default()
            };
            let bound = sim::token::TokenSim::bind(listen, opts, None).await;
            let announce = |s: &sim::token::TokenSim| {
                println!("token register simulator listening on {}", s.local_addr());
                Ok(())
            };
            serve("token", listen, bound, announce, sim::token::TokenSim::run).await
        }
        #[cfg(feature = "sims")]
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
            let opts = sim::kaspi::SimOptions {
                seed,
                customer_time: Duration::from_millis(customer_ms),
                tls_name: tls.then_some(tls_name),
                protected: tls,
                fail_rate,
                cashier: sim::kaspi::Cashier::Allow(Duration::from_millis(approve_after_ms)),
                token_lifetime: token_lifetime.into(),
                ..Default::default()
            };
            let bound = sim::kaspi::KaspiSim::bind(listen, opts).await;
            let announce = |s: &sim::kaspi::KaspiSim| {
                println!("kaspi simulator listening on {}", s.url());
                if let Some(t) = s.tls() {
                    println!("certificate for {}; pin_sha256 = \"{}\"", t.name, t.cert_sha256);
                    if let Some(path) = &ca_out {
                        std::fs::write(path, &t.ca_pem)
                            .with_context(|| format!("--ca-out {}", path.display()))?;
                        println!("CA certificate written to {}", path.display());
                    }
                }
                Ok(())
            };
            serve("kaspi", listen, bound, announce, sim::kaspi::KaspiSim::run).await
        }
    }
}

/// The test and live keys a cloud mock accepts (its own, not real secrets).
#[cfg(feature = "sims")]
fn keys(mock: &MockArgs) -> (sim::cloud::Keys, sim::cloud::Keys) {
    (
        sim::cloud::Keys {
            api_key: mock.test_api_key.clone(),
            client_key: mock.test_secret.clone(),
        },
        sim::cloud::Keys {
            api_key: mock.live_api_key.clone(),
            client_key: mock.live_secret.clone(),
        },
    )
}

/// Serve a bound cloud mock (Paywall, Kuveyt): write its certificate where `--cert-out`
/// says, print its two base URLs, run until a signal.
#[cfg(feature = "sims")]
async fn serve_mock<P: sim::cloud::Provider>(
    name: &str, listen: SocketAddr, args: &MockArgs, bound: std::io::Result<sim::CloudMock<P>>,
) -> ExitCode {
    let announce = |m: &sim::CloudMock<P>| {
        write_cert(m.cert_pem(), args.cert_out.as_deref())?;
        let (test, live) = (m.base_url("test"), m.base_url("live"));
        println!("{name} mock: test_url = {test}  live_url = {live}");
        Ok(())
    };
    serve(name, listen, bound, announce, sim::CloudMock::run).await
}

/// Run a bound simulator in the foreground: `announce` says where it listens (and writes
/// what it must), then it runs until SIGTERM/Ctrl-C.
async fn serve<S, F: Future<Output = ()>>(
    name: &str, at: impl Display, bound: Result<S, impl Display>,
    announce: impl FnOnce(&S) -> anyhow::Result<()>, run: impl FnOnce(S, CancellationToken) -> F,
) -> ExitCode {
    let s = match bound {
        Ok(s) => s,
        Err(e) => {
            eprintln!("posbridge sim {name}: cannot listen on {at}: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = announce(&s) {
        eprintln!("posbridge sim {name}: {e:#}");
        return ExitCode::FAILURE;
    }
    run(s, shutdown_on_signals()).await;
    ExitCode::SUCCESS
}

/// Write a mock's TLS certificate where the agent's `ca_file` can find it.
#[cfg(feature = "sims")]
fn write_cert(pem: Option<&str>, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    match (pem, out) {
        (Some(pem), Some(path)) => std::fs::write(path, pem)
            .map_err(|e| anyhow::anyhow!("--cert-out {}: {e}", path.display())),
        (None, Some(_)) => anyhow::bail!("--cert-out needs --tls"),
        _ => Ok(()),
    }
}
