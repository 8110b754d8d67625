//! The real `pipe` binary on the chain ingest → model → sft → generate → score → dpo → merge →
//! eval with a tiny model written by the test: `[dpo]` in place of `[orpo]`, merge folds
//! base + sft + dpo and eval reports the final model with DPO's curves; a dpo key re-runs dpo
//! and what is below it; both or neither preference table is a clear error, a typo'd key is
//! refused at its line; and a SIGKILLed dpo run resumes without computing its reference
//! log-probs again, to the adapter of an uninterrupted run.

mod support;

use std::sync::LazyLock;

use support::{strs, tiny_chain, tiny_workspace, Ws};

static PIPELINE: LazyLock<String> = LazyLock::new(|| {
    tiny_chain(
        r#"

[dpo]
max_steps = 3
batch_size = 2
max_seq_len = 128
save_every = 2

[dpo.lora]
r = 4
alpha = 8

[merge]
dtype = "f32"

[eval]
limit = 2
max_new_tokens = 4
samples = 1
"#,
    )
});

const UPSTREAM: [&str; 5] = ["ingest", "model", "sft", "generate", "score"];

fn json(ws: &Ws, stage: &str, file: &str) -> serde_json::Value {
    let key = &ws.entries(stage)[0];
    let path = ws.path(&format!("artifacts/{stage}/{key}/{file}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn dpo_in_place_of_orpo_is_merged_and_evaluated() {
    let ws = tiny_workspace(&PIPELINE);
    let first = ws.ok(&["run"]);
    let mut all = strs(&UPSTREAM);
    all.extend(strs(&["dpo", "merge", "eval"]));
    all.sort();
    assert_eq!(first.ran(), all, "{}", first.all());

    let key = &ws.entries("dpo")[0];
    let dir = ws.path("artifacts/dpo").join(key);
    for file in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "metrics.jsonl",
        "summary.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let summary = json(&ws, "dpo", "summary.json");
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["adapter_applies_to"], "base+sft");
    assert_eq!(summary["reference"]["reused"], false);
    assert!(summary["reference"]["seconds"].is_number(), "{summary}");
    assert!(
        summary["eval_after"]["rewards/accuracies"].is_number(),
        "{summary}"
    );
    assert!(
        !ws.path("artifacts/.partial/dpo").join(key).exists(),
        "checkpoints of a committed run are removed"
    );

    // merge folds sft, then dpo; eval draws DPO's curves.
    let merged = json(&ws, "merge", "summary.json");
    let stages: Vec<&str> = merged["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["sft", "dpo"], "{merged}");
    let eval_key = &ws.entries("eval")[0];
    let report =
        std::fs::read_to_string(ws.path(&format!("artifacts/eval/{eval_key}/report.html")))
            .unwrap();
    assert!(
        report.contains("DPO reward accuracy"),
        "no DPO curves in the report"
    );
    assert!(!report.contains("ORPO"), "the report names ORPO");

    let show = ws.ok(&["show", "dpo"]);
    for needle in [
        "accuracy curve",
        "margin curve",
        "reference   log-probs",
        "held out",
    ] {
        assert!(
            show.stdout.contains(needle),
            "`{needle}` missing:\n{}",
            show.stdout
        );
    }

    let changed = ws.ok(&["run", "-s", "dpo.beta=0.2"]);
    assert_eq!(
        changed.ran(),
        strs(&["dpo", "eval", "merge"]),
        "{}",
        changed.all()
    );
    let again = ws.ok(&["run", "-s", "dpo.beta=0.2"]);
    assert!(again.ran().is_empty(), "{}", again.all());
}

#[test]
fn a_pipeline_holds_orpo_or_dpo_and_dpo_keys_are_strict() {
    let both = tiny_workspace(&format!("{}\n[orpo]\nmax_steps = 1\n", *PIPELINE));
    let r = both.run(&["run", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("[merge] several adapter stages could be the final model (dpo, orpo); say which one merge folds"),
        "{}",
        r.stderr
    );
    let neither = tiny_workspace(
        &PIPELINE
            .replace("[dpo]", "[unused]")
            .replace("[dpo.lora]\nr = 4\nalpha = 8\n", ""),
    );
    let r = neither.run(&["run", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.all());

    let typo = PIPELINE.replace("save_every = 2\n", "save_every = 2\nlearning_rat = 1e-4\n");
    let line = typo
        .lines()
        .position(|l| l.starts_with("learning_rat"))
        .unwrap()
        + 1;
    let ws = tiny_workspace(&typo);
    let r = ws.run(&["run", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(&format!(
            "pipeline.toml:{line}:1: unknown key `learning_rat` in [dpo]"
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("learning_rate"), "{}", r.stderr);
    let wrong = tiny_workspace(&PIPELINE.replace("batch_size = 2\n", "batch_size = \"two\"\n"));
    let r = wrong.run(&["run", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("wrong type for `dpo.batch_size`"),
        "{}",
        r.stderr
    );
}

/// A long enough dpo run of the tiny model that a SIGKILL lands between checkpoints.
fn killable_pipeline() -> String {
    PIPELINE
        .replace(
            "max_steps = 3\nbatch_size = 2",
            "max_steps = 300\nbatch_size = 2",
        )
        .replace("save_every = 2", "save_every = 10\neval_every = 1000")
}

/// The step of the newest checkpoint under `artifacts/.partial/dpo`, if one is complete.
fn checkpoint_step(ws: &Ws) -> Option<u64> {
    let root = ws.path("artifacts/.partial/dpo");
    let key = std::fs::read_dir(root).ok()?.flatten().next()?.path();
    let text = std::fs::read_to_string(key.join("checkpoint/state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// The LoRA tensors of the committed dpo adapter, as f32 vectors by name.
fn adapter_values(ws: &Ws) -> Vec<(String, Vec<f32>)> {
    let key = &ws.entries("dpo")[0];
    let file = ws
        .path("artifacts/dpo")
        .join(key)
        .join("adapter/adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_sigkilled_dpo_run_resumes_without_recomputing_the_reference() {
    let pipeline = killable_pipeline();
    let whole = tiny_workspace(&pipeline);
    whole.ok(&["run", "--to", "dpo"]);

    let ws = tiny_workspace(&pipeline);
    ws.ok(&["run", "--to", "score"]);
    let mut child = ws
        .command(&["run", "--to", "dpo"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while checkpoint_step(&ws).is_none_or(|s| s < 10) {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on unix
    assert!(
        !child.wait().unwrap().success(),
        "the run must die mid-training"
    );
    assert!(ws.entries("dpo").is_empty(), "a killed run commits nothing");
    let step = checkpoint_step(&ws).unwrap();
    assert!(step < 300, "killed at step {step}");

    let resumed = ws.ok(&["run", "--to", "dpo", "-v"]);
    assert_eq!(resumed.ran(), strs(&["dpo"]), "{}", resumed.all());
    let out = resumed.all();
    assert!(
        out.contains("resuming from the checkpoint of step"),
        "{out}"
    );
    assert!(
        out.contains("read back from the checkpoint directory"),
        "{out}"
    );
    assert_eq!(
        json(&ws, "dpo", "summary.json")["reference"]["reused"],
        true
    );
    let (a, b) = (adapter_values(&whole), adapter_values(&ws));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name} differs by {worst} after resuming");
    }
}
