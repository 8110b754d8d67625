//! Test support shared by the engine's tests: where the real SmolLM2 GGUF and the reference
//! fixtures are. Not used by the pipeline itself.

use std::path::PathBuf;

/// The environment variable the project's test script sets to the demo model's path.
pub const TEST_MODEL_ENV: &str = "PIPE_TEST_MODEL";

/// The workspace root (the parent of the `stages` crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF: `$PIPE_TEST_MODEL`, else
/// `<workspace>/models/SmolLM2-135M-Instruct.Q4_1.gguf`. Panics (this is for tests) with
/// the command that fetches it when neither exists.
pub fn smollm2_gguf_path() -> PathBuf {
    let path = std::env::var_os(TEST_MODEL_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        path.is_file(),
        "the test model {} is missing: run scripts/fetch-model.sh (or set {TEST_MODEL_ENV} to its path)",
        path.display()
    );
    path
}

/// A file under `tests/fixtures/smollm2/` (reference numbers from transformers/llama.cpp).
pub fn smollm2_fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/smollm2").join(name)
}

/// A file under `tests/fixtures/vocab/` (llama.cpp's vocabulary-only GGUFs and their
/// tokenizer test cases).
pub fn vocab_fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/vocab").join(name)
}

/// The SmolLM2 GGUF loaded once per test process (dequantizing it takes a moment and
/// ~540 MB; tests share it read-only).
pub fn smollm2_model() -> &'static super::LoadedModel {
    static MODEL: std::sync::OnceLock<super::LoadedModel> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let path = smollm2_gguf_path();
        super::load_model_path(&path, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
    })
}

/// The SmolLM2 tokenizer from the GGUF metadata, without reading the weights.
pub fn smollm2_tokenizer() -> &'static super::TextTokenizer {
    static TOKENIZER: std::sync::OnceLock<super::TextTokenizer> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = smollm2_gguf_path();
        super::GgufFile::open(&path)
            .and_then(|gguf| super::TextTokenizer::from_gguf(&gguf))
            .unwrap_or_else(|e| panic!("cannot read the tokenizer of {}: {e}", path.display()))
    })
}

pub mod micro;
#[cfg(test)]
pub mod probes;
mod tiny;
pub use tiny::{random_weights, tiny_config, tiny_tokenizer, write_gguf, TinyVocab};

/// Saves a PEFT adapter (r 4, alpha 8) on `modules` of `model` with seeded uniform random B
/// of standard deviation `b_std` (so it changes the model) to `dir`: for tests of the stages
/// that read adapters.
#[cfg(test)]
pub fn write_random_adapter(
    model: &super::LlamaModel,
    seed: u64,
    b_std: f64,
    modules: Vec<super::TargetModule>,
    dir: &std::path::Path,
) {
    let mut model = model.clone();
    model
        .attach_lora(&super::LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: modules,
            use_rslora: false,
            seed,
        })
        .unwrap();
    for (i, (_, _, l)) in model.lora_layers().into_iter().enumerate() {
        // Different per projection and adapter; uniform on ±√3·std.
        let noise = crate::llm::model::kernels::testing::randn(
            l.b().dims(),
            b_std * 3f64.sqrt(),
            seed * 1000 + i as u64,
        )
        .unwrap();
        l.b().set(&noise.to_dtype(l.b().dtype()).unwrap()).unwrap();
    }
    super::PeftAdapter::from_model(&model, "tiny")
        .unwrap()
        .save(dir)
        .unwrap();
}
