//! The real `pipe` binary on ingest → model → sft with a tiny model written by the test: the
//! whole chain runs, a second run runs nothing, an sft key re-runs sft alone, a bad key is
//! refused by name, and `pipe show sft` prints the report.

mod support;

use support::{strs, tiny_workspace, Ws};

const PIPELINE: &str = r#"
[project]
name = "tiny"
seed = 3

[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"
val_fraction = 0.25

[model]
path = "tiny"
system_prompt = "Answer briefly."

[sft]
max_steps = 3
batch_size = 4
max_seq_len = 160
save_every = 2
samples = 1
sample_max_new_tokens = 8

[sft.lora]
r = 4
alpha = 8
"#;

fn workspace() -> Ws {
    tiny_workspace(PIPELINE)
}

#[test]
fn ingest_model_sft_run_cache_and_rerun_only_what_changed() {
    let ws = workspace();
    let first = ws.ok(&["run"]);
    assert_eq!(
        first.ran(),
        strs(&["ingest", "model", "sft"]),
        "{}",
        first.all()
    );

    let key = &ws.entries("sft")[0];
    let dir = ws.path("artifacts/sft").join(key);
    for file in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "metrics.jsonl",
        "summary.json",
        "samples.jsonl",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["base_model_name_or_path"], "tiny");
    assert!(
        !ws.path("artifacts/.partial/sft").join(key).exists(),
        "checkpoints of a committed run are removed"
    );

    let again = ws.ok(&["run"]);
    assert!(again.ran().is_empty(), "{}", again.all());
    assert_eq!(again.cached(), strs(&["ingest", "model", "sft"]));

    let changed = ws.ok(&["run", "-s", "sft.learning_rate=1e-3"]);
    assert_eq!(changed.ran(), strs(&["sft"]), "{}", changed.all());
    let lora = ws.ok(&["run", "-s", "sft.lora.r=2"]);
    assert_eq!(lora.ran(), strs(&["sft"]), "{}", lora.all());
    assert_eq!(ws.entries("sft").len(), 3);

    let show = ws.ok(&["show", "sft"]);
    for needle in [
        "eval loss",
        "loss curve",
        "samples",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(
            show.stdout.contains(needle),
            "`{needle}` missing:\n{}",
            show.stdout
        );
    }
    let model = ws.ok(&["show", "model"]);
    assert!(model.stdout.contains("Answer briefly."), "{}", model.stdout);
}

/// Issue 16: a same-size corruption of the sft adapter (NaN bytes) stayed "cached" until
/// generate failed with "every logit is NaN". `status --verify` and `pipe verify` find it by
/// its digest, and the next run rebuilds the same adapter.
#[test]
fn a_nan_corrupted_adapter_is_found_by_verify_and_rebuilt() {
    let ws = workspace();
    ws.ok(&["run"]);
    let key = ws.entries("sft")[0].clone();
    let weights = ws
        .path("artifacts/sft")
        .join(&key)
        .join("adapter/adapter_model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 64..].fill(0xff);
    std::fs::write(&weights, &bad).unwrap();
    assert!(ws.ok(&["status"]).stdout.contains("sft        cached"));
    let verified = ws.ok(&["status", "--verify"]);
    assert!(
        verified.stdout.contains(&format!(
            "sft        corrupt    {key} (adapter/adapter_model.safetensors does not match its blake3 digest"
        )),
        "{}",
        verified.stdout
    );
    let v = ws.run(&["verify"]);
    assert_eq!(v.code, 1, "{}", v.all());
    let rebuilt = ws.ok(&["run"]);
    assert_eq!(rebuilt.ran(), strs(&["sft"]), "{}", rebuilt.all());
    assert_ne!(std::fs::read(&weights).unwrap(), bad);
    let again = ws.ok(&["status", "--verify"]);
    assert!(
        again.stdout.contains("sft        cached"),
        "{}",
        again.stdout
    );
    assert_eq!(good.len(), std::fs::read(&weights).unwrap().len());
}

#[test]
fn bad_sft_keys_are_refused_by_name() {
    let ws = workspace();
    let r = ws.run(&["run", "-s", "sft.lora.dropout=1.5"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("sft.lora.dropout"), "{}", r.stderr);
    let r = ws.run(&["run", "-s", "sft.learning_rat=0.1"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("learning_rate"), "{}", r.stderr);
}

/// A long enough run of the tiny model that a SIGKILL lands between checkpoints.
fn killable_pipeline() -> String {
    PIPELINE
        .replace("max_steps = 3", "max_steps = 400")
        .replace("save_every = 2", "save_every = 10\neval_every = 1000")
}

/// The LoRA tensors of the committed adapter, as f32 vectors by name.
fn adapter_values(ws: &Ws) -> Vec<(String, Vec<f32>)> {
    let key = &ws.entries("sft")[0];
    let file = ws
        .path("artifacts/sft")
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

/// The step of the newest checkpoint under `artifacts/.partial/sft`, if one is complete.
fn checkpoint_step(ws: &Ws) -> Option<u64> {
    let root = ws.path("artifacts/.partial/sft");
    let key = std::fs::read_dir(root).ok()?.flatten().next()?.path();
    let text = std::fs::read_to_string(key.join("checkpoint/state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

#[test]
fn a_sigkilled_sft_run_resumes_from_its_checkpoint_to_the_same_adapter() {
    let whole = tiny_workspace(&killable_pipeline());
    whole.ok(&["run"]);

    let ws = tiny_workspace(&killable_pipeline());
    let mut child = ws
        .command(&["run"])
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
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run must die mid-training, not finish"
    );
    assert!(ws.entries("sft").is_empty(), "a killed run commits nothing");
    let step = checkpoint_step(&ws).unwrap();
    assert!(step < 400, "killed at step {step}");

    let resumed = ws.ok(&["run", "-v"]);
    assert_eq!(resumed.ran(), strs(&["sft"]), "{}", resumed.all());
    assert!(
        resumed
            .all()
            .contains("resuming from the checkpoint of step"),
        "{}",
        resumed.all()
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
