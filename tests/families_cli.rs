//! Every architecture family pipe implements, through the real binary: a 3-step sft of each
//! tiny fixture model of tests/fixtures/archs (Llama with linear and llama3 rope scaling,
//! Qwen2, Qwen3, Gemma-3 text, Mistral), in both config forms; and what pipe does not
//! implement refused by name, before any training.

mod support;

use std::path::{Path, PathBuf};

use support::{strs, tools_csv, Ws};

const PIPELINE: &str = r#"
[project]
name = "families"
seed = 3

[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"
val_fraction = 0.25

[model]
path = "arch"
chat_template = "chatml"

[sft]
max_steps = 3
batch_size = 2
max_seq_len = 64
save_every = 3
samples = 1
sample_max_new_tokens = 4

[sft.lora]
r = 4
alpha = 8
"#;

fn fixture_model(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/archs")
        .join(family)
        .join("model")
}

/// A workspace with the fixture's HF directory at `arch/`, its `config.json` replaced by
/// `config_file` of the fixture and then edited by `edit`.
fn workspace(family: &str, config_file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Ws {
    let ws = Ws::new(support::pipe_bin(), PIPELINE);
    let src = fixture_model(family);
    std::fs::create_dir_all(ws.path("arch")).unwrap();
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(file), ws.path("arch").join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join(config_file)).unwrap()).unwrap();
    edit(&mut config);
    ws.write("arch/config.json", config.to_string());
    ws.write("data/qa.csv", tools_csv());
    ws
}

fn sft_runs(family: &str, arch: &str) {
    for config_file in ["config.json", "config.transformers5.json"] {
        let ws = workspace(family, config_file, |_| {});
        let run = ws.ok(&["run"]);
        assert_eq!(
            run.ran(),
            strs(&["ingest", "model", "sft"]),
            "{family} {config_file}: {}",
            run.all()
        );
        let key = &ws.entries("sft")[0];
        let dir = ws.path("artifacts/sft").join(key);
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let steps = metrics
            .lines()
            .filter(|l| l.contains("\"loss\":") && l.contains("\"lr\":"))
            .count();
        assert_eq!(steps, 3, "{family}: {metrics}");
        assert!(
            !metrics.contains("NaN") && !metrics.contains("null"),
            "{metrics}"
        );
        assert!(dir.join("adapter/adapter_model.safetensors").is_file());
        assert!(
            ws.ok(&["show", "sft"]).stdout.contains("samples"),
            "{family}: sft show"
        );
        let model = ws.ok(&["show", "model"]);
        assert!(
            model.stdout.contains(&format!("arch        {arch}:")),
            "{family}: {}",
            model.stdout
        );
    }
}

#[test]
fn sft_runs_on_llama_with_linear_rope_scaling() {
    sft_runs("llama_linear_rope", "Llama");
}

#[test]
fn sft_runs_on_llama_with_llama3_rope_scaling() {
    sft_runs("llama3_rope", "Llama");
}

#[test]
fn sft_runs_on_qwen2() {
    sft_runs("qwen2", "Qwen2");
}

#[test]
fn sft_runs_on_qwen3() {
    sft_runs("qwen3", "Qwen3");
}

#[test]
fn sft_runs_on_gemma3_text() {
    sft_runs("gemma3_text", "Gemma3");
}

#[test]
fn sft_runs_on_mistral() {
    sft_runs("mistral", "Mistral");
}

/// An edit of a fixture's config.json.
type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Value)>;

/// What pipe does not implement fails the model stage with the field named, never a panic
/// and never a silently different model.
#[test]
fn unsupported_configs_are_refused_naming_the_field() {
    let cases: [(&str, ConfigEdit, &str); 4] = [
        (
            "llama_linear_rope",
            Box::new(|c| {
                c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})
            }),
            "rope_scaling type `yarn` is not supported",
        ),
        (
            "gemma3_text",
            Box::new(|c| {
                c["layer_types"] = serde_json::json!([
                    "sliding_attention",
                    "sliding_attention",
                    "chunked_attention",
                    "sliding_attention",
                    "sliding_attention",
                    "full_attention"
                ])
            }),
            "`layer_types[2]`",
        ),
        (
            "gemma3_text",
            Box::new(|c| c["final_logit_softcapping"] = 30.0.into()),
            "`final_logit_softcapping`",
        ),
        (
            "qwen3",
            Box::new(|c| c["model_type"] = "phi3".into()),
            "unsupported architecture `phi3`",
        ),
    ];
    for (family, edit, needle) in cases {
        let ws = workspace(family, "config.json", edit);
        let run = ws.run(&["run"]);
        assert_ne!(run.code, 0, "{family}: {}", run.all());
        assert!(
            run.all().contains(needle),
            "{family}: `{needle}` missing:\n{}",
            run.all()
        );
        assert!(!run.all().contains("panicked"), "{}", run.all());
        assert!(ws.entries("sft").is_empty());
    }
}
