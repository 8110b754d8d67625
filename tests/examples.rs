//! Every pipeline under examples/ runs through the real binary at tiny sizes: the file as
//! shipped (its tables, instances and inputs), with `-s` overrides that swap in the tiny
//! generated model, a few rows and a couple of steps. Each example's eval names the models
//! its README line promises, and `pipe dag --mermaid` draws exactly the graph it declares.

mod support;

use std::path::Path;

use support::{pipe_bin, Ws};

/// The examples/ tree of the repository laid out in `ws` as in the repository (the files
/// refer to ../../data, ../data and ../../models), with the tiny model at `tiny/`.
fn workspace(name: &str) -> Ws {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |rel: &str| std::fs::read(repo.join(rel)).unwrap();
    let ws = Ws::new(pipe_bin(), "");
    ws.write(
        &format!("examples/{name}/pipeline.toml"),
        read(&format!("examples/{name}/pipeline.toml")),
    );
    ws.write("data/unix_manual_qa.csv", read("data/unix_manual_qa.csv"));
    ws.write(
        "examples/data/unix_manual_pairs.csv",
        read("examples/data/unix_manual_pairs.csv"),
    );
    pipe_stages::testkit::write_tiny_model(&ws.path("tiny"), 1).expect("tiny model");
    ws
}

/// Tiny sizes for the tables `tables` of an example.
fn tiny(tables: &[&str]) -> Vec<String> {
    let mut out = vec![
        "model.path=../../tiny".to_string(),
        "ingest.max_rows=40".into(),
        "eval.limit=3".into(),
        "eval.max_new_tokens=4".into(),
    ];
    for t in tables {
        let keys: &[&str] = match *t {
            "sft" | "sft_lo" | "sft_hi" => &["max_steps=2", "batch_size=2", "max_eval_rows=2"],
            "orpo" => &["max_steps=2", "batch_size=2", "eval_every=1"],
            "merge" => &["dtype=\"f32\""],
            "prefs" => &["max_rows=40"],
            _ => &[],
        };
        out.extend(keys.iter().map(|k| format!("{t}.{k}")));
    }
    out
}

/// The edges `pipe dag --mermaid` draws for the example, sorted.
fn mermaid_edges(ws: &Ws, name: &str) -> Vec<String> {
    let config = format!("examples/{name}/pipeline.toml");
    let out = ws.ok(&["--config", &config, "dag", "--mermaid"]).stdout;
    let mut edges: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("-->"))
        .map(str::to_string)
        .collect();
    edges.sort();
    edges
}

/// `"a --> b"` for each `(a, b)`, sorted.
fn edges(pairs: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<String> = pairs.iter().map(|(a, b)| format!("{a} --> {b}")).collect();
    out.sort();
    out
}

/// Runs the example with tiny overrides; returns the model names of its eval.json.
fn run_example(name: &str, tables: &[&str]) -> (Ws, Vec<String>) {
    let ws = workspace(name);
    let config = format!("examples/{name}/pipeline.toml");
    let overrides = tiny(tables);
    let mut args: Vec<&str> = vec!["--config", &config];
    for o in &overrides {
        args.extend(["-s", o.as_str()]);
    }
    let mut run = args.clone();
    run.push("run");
    let r = ws.ok(&run);
    assert!(r.all().contains("eval"), "{}", r.all());
    let mut status = args.clone();
    status.push("status");
    let status = ws.ok(&status).stdout;
    let key = status
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("eval") && parts.next() == Some("cached"))
                .then(|| parts.next().map(str::to_string))
                .flatten()
        })
        .unwrap_or_else(|| panic!("eval is not cached: {status}"));
    let eval: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            ws.path(&format!("examples/{name}/artifacts/eval/{key}/eval.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let names = eval["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    (ws, names)
}

#[test]
fn sft_only() {
    let (ws, names) = run_example("sft-only", &["sft", "merge"]);
    assert_eq!(names, ["base", "final"]);
    assert_eq!(
        mermaid_edges(&ws, "sft-only"),
        edges(&[
            ("ingest", "sft"),
            ("model", "sft"),
            ("model", "merge"),
            ("sft", "merge"),
            ("ingest", "eval"),
            ("model", "eval"),
            ("sft", "eval"),
            ("merge", "eval"),
        ])
    );
}

#[test]
fn orpo_on_pairs() {
    let (ws, names) = run_example("orpo-on-pairs", &["orpo", "merge"]);
    assert_eq!(names, ["base", "final"]);
    assert_eq!(
        mermaid_edges(&ws, "orpo-on-pairs"),
        edges(&[
            ("ingest", "orpo"),
            ("model", "orpo"),
            ("model", "merge"),
            ("orpo", "merge"),
            ("ingest", "eval"),
            ("model", "eval"),
            ("orpo", "eval"),
            ("merge", "eval"),
        ])
    );
    // The train split trained, the val split was held out: orpo's summary counts both.
    let dir = ws.path("examples/orpo-on-pairs/artifacts/orpo");
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let summary = std::fs::read_to_string(entry.join("summary.json")).unwrap();
    assert!(summary.contains("\"pairs\": 40"), "{summary}");
}

#[test]
fn sft_then_preference() {
    let (ws, names) = run_example("sft-then-preference", &["sft", "orpo", "merge", "prefs"]);
    assert_eq!(names, ["base", "sft", "final"]);
    assert_eq!(
        mermaid_edges(&ws, "sft-then-preference"),
        edges(&[
            ("ingest", "sft"),
            ("model", "sft"),
            ("prefs", "orpo"),
            ("sft", "orpo"),
            ("model", "orpo"),
            ("model", "merge"),
            ("sft", "merge"),
            ("orpo", "merge"),
            ("ingest", "eval"),
            ("model", "eval"),
            ("sft", "eval"),
            ("orpo", "eval"),
            ("merge", "eval"),
        ])
    );
}

#[test]
fn two_variants() {
    let (ws, names) = run_example("two-variants", &["sft_lo", "sft_hi"]);
    assert_eq!(names, ["base", "sft_lo", "sft_hi"]);
    assert_eq!(
        mermaid_edges(&ws, "two-variants"),
        edges(&[
            ("ingest", "sft_lo"),
            ("model", "sft_lo"),
            ("ingest", "sft_hi"),
            ("model", "sft_hi"),
            ("ingest", "eval"),
            ("model", "eval"),
            ("sft_lo", "eval"),
            ("sft_hi", "eval"),
        ])
    );
}
