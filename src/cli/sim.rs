//! `posbridge sim …`: run one device simulator in the foreground until SIGTERM/Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use super::args::{MockArgs, SimKind};
use super::{init_logging, shutdown_on_signals};
use crate::config::LogFormat;
use crate::sim;

pub(super) async fn run(kind: SimKind) -> ExitCode {
    init_logging(LogFormat::Text, "info");
    match kind {
        SimKind::Paywall {
            listen,
            mock,
            slow_ms,
        } => {
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
        SimKind::Kuveyt { listen, mock } => {
            let (test, live) = keys(&mock);
            let opts = sim::kuveyt::KuveytSimOptions {
                test,
                live,
                tls: mock.tls,
            };
            let bound = sim::kuveyt::KuveytSim::bind(listen, opts).await;
            serve_mock("kuveyt", listen, &mock, bound).await
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
            match sim::ip::IpSim::bind(addr, opts).await {
                Ok(s) => {
                    println!("ip terminal simulator listening on {}", s.local_addr());
                    s.run(shutdown_on_signals()).await;
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
            let opts = sim::token::SimOptions {
                fiscal_no,
                sale_delay_ms: delay_ms,
                seed,
                lose_rate,
                garble_rate,
                ..Default::default()
            };
            match sim::token::TokenSim::bind(listen, opts, None).await {
                Ok(s) => {
                    println!("token register simulator listening on {}", s.local_addr());
                    s.run(shutdown_on_signals()).await;
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
            let s = match sim::kaspi::KaspiSim::bind(listen, opts).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("posbridge sim kaspi: cannot listen on {listen}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("kaspi simulator listening on {}", s.url());
            if let Some(t) = s.tls() {
                println!(
                    "certificate for {}; pin_sha256 = \"{}\"",
                    t.name, t.cert_sha256
                );
                if let Some(path) = &ca_out {
                    if let Err(e) = std::fs::write(path, &t.ca_pem) {
                        eprintln!("posbridge sim kaspi: --ca-out {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    println!("CA certificate written to {}", path.display());
                }
            }
            s.run(shutdown_on_signals()).await;
            ExitCode::SUCCESS
        }
    }
}

/// The test and live keys a cloud mock accepts (its own, not real secrets).
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
async fn serve_mock<P: sim::cloud::Provider>(
    name: &str,
    listen: SocketAddr,
    args: &MockArgs,
    bound: std::io::Result<sim::CloudMock<P>>,
) -> ExitCode {
    let m = match bound {
        Ok(m) => m,
        Err(e) => {
            eprintln!("posbridge sim {name}: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = write_cert(m.cert_pem(), args.cert_out.as_deref()) {
        eprintln!("posbridge sim {name}: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "{name} mock: test_url = {}  live_url = {}",
        m.base_url("test"),
        m.base_url("live")
    );
    m.run(shutdown_on_signals()).await;
    ExitCode::SUCCESS
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
