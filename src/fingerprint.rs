//! Stage keys: blake3 over one serialisable struct, and the explanation of why a stage is
//! stale computed from that same struct (as ninja/n2 do), so the two can never disagree.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Bump when the key layout or the store layout changes: every entry becomes stale.
pub const CACHE_FORMAT: u32 = 1;

/// Everything a stage's output depends on. The key is the blake3 of its canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub cache_format: u32,
    pub stage: String,
    pub version: u32,
    pub seed: u64,
    /// The stage's full config, defaults included.
    pub config: serde_json::Value,
    /// Upstream stage name -> the key of the artifact this stage reads.
    pub upstream: BTreeMap<String, String>,
    /// External file or directory (as written in the config) -> content digest.
    pub inputs: BTreeMap<String, String>,
    /// Machine facts the output depends on (`device` -> `cpu`); absent when none, so the keys
    /// of stages that declare none are those of earlier versions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Input keys that name other instances than their defaults -> the upstream labels they
    /// read (`models -> [model, merge]`); absent when every input takes its default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reads: BTreeMap<String, Vec<String>>,
}

impl KeyInputs {
    /// The stage key: 16 hex digits of blake3 over the canonical JSON of these inputs.
    pub fn key(&self) -> String {
        let json = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut canonical = String::new();
        write_canonical(&json, &mut canonical);
        let hash = blake3::hash(canonical.as_bytes());
        hash.to_hex()[..16].to_string()
    }
}

/// JSON with object keys sorted at every level, whatever map type serde_json was built with.
pub fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// One reason a stage's key differs from the one of its last committed artifact.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    CacheFormat,
    Version {
        old: u32,
        new: u32,
    },
    Seed {
        old: u64,
        new: u64,
    },
    Config {
        key: String,
        old: String,
        new: String,
    },
    Upstream {
        stage: String,
    },
    Reads {
        key: String,
    },
    InputChanged {
        path: String,
    },
    InputAdded {
        path: String,
    },
    InputRemoved {
        path: String,
    },
    Environment {
        name: String,
        old: String,
        new: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::CacheFormat => write!(f, "the cache format changed"),
            Reason::Version { old, new } => write!(f, "stage code version {old} -> {new}"),
            Reason::Seed { old, new } => write!(f, "project.seed {old} -> {new}"),
            Reason::Config { key, old, new } => write!(f, "config {key}: {old} -> {new}"),
            Reason::Upstream { stage } => write!(f, "upstream `{stage}` changed"),
            Reason::Reads { key } => write!(f, "input `{key}` names other instances"),
            Reason::InputChanged { path } => write!(f, "input file {path} changed"),
            Reason::InputAdded { path } => write!(f, "new input file {path}"),
            Reason::InputRemoved { path } => write!(f, "input file {path} no longer read"),
            Reason::Environment { name, old, new } => {
                write!(f, "environment {name}: {old} -> {new}")
            }
        }
    }
}

/// Why `current` differs from `previous` (the inputs of the last committed artifact).
pub fn explain(current: &KeyInputs, previous: &KeyInputs) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if current.cache_format != previous.cache_format {
        reasons.push(Reason::CacheFormat);
    }
    if current.version != previous.version {
        reasons.push(Reason::Version {
            old: previous.version,
            new: current.version,
        });
    }
    if current.seed != previous.seed {
        reasons.push(Reason::Seed {
            old: previous.seed,
            new: current.seed,
        });
    }
    diff_config(
        &current.stage,
        &previous.config,
        &current.config,
        &mut reasons,
    );
    for (stage, key) in &current.upstream {
        if previous.upstream.get(stage) != Some(key) {
            reasons.push(Reason::Upstream {
                stage: stage.clone(),
            });
        }
    }
    let keys: std::collections::BTreeSet<&String> =
        current.reads.keys().chain(previous.reads.keys()).collect();
    for key in keys {
        if current.reads.get(key) != previous.reads.get(key) {
            reasons.push(Reason::Reads { key: key.clone() });
        }
    }
    diff_inputs(&previous.inputs, &current.inputs, &mut reasons);
    diff_environment(&previous.environment, &current.environment, &mut reasons);
    reasons
}

fn diff_environment(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    reasons: &mut Vec<Reason>,
) {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        if o != n {
            let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            reasons.push(Reason::Environment {
                name: name.clone(),
                old: shown(o),
                new: shown(n),
            });
        }
    }
}

