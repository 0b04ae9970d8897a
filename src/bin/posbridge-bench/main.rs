//! `posbridge-bench`: the agent measured against its physical limits, on loopback only.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release --bin posbridge-bench -- e2e|intake|drain|footprint|codec|all [--n N] [--quick]
//! ```
//!
//! Starts a broker (mosquitto when installed, configured like the tests: `set_tcp_nodelay
//! true`, a deep queue; otherwise the embedded rumqttd), the simulators and the agent
//! binary (`posbridge run`, a child process next to this binary), and measures each figure
//! together with its limit in the same run. Prints a table and one JSON line
//! (`BENCH_JSON {...}`). The full run takes minutes and depends on the machine; CI runs
//! only `all --quick`, to prove every figure still runs.
//!
//! This file holds the arguments, `Figure` and the output (the table and the JSON line);
//! each figure family is a module (`e2e`, `intake`, `drain`, `footprint`, `codec`), the
//! physical floors they are measured against are in `floors`, and `kit` is the test kit
//! (`posbridge::testkit`) as the bench uses it.

use std::time::Duration;

use anyhow::{bail, Result};
use posbridge::testkit::Broker;
use serde_json::{json, Value};

mod codec;
mod drain;
mod e2e;
mod floors;
mod footprint;
mod intake;
mod kit;

// ------------------------------------------------------------------ figures

struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    limit: f64,
    /// value / limit
    ratio: f64,
    goal: String,
    met: bool,
}

/// What the benches measured: the figures for the table and the JSON line.
struct Report {
    figs: Vec<Figure>,
    json: Value,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ------------------------------------------------------------------ main

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args
        .first()
        .map(String::as_str)
        .unwrap_or("all")
        .to_string();
    const USAGE: &str =
        "usage: posbridge-bench e2e|intake|drain|footprint|codec|all [--n N] [--quick]";
    let mut n_e2e = 300;
    let mut n_intake = 10_000;
    let mut n_drain = 10_000;
    let mut n_codec = 20_000;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--quick" {
            // CI: proves every figure still runs; the numbers mean nothing.
            (n_e2e, n_intake, n_drain, n_codec) = (20, 200, 200, 200);
            continue;
        }
        let v: Option<usize> = it.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--n", Some(v)) => {
                n_e2e = v;
                n_intake = v;
                n_drain = v;
                n_codec = v;
            }
            _ => bail!(USAGE),
        }
    }
    if !["e2e", "intake", "drain", "footprint", "codec", "all"].contains(&what.as_str()) {
        bail!(USAGE);
    }
    let mut failed = 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut broker = Broker::start();
        println!(
            "posbridge-bench: broker {} on 127.0.0.1:{}, {} CPUs",
            broker.name(),
            broker.port(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        let mut out = Report {
            figs: Vec::new(),
            json: json!({"broker": broker.name(), "version": posbridge::VERSION}),
        };
        let all = what == "all";
        let mut report = |name: &str, r: Result<()>| {
            if let Err(e) = r {
                eprintln!("{name} failed: {e:#}");
                failed += 1;
            }
        };
        if all || what == "footprint" {
            report(
                "footprint",
                footprint::bench_footprint(&broker, &mut out).await,
            );
        }
        if all || what == "codec" {
            report("codec", codec::bench_codec(n_codec, &mut out));
        }
        if all || what == "e2e" {
            report("e2e", e2e::bench_e2e(&broker, n_e2e, &mut out).await);
        }
        if all || what == "intake" {
            report(
                "intake",
                intake::bench_intake(&broker, n_intake, &mut out).await,
            );
        }
        if all || what == "drain" {
            report(
                "drain",
                drain::bench_drain(&mut broker, n_drain, &mut out).await,
            );
        }
        println!();
        println!(
            "| {:<30} | {:>12} | {:>12} | {:>7} | {:<28} | {:<4} |",
            "figure", "value", "limit", "ratio", "goal", "met"
        );
        println!("|{}|", "-".repeat(112));
        for f in &out.figs {
            println!(
                "| {:<30} | {:>8.1} {:<5}| {:>12.1} | {:>7.3} | {:<28} | {:<4} |",
                f.name,
                f.value,
                f.unit,
                f.limit,
                f.ratio,
                f.goal,
                if f.met { "yes" } else { "NO" }
            );
        }
        println!("BENCH_JSON {}", out.json);
        if failed > 0 {
            bail!("{failed} figure(s) could not be measured (see above)");
        }
        Ok(())
    })
}
