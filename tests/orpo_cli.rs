//! The real `pipe` binary on the chain ingest → model → sft → generate → score → orpo with a
//! tiny model written by the test: orpo trains on score's pairs, `pipe run --from orpo`
//! re-runs orpo alone and says it reuses what is above it, an orpo key re-runs orpo alone,
//! and `pipe show orpo` prints the summary and its curves.

mod support;

use std::sync::LazyLock;

use support::{strs, tiny_chain, tiny_workspace, Ws};

static PIPELINE: LazyLock<String> = LazyLock::new(|| {
    tiny_chain(
        r#"

[orpo]
max_steps = 3
batch_size = 2
max_seq_len = 128
save_every = 2

[orpo.lora]
r = 4
alpha = 8
"#,
    )
});

fn workspace() -> Ws {
    tiny_workspace(&PIPELINE)
}

const UPSTREAM: [&str; 5] = ["ingest", "model", "sft", "generate", "score"];

#[test]
fn orpo_trains_on_score_pairs_and_reruns_alone_from_orpo() {
    let ws = workspace();
    let first = ws.ok(&["run"]);
    let mut all = strs(&UPSTREAM);
    all.push("orpo".into());
    all.sort();
    assert_eq!(first.ran(), all, "{}", first.all());

    let key = &ws.entries("orpo")[0];
    let dir = ws.path("artifacts/orpo").join(key);
    for file in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "metrics.jsonl",
        "summary.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 3);
    assert!(
        summary["eval_after"]["rewards/margins"].is_number(),
        "{summary}"
    );
    assert!(
        !ws.path("artifacts/.partial/orpo").join(key).exists(),
        "checkpoints of a committed run are removed"
    );

    let from = ws.ok(&["run", "--from", "orpo"]);
    assert_eq!(from.ran(), strs(&["orpo"]), "{}", from.all());
    let mut kept = from.cached();
    kept.extend(from.reused());
    kept.sort();
    let mut upstream: Vec<String> = strs(&UPSTREAM);
    upstream.sort();
    assert_eq!(kept, upstream, "{}", from.all());

    let changed = ws.ok(&["run", "-s", "orpo.beta=0.2"]);
    assert_eq!(changed.ran(), strs(&["orpo"]), "{}", changed.all());

    let show = ws.ok(&["show", "orpo"]);
    for needle in [
        "accuracy curve",
        "margin curve",
        "loss curve",
        "tok/s",
        "held out",
    ] {
        assert!(
            show.stdout.contains(needle),
            "`{needle}` missing:\n{}",
            show.stdout
        );
    }

    let r = ws.run(&["run", "-s", "orpo.nll=both"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("orpo.nll"), "{}", r.stderr);
}