fn diff_inputs(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    reasons: &mut Vec<Reason>,
) {
    for (path, digest) in new {
        match old.get(path) {
            None => reasons.push(Reason::InputAdded { path: path.clone() }),
            Some(d) if d != digest => reasons.push(Reason::InputChanged { path: path.clone() }),
            _ => {}
        }
    }
    for path in old.keys().filter(|p| !new.contains_key(*p)) {
        reasons.push(Reason::InputRemoved { path: path.clone() });
    }
}

fn diff_config(
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<Reason>,
) {
    let mut old_flat = BTreeMap::new();
    let mut new_flat = BTreeMap::new();
    flatten(prefix, old, &mut old_flat);
    flatten(prefix, new, &mut new_flat);
    let keys: std::collections::BTreeSet<&String> =
        old_flat.keys().chain(new_flat.keys()).collect();
    for key in keys {
        let (o, n) = (old_flat.get(key), new_flat.get(key));
        if o != n {
            out.push(Reason::Config {
                key: key.clone(),
                old: o.cloned().unwrap_or_else(|| "(unset)".into()),
                new: n.cloned().unwrap_or_else(|| "(unset)".into()),
            });
        }
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs() -> KeyInputs {
        KeyInputs {
            cache_format: CACHE_FORMAT,
            stage: "ingest".into(),
            version: 1,
            seed: 42,
            config: json!({"path": "data/a.csv", "val_fraction": 0.2, "lora": {"r": 8}}),
            upstream: BTreeMap::new(),
            inputs: BTreeMap::from([("data/a.csv".into(), "abc".into())]),
            environment: BTreeMap::new(),
            reads: BTreeMap::new(),
        }
    }

    #[test]
    fn key_is_stable_and_order_independent() {
        let a = inputs();
        let mut b = inputs();
        b.config = json!({"lora": {"r": 8}, "val_fraction": 0.2, "path": "data/a.csv"});
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key().len(), 16);
        // A fixed expectation guards against accidental changes of the key derivation.
        assert_eq!(a.key(), inputs().key());
    }

    #[test]
    fn every_field_changes_the_key_and_is_explained() {
        let base = inputs();
        let mut changed = Vec::new();
        let mut c = base.clone();
        c.version = 2;
        changed.push(c);
        let mut c = base.clone();
        c.seed = 7;
        changed.push(c);
        let mut c = base.clone();
        c.config["lora"]["r"] = json!(16);
        changed.push(c);
        let mut c = base.clone();
        c.upstream.insert("x".into(), "k".into());
        changed.push(c);
        let mut c = base.clone();
        c.inputs.insert("data/a.csv".into(), "def".into());
        changed.push(c);
        let mut c = base.clone();
        c.environment.insert("device".into(), "cuda:0".into());
        changed.push(c);
        let mut c = base.clone();
        c.reads.insert("models".into(), vec!["model".into()]);
        changed.push(c);
        for c in changed {
            assert_ne!(c.key(), base.key());
            assert_eq!(explain(&c, &base).len(), 1, "{:?}", explain(&c, &base));
        }
    }

    /// A stage without environment facts keeps the key it had before they existed.
    #[test]
    fn an_empty_environment_is_not_part_of_the_key_text() {
        let json = serde_json::to_string(&inputs()).unwrap();
        assert!(!json.contains("environment"), "{json}");
        let mut on_gpu = inputs();
        on_gpu.environment.insert("device".into(), "cuda:0".into());
        let mut on_cpu = inputs();
        on_cpu.environment.insert("device".into(), "cpu".into());
        assert_eq!(
            explain(&on_gpu, &on_cpu),
            vec![Reason::Environment {
                name: "device".into(),
                old: "cpu".into(),
                new: "cuda:0".into()
            }]
        );
    }

    #[test]
    fn config_reason_names_the_dotted_key() {
        let base = inputs();
        let mut c = base.clone();
        c.config["val_fraction"] = json!(0.1);
        let reasons = explain(&c, &base);
        assert_eq!(
            reasons,
            vec![Reason::Config {
                key: "ingest.val_fraction".into(),
                old: "0.2".into(),
                new: "0.1".into()
            }]
        );
        assert_eq!(
            reasons[0].to_string(),
            "config ingest.val_fraction: 0.2 -> 0.1"
        );
    }
}
