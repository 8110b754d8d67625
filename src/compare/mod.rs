//! `pipe compare [STAGE]`, like `dvc exp show`: every cached artifact of a stage as a row with
//! its key, when it was made, the params that differ between the rows (the flattened config of
//! the artifact and of everything it was made from, read from the manifests) and the metrics
//! its stage recorded in the manifest. The rows of the latest sweep come first.

mod html;
mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::CompareArgs;
use crate::config::hint_for;
use crate::error::{PipeError, Result};
use crate::runner::Workspace;
use crate::store::{format_time, Entry, Manifest, Store};
use crate::sweep::{latest_record, SweepRecord};

pub use table::{to_csv, to_text};

/// The comparison of one stage's artifacts: what `--json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub stage: String,
    /// The latest sweep's id, when some rows belong to it.
    pub sweep: Option<String>,
    /// The flattened params (`orpo.beta`) whose values differ between the rows, in column order.
    pub params: Vec<String>,
    /// Every metric some row has, in column order.
    pub metrics: Vec<String>,
    pub rows: Vec<Row>,
}

/// One artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub key: String,
    /// Unix milliseconds of its commit.
    pub created_at_ms: u64,
    /// Whether the latest sweep built or read it.
    pub in_sweep: bool,
    /// The values of the differing params; a param is absent where it is unknown (an
    /// upstream artifact that was deleted) or unset.
    pub params: BTreeMap<String, Value>,
    /// The metrics its stage recorded.
    pub metrics: BTreeMap<String, Value>,
}

impl Row {
    /// A metric as a number, for sorting.
    pub fn number(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).and_then(Value::as_f64)
    }

    /// `2026-12-02 23:10`.
    pub fn created(&self) -> String {
        format_time(self.created_at_ms)
            .chars()
            .take(16)
            .collect::<String>()
    }
}

/// Prints the comparison as the arguments ask.
pub fn print(ws: &Workspace, args: &CompareArgs) -> Result<()> {
    let stage = resolve(ws, &args.stage)?;
    let comparison = compare(ws, &stage, args.sort.as_deref(), args.asc)?;
    if let Some(path) = &args.html {
        let page = html::page(ws, &comparison);
        std::fs::write(path, page).map_err(|e| PipeError::io(path, e))?;
        if !args.json && !args.csv {
            println!("wrote {}", path.display());
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&comparison).map_err(|e| PipeError::Store {
            path: ws.store.root().join(&stage),
            message: format!("cannot encode the comparison: {e}"),
        })?;
        println!("{text}");
    } else if args.csv {
        print!("{}", to_csv(&comparison));
    } else {
        print!("{}", to_text(&comparison));
    }
    Ok(())
}

/// A stage of the pipeline, or any instance with artifacts in the store.
fn resolve(ws: &Workspace, stage: &str) -> Result<String> {
    if ws.dag.contains(stage) || !ws.store.entries(stage).is_empty() {
        return Ok(stage.to_string());
    }
    ws.dag.resolve(stage, "compare").map(str::to_string)
}

/// Builds the comparison of `stage`'s artifacts, sorted by `sort` (highest first unless `asc`)
/// within the latest sweep's rows and within the others.
pub fn compare(ws: &Workspace, stage: &str, sort: Option<&str>, asc: bool) -> Result<Comparison> {
    let entries = ws.store.entries(stage);
    if entries.is_empty() {
        return Err(PipeError::Usage(format!(
            "`{stage}` has no artifacts yet; `pipe run --to {stage}` (or a sweep) makes some"
        )));
    }
    let sweep = latest_record(&ws.store);
    let sweep_keys = sweep.as_ref().map(|s| s.keys_of(stage)).unwrap_or_default();
    let mut lineage = Lineage::new(&ws.store);
    let all_params: Vec<BTreeMap<String, Value>> = entries
        .iter()
        .map(|e| lineage.params(&e.manifest))
        .collect();
    let params = differing(&all_params, ws.dag.order());
    let mut rows: Vec<Row> = entries
        .iter()
        .zip(&all_params)
        .map(|(entry, all)| row(entry, all, &params, &sweep_keys))
        .collect();
    let metrics = metric_names(&entries);
    order_rows(&mut rows, &sweep_keys);
    if let Some(metric) = sort {
        sort_rows(&mut rows, metric, &metrics, asc)?;
    }
    Ok(Comparison {
        stage: stage.to_string(),
        sweep: sweep
            .filter(|_| rows.iter().any(|r| r.in_sweep))
            .map(|s: SweepRecord| s.id),
        params,
        metrics,
        rows,
    })
}

