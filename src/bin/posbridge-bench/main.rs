//! `posbridge-bench`: the agent measured against its physical limits, on loopback only.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release --bin posbridge-bench -- e2e|intake|drain|footprint|codec|all [--n N] [--runs R] [--quick]
//! cargo run --release --bin posbridge-bench -- soak [--minutes 30] [--rate 50] [--retention 2m] --runs 1
//! ```
//!
//! Starts a broker (mosquitto when installed, configured like the tests: `set_tcp_nodelay
//! true`, a deep queue; otherwise the embedded rumqttd), the simulators and the agent
//! binary (`posbridge run`, a child process next to this binary), and measures each figure
//! together with its limit in the same run. Prints a table and one JSON line
//! (`BENCH_JSON {...}`). Each figure is measured `--runs` times (default 3) and reported as
//! the median with the spread of its ratio, since one run on a shared machine says little;
//! e2e also prints where the median payment's time goes, stage by stage, and inside each of
//! its syncs the log write and the `fdatasync` (`breakdown`). The
//! full run takes minutes and depends on the machine; CI runs only `all --quick` (one run),
//! to prove every figure still runs.
//!
//! This file holds the arguments, `Figure` and the output (the table and the JSON line);
//! each figure family is a module (`e2e`, `intake`, `drain`, `footprint`, `codec`), the
//! physical floors they are measured against are in `floors`, and `kit` is the test kit
//! (`posbridge::testkit`) as the bench uses it.

use std::time::Duration;

use anyhow::{bail, Result};
use posbridge::testkit::Broker;
use serde_json::{json, Value};

mod breakdown;
mod codec;
mod cores;
mod drain;
mod e2e;
mod floors;
mod footprint;
mod intake;
mod kit;
mod soak;
mod wear;

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

/// One figure over all runs: the run with the median ratio, and the spread.
struct Summary {
    name: String,
    value: f64,
    unit: &'static str,
    limit: f64,
    ratio: f64,
    min_ratio: f64,
    max_ratio: f64,
    goal: String,
    met: bool,
}

fn summarize(reports: &[Report]) -> Vec<Summary> {
    let mut names: Vec<&str> = Vec::new();
    for r in reports {
        for f in &r.figs {
            if !names.contains(&f.name.as_str()) {
                names.push(&f.name);
            }
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let mut runs: Vec<&Figure> =
                reports.iter().flat_map(|r| r.figs.iter().filter(|f| f.name == name)).collect();
            runs.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
            let mid = runs.get((runs.len().saturating_sub(1)) / 2)?;
            Some(Summary {
                name: name.to_string(),
                value: mid.value,
                unit: mid.unit,
                limit: mid.limit,
                ratio: mid.ratio,
                min_ratio: runs.first().map_or(f64::NAN, |f| f.ratio),
                max_ratio: runs.last().map_or(f64::NAN, |f| f.ratio),
                goal: mid.goal.clone(),
                met: mid.met,
            })
        })
        .collect()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ------------------------------------------------------------------ main

/// Which figures to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum What {
    E2e,
    Intake,
    Drain,
    Footprint,
    Codec,
    /// Memory over a long run (`--minutes`, `--rate`); not part of `all`.
    Soak,
    All,
}

/// The agent measured against its physical limits, on loopback only (see docs/performance.md).
#[derive(Debug, clap::Parser)]
#[command(name = "posbridge-bench", version)]
struct Args {
    /// The figures to measure.
    #[arg(value_enum, default_value = "all")]
    what: What,
    /// Operations per figure (payments, commands, results, codec rounds); default per figure.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    n: Option<u64>,
    /// How many times each figure is measured; the table shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// One short run (CI: proves every figure still runs; the numbers mean nothing).
    #[arg(long)]
    quick: bool,
    /// soak: how long, in minutes.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
    minutes: u64,
    /// soak: payments per second; under 1 for a shop's pace (0.1: one every 10 s).
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    rate: f64,
    /// soak: the agent's `store.retention` (e.g. "2m": the store is pruned as fast as it
    /// fills, as a shop's store is in its steady state); the agent's default when absent.
    #[arg(long)]
    retention: Option<String>,
}

