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

/// The two syncs on a payment's path: the log commit that began between these stages.
/// The first covers the command and the worker's journal step before the device is
/// called; the second the answer and the result.
const SYNCS: [(&str, &str, &str); 2] = [
    ("device_call", "device_answer", "the journal's sync"),
    ("device_answer", "result_durable", "the result's sync"),
];

/// Where the time goes: the median of each step on the path (then [`BESIDE`] steps beside
/// it), and inside each of the path's two syncs the median log write and `fdatasync`.
pub(crate) struct Breakdown {
    steps: Vec<(String, f64)>,
    syncs: Vec<(String, f64)>,
}

/// For each step `PATH[i-1] → PATH[i]`: the median over the payments that have both, in µs.
/// `client` holds each id's `sent` and `got` times.
pub(crate) fn medians(
    stages_file: &Path, client: &HashMap<String, (u64, u64)>,
) -> Result<Breakdown> {
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
    Ok(Breakdown { steps: out, syncs: sync_parts(&at, client) })
}

/// Inside each of [`SYNCS`]: the median time the log commit that began there took to
/// write and then to `fdatasync`, over the payments that have one.
fn sync_parts(
    at: &HashMap<String, HashMap<String, u64>>, client: &HashMap<String, (u64, u64)>,
) -> Vec<(String, f64)> {
    let [began, written, synced] = posbridge::stages::COMMIT;
    let mut commits: Vec<(u64, u64, u64)> = at
        .iter()
        .filter(|(id, _)| id.starts_with(posbridge::stages::COMMIT_PREFIX))
        .filter_map(|(_, s)| Some((*s.get(began)?, *s.get(written)?, *s.get(synced)?)))
        .collect();
    commits.sort_unstable();
    let mut out = Vec::new();
    for (from, to, what) in SYNCS {
        let (mut write, mut sync) = (Vec::new(), Vec::new());
        for id in client.keys() {
            let Some(s) = at.get(id) else { continue };
            let (Some(&a), Some(&b)) = (s.get(from), s.get(to)) else { continue };
            let first = commits.partition_point(|c| c.0 < a);
            if let Some(&(w0, w1, s1)) = commits.get(first).filter(|c| c.0 < b) {
                write.push(w1.saturating_sub(w0) as f64 / 1000.0);
                sync.push(s1.saturating_sub(w1) as f64 / 1000.0);
            }
        }
        out.push((format!("{what}: log write"), crate::pct(&mut write, 0.5)));
        out.push((format!("{what}: fdatasync"), crate::pct(&mut sync, 0.5)));
    }
    out
}

/// Printed under the figures table, and kept in the JSON line.
pub(crate) fn report(b: &Breakdown, j: &mut Value) {
    let steps = &b.steps;
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
    for (name, v) in &b.syncs {
        println!("  {name:<34} {v:>9.1}  (inside the path's step)");
    }
    let map = |s: &[(String, f64)]| {
        json!(s.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>())
    };
    j["e2e_stages_us"] = map(steps);
    j["e2e_sync_parts_us"] = map(&b.syncs);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(s, ns)| (s.to_string(), *ns)).collect()
    }

    #[test]
    fn each_sync_on_the_path_is_the_commit_that_began_inside_its_step() {
        let [began, written, synced] = posbridge::stages::COMMIT;
        let commit = |n: u64, w0: u64, w1: u64, s1: u64| {
            (
                format!("{}{n}", posbridge::stages::COMMIT_PREFIX),
                stages(&[(began, w0), (written, w1), (synced, s1)]),
            )
        };
        let mut at: HashMap<String, HashMap<String, u64>> = [
            // Another payment's commit before this one's step: not this payment's.
            commit(0, 5_000, 90_000, 190_000),
            // The journal's sync: 80 µs writing, 100 µs in fdatasync.
            commit(1, 110_000, 190_000, 290_000),
            // The result's sync: 40 µs writing, 60 µs in fdatasync.
            commit(2, 400_000, 440_000, 500_000),
        ]
        .into_iter()
        .collect();
        at.insert(
            "p-1".into(),
            stages(&[
                ("device_call", 100_000),
                ("device_answer", 350_000),
                ("result_durable", 510_000),
            ]),
        );
        let client: HashMap<String, (u64, u64)> = [("p-1".to_string(), (0, 600_000))].into();
        let parts = sync_parts(&at, &client);
        let got: Vec<(&str, f64)> = parts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            got,
            [
                ("the journal's sync: log write", 80.0),
                ("the journal's sync: fdatasync", 100.0),
                ("the result's sync: log write", 40.0),
                ("the result's sync: fdatasync", 60.0),
            ]
        );
        // A payment whose step holds no commit (its sync shared with another's) has none.
        at.insert(
            "p-2".into(),
            stages(&[
                ("device_call", 600_000),
                ("device_answer", 700_000),
                ("result_durable", 800_000),
            ]),
        );
        let client: HashMap<String, (u64, u64)> = [("p-2".to_string(), (0, 900_000))].into();
        assert!(sync_parts(&at, &client).iter().all(|(_, v)| v.is_nan()));
    }
}
