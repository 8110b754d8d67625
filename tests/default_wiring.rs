//! The demo pipeline.toml, which names no input, is wired exactly as the fixed chain was:
//! every instance's upstream labels in its key are the stage names the chain's deps had, and
//! no input key reaches the hashed config, so the keys of existing artifacts stay valid.

use std::collections::BTreeMap;
use std::path::Path;

use pipe::config::PipelineConfig;

fn labels(config: &PipelineConfig, instance: &str) -> Vec<String> {
    let mut out: Vec<String> = config
        .wiring
        .labels(instance, |n| config.kinds[n])
        .into_iter()
        .map(|(label, _)| label)
        .collect();
    out.sort();
    out
}

fn load(text: &str) -> PipelineConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let registry = pipe_stages::registry();
    let config = PipelineConfig::load(&path, &[], &registry).unwrap();
    // The registry outlives nothing here: the config holds only interned names.
    drop(registry);
    config
}

#[test]
fn the_demo_pipeline_keeps_the_chains_upstream_labels() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml"))
        .unwrap();
    let config = load(&text);
    let want: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("ingest", vec![]),
        ("model", vec![]),
        ("sft", vec!["ingest", "model"]),
        ("generate", vec!["ingest", "model", "sft"]),
        ("score", vec!["generate"]),
        ("orpo", vec!["model", "score", "sft"]),
        ("merge", vec!["model", "orpo", "sft"]),
        (
            "eval",
            vec!["ingest", "merge", "model", "orpo", "score", "sft"],
        ),
    ]);
    for (instance, deps) in want {
        assert_eq!(labels(&config, instance), deps, "{instance}");
    }
    for (instance, cfg) in &config.stages {
        let map = cfg.canonical.as_object().unwrap();
        for wire in &config.wiring.wires[instance] {
            assert!(
                !map.contains_key(wire.key),
                "{instance}: `{}` is hashed",
                wire.key
            );
        }
    }
}

#[test]
fn dpo_in_place_of_orpo_is_wired_alike() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml"))
        .unwrap();
    let config = load(&text.replace("[orpo", "[dpo"));
    assert_eq!(labels(&config, "dpo"), ["model", "score", "sft"]);
    assert_eq!(labels(&config, "merge"), ["dpo", "model", "sft"]);
}