/// `--rate`: a positive number of payments per second, at most 2 000.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 2000.0 => Ok(r),
        _ => Err(format!(
            "`{s}`: payments per second, more than 0 and at most 2000 (0.1: one every 10 s)"
        )),
    }
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let (mut n_e2e, mut n_intake, mut n_drain, mut n_codec) = (300, 10_000, 10_000, 20_000);
    // Finished payments in the store for the "idle RSS on a full store" figure: about a
    // busy shop's 30 days (store.retention's default).
    let mut n_store = 20_000;
    let mut runs = args.runs as usize;
    if args.quick {
        (n_e2e, n_intake, n_drain, n_codec, n_store) = (20, 200, 200, 200, 200);
        runs = 1;
    }
    if let Some(n) = args.n {
        let n = n as usize;
        (n_e2e, n_intake, n_drain, n_codec) = (n, n, n, n);
    }
    let what = args.what;
    let mut failed = 0;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
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
        let mut reports: Vec<Report> = Vec::new();
        for run in 1..=runs {
            if runs > 1 {
                println!("posbridge-bench: run {run} of {runs}");
            }
            let mut out = Report {
                figs: Vec::new(),
                json: json!({"broker": broker.name(), "version": posbridge::VERSION}),
            };
            let all = what == What::All;
            let mut report = |name: &str, r: Result<()>| {
                if let Err(e) = r {
                    eprintln!("{name} failed: {e:#}");
                    failed += 1;
                }
            };
            if all || what == What::Footprint {
                report(
                    "footprint",
                    footprint::bench_footprint(&broker, &mut out).await,
                );
                let watch = Duration::from_secs(if args.quick { 3 } else { 60 });
                report("idle footprint", footprint::bench_idle_rss(&broker, watch, &mut out).await);
                report("store footprint", footprint::bench_store_rss(&broker, n_store, &mut out).await);
            }
            if all || what == What::Codec {
                report("codec", codec::bench_codec(n_codec, &mut out));
            }
            if all || what == What::E2e {
                report("e2e", e2e::bench_e2e(&broker, n_e2e, &mut out).await);
            }
            if all || what == What::Intake {
                report(
                    "intake",
                    intake::bench_intake(&broker, n_intake, &mut out).await,
                );
            }
            if what == What::Soak {
                report("soak", soak::bench_soak(&broker, args.minutes, args.rate, args.retention.as_deref(), &mut out).await);
            }
            if all || what == What::Drain {
                report(
                    "drain",
                    drain::bench_drain(&mut broker, n_drain, &mut out).await,
                );
            }
            reports.push(out);
        }
        let summary = summarize(&reports);
        println!();
        println!(
            "| {:<30} | {:>14} | {:>12} | {:>7} | {:<15} | {:<28} | {:<4} |",
            "figure", "median value", "limit", "ratio", "ratio min–max", "goal", "met"
        );
        println!("|{}|", "-".repeat(132));
        for f in &summary {
            println!(
                "| {:<30} | {:>8.1} {:<5}| {:>12.1} | {:>7.3} | {:>6.3}–{:<8.3} | {:<28} | {:<4} |",
                f.name,
                f.value,
                f.unit,
                f.limit,
                f.ratio,
                f.min_ratio,
                f.max_ratio,
                f.goal,
                if f.met { "yes" } else { "NO" }
            );
        }
        let out = json!({
            "runs": reports.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
            "median": summary
                .iter()
                .map(|f| (f.name.clone(), json!({"value": f.value, "limit": f.limit, "ratio": f.ratio, "ratio_min": f.min_ratio, "ratio_max": f.max_ratio, "met": f.met})))
                .collect::<serde_json::Map<_, _>>(),
        });
        let out = Report { figs: Vec::new(), json: out };
        println!("BENCH_JSON {}", out.json);
        if failed > 0 {
            bail!("{failed} figure(s) could not be measured (see above)");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn a_rate_is_a_positive_number_of_payments_per_second() {
        assert_eq!(parse_rate("0.05"), Ok(0.05));
        assert_eq!(parse_rate("50"), Ok(50.0));
        for bad in ["0", "-1", "fast", "NaN", "inf", "2001"] {
            let e = parse_rate(bad).expect_err(bad);
            assert!(e.contains(bad) && e.contains("payments per second"), "{e}");
        }
    }
}