fn row(
    entry: &Entry,
    all: &BTreeMap<String, Value>,
    params: &[String],
    sweep_keys: &[String],
) -> Row {
    Row {
        key: entry.manifest.key.clone(),
        created_at_ms: entry.manifest.finished_at_ms,
        in_sweep: sweep_keys.contains(&entry.manifest.key),
        params: params
            .iter()
            .filter_map(|p| all.get(p).map(|v| (p.clone(), v.clone())))
            .collect(),
        metrics: entry
            .manifest
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Every metric name, in the order the manifests list them (first seen first).
fn metric_names(entries: &[Entry]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        for k in e.manifest.metrics.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    names
}

/// The latest sweep's rows first, in its variants' order; then the others, newest first (the
/// store lists entries newest first already).
fn order_rows(rows: &mut [Row], sweep_keys: &[String]) {
    let rank = |r: &Row| {
        sweep_keys
            .iter()
            .position(|k| *k == r.key)
            .unwrap_or(usize::MAX)
    };
    rows.sort_by_key(|r| (rank(r), std::cmp::Reverse(r.created_at_ms)));
}

/// Sorts by a metric within the sweep's rows and within the others; rows without it go last.
fn sort_rows(rows: &mut [Row], metric: &str, metrics: &[String], asc: bool) -> Result<()> {
    if !metrics.iter().any(|m| m == metric) {
        let valid: Vec<&str> = metrics.iter().map(String::as_str).collect();
        return Err(PipeError::Usage(format!(
            "--sort {metric}: no artifact has this metric; {}",
            hint_for(metric, &valid, "metrics")
        )));
    }
    rows.sort_by(|a, b| {
        let group = b.in_sweep.cmp(&a.in_sweep);
        let (x, y) = (a.number(metric), b.number(metric));
        let by_value = match (x, y) {
            (Some(x), Some(y)) if asc => x.total_cmp(&y),
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        group.then(by_value)
    });
    Ok(())
}

/// The params whose values are not the same in every row, ordered by their stage's place in
/// the pipeline (`project` first), then by name.
fn differing(all: &[BTreeMap<String, Value>], order: &[&str]) -> Vec<String> {
    let names: BTreeSet<&String> = all.iter().flat_map(|p| p.keys()).collect();
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|name| {
            let first = all[0].get(*name);
            all.iter().any(|p| p.get(*name) != first)
        })
        .cloned()
        .collect();
    let place = |name: &str| {
        let stage = name.split('.').next().unwrap_or("");
        match stage {
            "project" => 0,
            s => order
                .iter()
                .position(|o| *o == s)
                .map_or(usize::MAX, |i| i + 1),
        }
    };
    out.sort_by(|a, b| place(a).cmp(&place(b)).then(a.cmp(b)));
    out
}

/// Params of artifacts and of what they were made from, read once per manifest.
struct Lineage<'s> {
    store: &'s Store,
    manifests: HashMap<(String, String), Option<Manifest>>,
}

impl<'s> Lineage<'s> {
    fn new(store: &'s Store) -> Self {
        Self {
            store,
            manifests: HashMap::new(),
        }
    }

    /// Every param of `manifest` and its upstream artifacts, flattened: `<stage>.<key path>`
    /// for config, `<stage>.(version)` for the stage's code version, `<stage>.(input <path>)`
    /// for external files (their digest), `project.seed`; an upstream artifact that is gone
    /// shows as `<stage>.(key)`.
    fn params(&mut self, manifest: &Manifest) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        out.insert(
            "project.seed".to_string(),
            Value::from(manifest.inputs.seed),
        );
        let mut seen = BTreeSet::new();
        self.collect(manifest, &mut out, &mut seen);
        out
    }

    fn collect(
        &mut self,
        manifest: &Manifest,
        out: &mut BTreeMap<String, Value>,
        seen: &mut BTreeSet<String>,
    ) {
        let inputs = &manifest.inputs;
        let stage = &inputs.stage;
        if !seen.insert(stage.clone()) {
            return;
        }
        flatten(stage, &inputs.config, out);
        out.insert(format!("{stage}.(version)"), Value::from(inputs.version));
        for (path, digest) in &inputs.inputs {
            let short: String = digest.chars().take(12).collect();
            out.insert(format!("{stage}.(input {path})"), Value::from(short));
        }
        for (up, key) in &inputs.upstream {
            match self.manifest(up, key) {
                Some(m) => self.collect(&m, out, seen),
                None => {
                    out.insert(format!("{up}.(key)"), Value::from(key.clone()));
                }
            }
        }
    }

    fn manifest(&mut self, stage: &str, key: &str) -> Option<Manifest> {
        let store = self.store;
        self.manifests
            .entry((stage.to_string(), key.to_string()))
            .or_insert_with(|| store.lookup(stage, key).map(|e| e.manifest))
            .clone()
    }
}

