//! Where the round trip's time goes: the stage timestamps the agent notes under
//! `POSBRIDGE_STAGES` (`posbridge::stages`), joined with the cloud client's own send and
//! receive times (the same CLOCK_MONOTONIC), as the median time spent between each stage
//! and the one before it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The stages of one payment, in path order, between the cloud's send and its receipt of
/// the result (`sent` and `got` are the client's). The broker's PUBACK of the result
/// (`result_acked`) comes after the cloud has it: reported beside the path.
fn path() -> Vec<&'static str> {
    let agent = &posbridge::stages::PATH;
    let mut p = vec!["sent"];
    p.extend(agent.iter().filter(|s| **s != "result_acked"));
    p.push("got");
    p
}

/// Steps reported beside the path (after it in [`medians`]' answer).
const BESIDE: usize = 3;

/// For each step `PATH[i-1] → PATH[i]`: the median over the payments that have both, in µs.
/// `client` holds each id's `sent` and `got` times.
pub(crate) fn medians(
    stages_file: &Path, client: &HashMap<String, (u64, u64)>,
) -> Result<Vec<(String, f64)>> {
    let text = std::fs::read_to_string(stages_file)
        .with_context(|| format!("reading {}", stages_file.display()))?;
    let mut at: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)?;
        let (Some(id), Some(stage), Some(ns)) =
            (v["id"].as_str(), v["stage"].as_str(), v["ns"].as_u64())
        else {
            continue;
        };
        at.entry(id.to_string()).or_default().insert(stage.to_string(), ns);
    }
    for (id, (sent, got)) in client {
        let e = at.entry(id.clone()).or_default();
        e.insert("sent".into(), *sent);
        e.insert("got".into(), *got);
    }
    let mut out = Vec::new();
    let path = path();
    let beside = [("received", "durable"), ("durable", "puback"), ("result_sent", "result_acked")];
    let steps = path.windows(2).map(|w| (w[0], w[1])).chain(beside);
    for w in steps {
        let w = [w.0, w.1];
        let mut d: Vec<f64> = client
            .keys()
            .filter_map(|id| {
                let s = at.get(id)?;
                let (a, b) = (s.get(w[0])?, s.get(w[1])?);
                Some(b.saturating_sub(*a) as f64 / 1000.0)
            })
            .collect();
        out.push((format!("{} → {}", w[0], w[1]), crate::pct(&mut d, 0.5)));
    }
    Ok(out)
}

/// Printed under the figures table, and kept in the JSON line.
pub(crate) fn report(steps: &[(String, f64)], j: &mut Value) {
    println!("e2e: where the median payment's time goes (median per step, µs):");
    let path = &steps[..steps.len().saturating_sub(BESIDE)];
    let total: f64 = path.iter().map(|(_, v)| v).filter(|v| v.is_finite()).sum();
    for (name, v) in path {
        println!("  {name:<34} {v:>9.1}  ({:>4.1} %)", 100.0 * v / total.max(1e-9));
    }
    let why = [
        "beside the path: the command's sync",
        "beside the path: the command's PUBACK",
        "beside the path: the broker's PUBACK",
    ];
    for ((name, v), why) in steps[path.len()..].iter().zip(why) {
        println!("  {name:<34} {v:>9.1}  ({why})");
    }
    j["e2e_stages_us"] =
        json!(steps.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>());
}
