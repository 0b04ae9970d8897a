//! The configuration reference (`docs/configuration.md`) and the example config
//! (`deploy/posbridge.toml.example`) stay in step with the config types: every key the
//! types accept is documented, every documented key exists, and every key the example
//! shows (set or commented out) is one the agent accepts.

use std::collections::{BTreeMap, BTreeSet};

use super::Config;

/// Keys the types accept: `section.key` (and top-level `key`), and per terminal kind.
fn type_keys() -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let c = Config::from_toml_str(super::test_fixtures::FULL).expect("full example");
    let v = serde_json::to_value(&c).expect("serialise");
    let mut top = BTreeSet::new();
    let mut kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, val) in v.as_object().expect("object") {
        match (k.as_str(), val) {
            ("terminals", serde_json::Value::Array(ts)) => {
                for t in ts {
                    let kind = t["kind"].as_str().expect("kind").to_string();
                    let keys = kinds.entry(kind).or_default();
                    for key in t.as_object().expect("terminal").keys() {
                        if key != "id" && key != "kind" {
                            keys.insert(key.clone());
                        }
                    }
                }
            }
            (_, serde_json::Value::Object(section)) => {
                for key in section.keys() {
                    top.insert(format!("{k}.{key}"));
                }
            }
            _ => {
                top.insert(k.clone());
            }
        }
    }
    (top, kinds)
}

fn read(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The backticked names that start each `;`-separated item of a cell (`a` / `b` → both).
fn leading_names(cell: &str) -> Vec<String> {
    let mut out = Vec::new();
    for item in cell.split("; ") {
        let mut rest = item.trim();
        while let Some(s) = rest.strip_prefix('`') {
            let Some(end) = s.find('`') else { break };
            // `usb = { vid, … }`: the key is the first word.
            let name = s[..end].split([' ', '=']).next().unwrap_or("");
            out.push(name.to_string());
            rest = s[end + 1..].trim_start();
            match rest.strip_prefix('/') {
                Some(r) => rest = r.trim_start(),
                None => break,
            }
        }
    }
    out
}

/// The two tables of docs/configuration.md: `| key | default | meaning |` rows and the
/// `| kind | keys (default) |` rows.
fn doc_keys() -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let text = read("docs/configuration.md");
    let mut top = BTreeSet::new();
    let mut kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut table = "";
    for line in text.lines() {
        if line.starts_with("| key | default | meaning |") {
            table = "top";
            continue;
        }
        if line.starts_with("| kind | keys (default) |") {
            table = "kinds";
            continue;
        }
        if !line.starts_with('|') {
            table = "";
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let first = cells[0].trim_start_matches('|').trim();
        if first.starts_with("---") || !first.starts_with('`') {
            continue;
        }
        match table {
            "top" => top.extend(leading_names(first)),
            "kinds" => {
                let kind = first.trim_matches('`').to_string();
                let keys = cells.get(1).map(|c| leading_names(c)).unwrap_or_default();
                kinds.entry(kind).or_default().extend(keys);
            }
            _ => {}
        }
    }
    (top, kinds)
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_agent_accepts() {
    let (top, kinds) = type_keys();
    let (doc_top, doc_kinds) = doc_keys();
    assert_eq!(doc_top, top, "docs/configuration.md's key table and the config types differ");
    assert_eq!(
        doc_kinds.keys().collect::<Vec<_>>(),
        kinds.keys().collect::<Vec<_>>(),
        "terminal kinds"
    );
    for (kind, keys) in &kinds {
        assert_eq!(
            &doc_kinds[kind], keys,
            "docs/configuration.md's `{kind}` row and the {kind} terminal type differ"
        );
    }
}

#[test]
fn the_example_config_parses_and_shows_only_keys_the_agent_accepts() {
    let text = read("deploy/posbridge.toml.example");
    Config::from_toml_str(&text).expect("the example config is valid");
    let (top, kinds) = type_keys();
    let any_terminal: BTreeSet<String> =
        kinds.values().flatten().cloned().chain(["id".to_string(), "kind".to_string()]).collect();
    let mut section = String::new();
    let mut unknown = Vec::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(s) = l.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
            section = s.to_string();
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        // `key = value`, set or commented out.
        let Some((key, _)) = l.split_once(" = ") else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') || key.is_empty() {
            continue;
        }
        let known = match section.as_str() {
            "terminals" => any_terminal.contains(key),
            "" => top.contains(key),
            s => top.contains(&format!("{s}.{key}")),
        };
        if !known {
            unknown.push(format!("[{section}] {key}"));
        }
    }
    assert!(
        unknown.is_empty(),
        "deploy/posbridge.toml.example shows keys the agent does not accept: {unknown:?}"
    );
}