/// `lora.r = 8` under `sft` becomes `sft.lora.r = 8`; arrays stay whole.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn only_differing_params_are_kept_in_pipeline_order() {
        let all = vec![
            params(&[
                ("orpo.beta", json!(0.1)),
                ("sft.lr", json!(1)),
                ("project.seed", json!(1)),
            ]),
            params(&[
                ("orpo.beta", json!(0.2)),
                ("sft.lr", json!(1)),
                ("project.seed", json!(2)),
                ("orpo.extra", json!(true)),
            ]),
        ];
        let order = ["ingest", "sft", "orpo"];
        assert_eq!(
            differing(&all, &order),
            vec!["project.seed", "orpo.beta", "orpo.extra"]
        );
        assert!(differing(&all[..1], &order).is_empty());
    }

    #[test]
    fn flatten_names_nested_keys_and_keeps_arrays() {
        let mut out = BTreeMap::new();
        flatten(
            "sft",
            &json!({"lora": {"r": 8, "target_modules": ["q", "v"]}, "lr": 1e-4}),
            &mut out,
        );
        assert_eq!(out["sft.lora.r"], json!(8));
        assert_eq!(out["sft.lora.target_modules"], json!(["q", "v"]));
        assert_eq!(out["sft.lr"], json!(1e-4));
    }

    fn row(key: &str, at: u64, in_sweep: bool, score: Option<f64>) -> Row {
        Row {
            key: key.into(),
            created_at_ms: at,
            in_sweep,
            params: BTreeMap::new(),
            metrics: score
                .map(|s| BTreeMap::from([("score".to_string(), json!(s))]))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn sweep_rows_come_first_and_sorting_stays_within_groups() {
        let mut rows = vec![
            row("old", 1, false, Some(0.9)),
            row("b", 3, true, Some(0.2)),
            row("none", 4, false, None),
            row("a", 2, true, Some(0.5)),
        ];
        order_rows(&mut rows, &["a".into(), "b".into()]);
        let keys = |rows: &[Row]| rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&rows), vec!["a", "b", "none", "old"]);
        let metrics = vec!["score".to_string()];
        sort_rows(&mut rows, "score", &metrics, true).unwrap();
        assert_eq!(keys(&rows), vec!["b", "a", "old", "none"]);
        sort_rows(&mut rows, "score", &metrics, false).unwrap();
        assert_eq!(keys(&rows), vec!["a", "b", "old", "none"]);
        let err = sort_rows(&mut rows, "scroe", &metrics, false).unwrap_err();
        assert!(err.to_string().contains("did you mean `score`?"), "{err}");
    }
}
