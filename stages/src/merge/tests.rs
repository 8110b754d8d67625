//! Tests of the merge stage: the exported HF model equals the base with both adapters applied,
//! the GGUF export (tokenizer from tokenizer.json or copied from a base GGUF) loads in our own
//! loader and reproduces the logits, and the adapters are re-saved with a portable base.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::*;
use crate::contract::{pick_table, Link};
use crate::llm::testing::{self, random_weights, tiny_config, TinyVocab};
use crate::llm::{load_model_path, merge_adapters_into_model, Architecture, TargetModule};
use crate::orpo::artifact as orpo;
use crate::progress::NullProgress;
use crate::sft::artifact as sft;
use crate::testkit::stage_artifact;

/// A workspace with a committed `model` artifact for the model at `model_path`.
struct Fixture {
    ws: tempfile::TempDir,
    model: PathBuf,
}

fn fixture_for(ws: tempfile::TempDir, model_path: &str) -> Fixture {
    fixture_with(ws, &format!("[model]\npath = {model_path:?}\n"))
}

/// A workspace with a committed `model` artifact for the `[model]` table `toml`.
fn fixture_with(ws: tempfile::TempDir, toml: &str) -> Fixture {
    let model = stage_artifact("model", toml, ws.path(), &[]);
    Fixture { ws, model }
}

/// The HF-directory tiny model of `testkit`.
fn hf_fixture() -> Fixture {
    let ws = tempfile::tempdir().unwrap();
    crate::testkit::write_tiny_model(&ws.path().join("tiny"), 5).unwrap();
    fixture_for(ws, "tiny")
}

/// A tiny Llama written as a q8_0 GGUF (permuted q/k, tokenizer metadata, a template).
fn gguf_fixture() -> Fixture {
    let ws = tempfile::tempdir().unwrap();
    let config = tiny_config(Architecture::Llama, 272, true);
    testing::write_gguf(
        &ws.path().join("tiny.gguf"),
        &config,
        &random_weights(&config, 9),
        &TinyVocab::new(),
        GgmlDType::Q8_0,
        Some("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    )
    .unwrap();
    fixture_for(ws, "tiny.gguf")
}

fn base(fx: &Fixture) -> BaseModel {
    BaseModel::load(&fx.model, fx.ws.path(), &Device::Cpu).unwrap()
}

/// A LoRA adapter with random (non-zero) B on `modules`, saved as `<ws>/<stage>/adapter`.
fn random_adapter(fx: &Fixture, stage: &str, seed: u64, modules: Vec<TargetModule>) -> PathBuf {
    let adapter_dir = if stage == "orpo" {
        orpo::ADAPTER_DIR
    } else {
        sft::ADAPTER_DIR
    };
    let dir = fx.ws.path().join(stage).join(adapter_dir);
    testing::write_random_adapter(&base(fx).model, seed, 0.05, modules, &dir);
    if stage == "orpo" {
        orpo_applies_to(fx, "base+sft");
    }
    dir.parent().unwrap().to_path_buf()
}

/// Writes the orpo summary's `adapter_applies_to` (what merge reads to pick the adapters).
fn orpo_applies_to(fx: &Fixture, what: &str) {
    let summary = serde_json::json!({ orpo::APPLIES_TO_KEY: what });
    std::fs::write(
        fx.ws.path().join("orpo").join(orpo::SUMMARY_FILE),
        summary.to_string(),
    )
    .unwrap();
}

/// Runs the stage with two random adapters; returns its output dir and the stage dirs.
fn run_merge(fx: &Fixture, toml: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    run_merge_as(fx, toml, "base+sft")
}

/// As [`run_merge`], orpo's summary saying what its adapter applies to.
fn run_merge_as(
    fx: &Fixture,
    toml: &str,
    applies_to: &str,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let sft = random_adapter(fx, "sft", 1, TargetModule::ALL.to_vec());
    let orpo = random_adapter(
        fx,
        "orpo",
        2,
        vec![
            TargetModule::QProj,
            TargetModule::KProj,
            TargetModule::DownProj,
        ],
    );
    orpo_applies_to(fx, applies_to);
    let cfg: MergeConfig = pick_table(&format!("[merge]\n{toml}"), "merge").unwrap();
    let out = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([
        ("model".to_string(), fx.model.clone()),
        ("sft".to_string(), sft.clone()),
        ("orpo".to_string(), orpo.clone()),
    ]);
    let mut cx = StageContext::new(
        fx.ws.path().to_path_buf(),
        out.path().to_path_buf(),
        fx.ws.path().join("partial"),
        crate::testkit::default_inputs("merge", &inputs),
        7,
        &NullProgress,
    );
    Merge::run(&cfg, &mut cx).unwrap();
    (out, sft, orpo)
}

/// The reference: base with the sft adapter merged and the orpo adapter attached unmerged.
fn reference_logits(fx: &Fixture, sft: &Path, orpo: &Path, ids: &[u32]) -> Vec<f32> {
    let mut model = base(fx).model;
    let first = PeftAdapter::load(&sft.join(sft::ADAPTER_DIR), &Device::Cpu).unwrap();
    let second = PeftAdapter::load(&orpo.join(orpo::ADAPTER_DIR), &Device::Cpu).unwrap();
    merge_adapters_into_model(&mut model, &[first]).unwrap();
    second.attach_to(&mut model).unwrap();
    logits_at_end(&model, ids).unwrap()
}

/// [`reference_logits`] with every weight and every product in f64.
fn reference_logits_f64(fx: &Fixture, sft: &Path, orpo: &Path, ids: &[u32]) -> Vec<f32> {
    let b = base(fx);
    let mut model = in_f64(b.model.config(), b.model.weights());
    let first = PeftAdapter::load(&sft.join(sft::ADAPTER_DIR), &Device::Cpu).unwrap();
    let second = PeftAdapter::load(&orpo.join(orpo::ADAPTER_DIR), &Device::Cpu).unwrap();
    merge_adapters_into_model(&mut model, &[first]).unwrap();
    second.attach_to(&mut model).unwrap();
    logits_at_end(&model, ids).unwrap()
}

/// The export at `path` run in f64 (its stored weights widened, nothing rounded after that).
fn logits_of_f64(path: &Path, ids: &[u32]) -> Vec<f32> {
    let loaded = load_model_path(path, &Device::Cpu).unwrap();
    let model = in_f64(&loaded.config, loaded.weights.into_map());
    logits_at_end(&model, ids).unwrap()
}

fn in_f64(
    config: &crate::llm::ModelConfig,
    weights: std::collections::HashMap<String, Tensor>,
) -> LlamaModel {
    let wide = weights
        .into_iter()
        .map(|(name, t)| (name, t.to_dtype(candle_core::DType::F64).unwrap()))
        .collect();
    LlamaModel::from_tensors(config, wide).unwrap()
}

/// The logits of every position of `ids`, flat.
fn logits_at_end(model: &LlamaModel, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let logits = model
        .forward(&input, None, crate::llm::Mode::Eval)
        .map_err(candle_core::Error::wrap)?;
    logits
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

fn logits_of(path: &Path, ids: &[u32]) -> Vec<f32> {
    let loaded = load_model_path(path, &Device::Cpu).unwrap();
    let model = LlamaModel::from_tensors(&loaded.config, loaded.weights.into_map()).unwrap();
    logits_at_end(&model, ids).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn summary(out: &Path) -> MergeSummary {
    serde_json::from_str(&std::fs::read_to_string(out.join(SUMMARY_FILE)).unwrap()).unwrap()
}

const PROBE: &str = "<|im_start|>user\nwhat is ls?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn exported_model_equals_base_plus_both_adapters() {
    let fx = hf_fixture();
    let (out, sft, orpo) = run_merge(&fx, "dtype = \"f32\"\ngguf = \"f16\"\n");
    let ids = base(&fx).tokenizer.encode(PROBE, false).unwrap();
    let want = reference_logits(&fx, &sft, &orpo, &ids);
    let hf = logits_of(&out.path().join(MODEL_DIR), &ids);
    assert!(max_diff(&hf, &want) < 1e-4, "hf: {}", max_diff(&hf, &want));
    // f16 weights: about 3 significant digits.
    let gguf = logits_of(&out.path().join(GGUF_FILE), &ids);
    assert!(
        max_diff(&gguf, &want) < 2e-2,
        "gguf: {}",
        max_diff(&gguf, &want)
    );
    // The merge changed the model: the check above is not base against base.
    let plain = logits_at_end(&base(&fx).model, &ids).unwrap();
    assert!(max_diff(&plain, &want) > 1e-2);

    let s = summary(out.path());
    assert_eq!(s.adapters.len(), 2);
    assert_eq!(s.adapters[1].projections, 3 * 2);
    assert_eq!(s.exports.len(), 2);
    assert!(
        s.exports[0].fidelity.max_logit_diff < 1e-4,
        "{:?}",
        s.exports
    );
    assert!(s
        .exports
        .iter()
        .all(|e| e.fidelity.same_argmax && e.bytes > 0));
    // f16 within the engine fixtures' tolerances: NLL 1e-3, top-10 logits 1e-2, greedy exact.
    let f = &s.exports[1].fidelity;
    assert!(f.nll_diff < 1e-3 && f.top10_logit_diff < 1e-2, "{f:?}");
    assert_eq!(f.greedy_agree, f.greedy_tokens);
    let mut show = Vec::new();
    Merge::show(out.path(), &mut show).unwrap();
    let show = String::from_utf8(show).unwrap();
    assert!(
        show.contains("model.gguf") && show.contains("orpo"),
        "{show}"
    );
}

#[test]
fn exported_directory_has_the_hf_files_and_portable_adapters() {
    let fx = hf_fixture();
    let (out, _, _) = run_merge(&fx, "");
    let dir = out.path().join(MODEL_DIR);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let loaded = load_model_path(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        loaded.chat_template.as_deref(),
        Some(crate::testkit::TINY_TEMPLATE)
    );
    assert!(!out.path().join(GGUF_FILE).exists());
    for stage in ["sft", "orpo"] {
        let adapter = out.path().join(ADAPTERS_DIR).join(stage);
        let loaded = PeftAdapter::load(&adapter, &Device::Cpu).unwrap();
        let reference = loaded.config.base_model_name_or_path.unwrap();
        assert!(!Path::new(&reference).is_absolute(), "{reference}");
    }
}

/// The GGUF of a model whose base was itself a GGUF: tokenizer metadata copied, q/k
/// permutation re-applied (else the logits would be far off), q8_0 close to f32.
#[test]
fn gguf_from_a_gguf_base_reloads_with_the_same_tokenizer_and_logits() {
    let fx = gguf_fixture();
    let (out, sft, orpo) = run_merge(&fx, "dtype = \"f32\"\ngguf = \"q8_0\"\n");
    let b = base(&fx);
    let texts = ["<|im_start|>the other 42 hello<|im_end|>", "tell me"];
    let path = out.path().join(GGUF_FILE);
    let loaded = load_model_path(&path, &Device::Cpu).unwrap();
    for text in texts {
        assert_eq!(
            loaded.tokenizer.encode(text, false).unwrap(),
            b.tokenizer.encode(text, false).unwrap()
        );
    }
    assert_eq!(loaded.config, *b.model.config());
    let ids = b.tokenizer.encode(PROBE, false).unwrap();
    let want = reference_logits(&fx, &sft, &orpo, &ids);
    let got = logits_of(&path, &ids);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        max_diff(&got, &want) < 2e-2 * scale.max(1.0),
        "q8_0: {} (logit scale {scale})",
        max_diff(&got, &want)
    );
    let hf = logits_of(&out.path().join(MODEL_DIR), &ids);
    assert!(max_diff(&hf, &want) < 1e-4);
}

/// The tokenizer built from tokenizer.json reads back identically (the tiny model has specials
/// as added tokens and a byte-level pre-tokenizer).
#[test]
fn gguf_tokenizer_from_tokenizer_json_round_trips() {
    let fx = hf_fixture();
    let (out, _, _) = run_merge(&fx, "gguf = \"q8_0\"\n");
    let b = base(&fx);
    let loaded = load_model_path(&out.path().join(GGUF_FILE), &Device::Cpu).unwrap();
    for text in [PROBE, "plain text 123, ünïcödé!", "<|endoftext|>x"] {
        assert_eq!(
            loaded.tokenizer.encode(text, false).unwrap(),
            b.tokenizer.encode(text, false).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(loaded.tokenizer.special().eos, b.tokenizer.special().eos);
    assert_eq!(loaded.config.eos_token_ids, b.model.config().eos_token_ids);
    assert_eq!(
        loaded.chat_template.as_deref(),
        Some(crate::testkit::TINY_TEMPLATE)
    );
}

/// orpo with init = "continue_sft": its adapter replaces sft's, so only it is merged; the sft
/// adapter is still copied.
#[test]
fn an_orpo_adapter_that_continued_sft_is_merged_alone() {
    let fx = hf_fixture();
    let (out, _, orpo) = run_merge_as(&fx, "dtype = \"f32\"\n", "base");
    let ids = base(&fx).tokenizer.encode(PROBE, false).unwrap();
    let mut model = base(&fx).model;
    PeftAdapter::load(&orpo.join(orpo::ADAPTER_DIR), &Device::Cpu)
        .unwrap()
        .attach_to(&mut model)
        .unwrap();
    let want = logits_at_end(&model, &ids).unwrap();
    let got = logits_of(&out.path().join(MODEL_DIR), &ids);
    assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
    let s = summary(out.path());
    assert_eq!(s.adapters.len(), 1);
    assert_eq!(s.adapters[0].stage, "orpo");
    assert!(out
        .path()
        .join(ADAPTERS_DIR)
        .join("sft")
        .join("adapter_config.json")
        .is_file());
    orpo_applies_to(&fx, "elsewhere");
    let ws = fx.ws.path();
    let chain = [
        Link::new("orpo", "orpo", &ws.join("orpo")),
        Link::new("sft", "sft", &ws.join("sft")),
        Link::new("model", "model", &ws.join("model")),
    ];
    let err = ModelStack::from_chain(&chain).unwrap_err();
    assert!(err.to_string().contains("adapter_applies_to"), "{err}");
}

#[test]
fn unknown_merge_keys_and_values_are_refused() {
    let err = pick_table::<MergeConfig>("[merge]\ngguf = \"q4\"\n", "merge").unwrap_err();
    assert!(err.message().contains("q8_0"), "{err}");
    let err = pick_table::<MergeConfig>("[merge]\ndtyp = \"f32\"\n", "merge").unwrap_err();
    assert!(err.message().contains("dtyp"), "{err}");
}

/// The real SmolLM2 (a Q4_1 GGUF base): the f32 HF export equals base + adapters within
/// 1e-4 of the logit scale and the q8_0 GGUF reloads with the same next-token prediction.
#[test]
fn real_model_merges_and_exports() {
    if std::env::var_os(testing::TEST_MODEL_ENV).is_none() {
        eprintln!("skipped: {} is not set", testing::TEST_MODEL_ENV);
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let path = testing::smollm2_gguf_path();
    let fx = fixture_for(ws, &path.to_string_lossy());
    let (out, sft, orpo) = run_merge(&fx, "dtype = \"f32\"\ngguf = \"q8_0\"\n");
    let b = base(&fx);
    let ids = b.render_prompt(None, &[], "What does grep do?").unwrap();
    let want = reference_logits(&fx, &sft, &orpo, &ids);
    let hf = logits_of(&out.path().join(MODEL_DIR), &ids);
    // Merged in f64 and rounded once vs. LoRA applied in f32 on top: float rounding only.
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_diff(&hf, &want);
    assert!(
        diff < 1e-4 * scale.max(1.0),
        "hf: {diff} (logit scale {scale})"
    );
    // The same comparison in f64: what is left is the merged weights' one rounding to f32.
    let hf64 = logits_of_f64(&out.path().join(MODEL_DIR), &ids);
    let exact = max_diff(&hf64, &reference_logits_f64(&fx, &sft, &orpo, &ids));
    assert!(exact < 1e-4, "hf in f64: {exact}");
    // For scale: the f32 evaluation of one and the same model already moves its logits by
    // about as much as the f32 comparison above shows.
    let f32_noise = max_diff(&hf, &hf64);
    let s = summary(out.path());
    let gguf = &s.exports[1];
    eprintln!("hf diff {diff} (f64: {exact}, f32 vs f64 of the export {f32_noise}, scale {scale}); {gguf:?}");
    assert!(gguf.fidelity.same_argmax, "{gguf:?}");
    // q8_0 re-quantizes every matrix to 8 bits per weight. Measured with these adapters:
    // greedy 24/24, probe NLL 0.026, top-10 logits 0.38, all logits 1.5 of ~38. The engine
    // fixtures' 1e-3 NLL is out of reach of 8-bit rounding (f16 meets it, tested above).
    let f = &gguf.fidelity;
    assert_eq!(f.greedy_agree, f.greedy_tokens, "{gguf:?}");
    assert!(f.nll_diff < 0.05 && f.top10_logit_diff < 0.5, "{gguf:?}");
    assert!(f.max_logit_diff < 0.1 * f64::from(scale), "{gguf:?}");
    let loaded = load_model_path(&out.path().join(GGUF_FILE), &Device::Cpu).unwrap();
    let text = "Hello 12345 <|im_start|>user\nwhat's up?";
    assert_eq!(
        loaded.tokenizer.encode(text, false).unwrap(),
        b.tokenizer.encode(text, false).unwrap()
    );
}

/// A summary written by an earlier merge version is named as such, not shown as an I/O error.
#[test]
fn show_names_a_summary_of_an_older_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SUMMARY_FILE), r#"{"base_model": "x"}"#).unwrap();
    let mut out = Vec::new();
    Merge::show(dir.path(), &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("older format") && out.contains("--from merge"),
        "{out}"
    );
}

/// A workspace holding a copy of an architecture fixture's HF directory
/// (tests/fixtures/archs/<family>/model) as its `model` artifact.
fn arch_fixture(family: &str) -> Fixture {
    arch_fixture_edited(family, |_| {})
}

/// [`arch_fixture`] with its config.json edited first.
fn arch_fixture_edited(family: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Fixture {
    let ws = tempfile::tempdir().unwrap();
    let src = crate::llm::testing::workspace_root()
        .join("tests/fixtures/archs")
        .join(family)
        .join("model");
    let dst = ws.path().join(family);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let config_path = dst.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    // The fixtures' tokenizer files carry no chat template.
    fixture_with(
        ws,
        &format!("[model]\npath = {family:?}\nchat_template = \"chatml\"\n"),
    )
}

/// Qwen3 and Gemma-3 through merge: the HF directory and the llama.cpp-named GGUF (Gemma's
/// norms stored `1 + w`, q/k norms, sliding-window metadata) load back in pipe's loader with
/// the merged model's logits, within the engine fixtures' tolerances.
#[test]
fn qwen3_and_gemma3_export_to_hf_and_gguf_and_reload() {
    for family in ["qwen3", "gemma3_text"] {
        let fx = arch_fixture(family);
        let (out, sft, orpo) = run_merge(&fx, "dtype = \"f32\"\ngguf = \"f16\"\n");
        let ids: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 4000).collect();
        let want = reference_logits(&fx, &sft, &orpo, &ids);
        let hf = logits_of(&out.path().join(MODEL_DIR), &ids);
        assert!(
            max_diff(&hf, &want) < 1e-4,
            "{family} hf: {}",
            max_diff(&hf, &want)
        );
        let path = out.path().join(GGUF_FILE);
        let loaded = load_model_path(&path, &Device::Cpu).unwrap();
        let b = base(&fx);
        let (got, was) = (&loaded.config, b.model.config());
        assert_eq!(got.architecture, was.architecture, "{family}");
        assert_eq!(
            got.resolved_layer_types(),
            was.resolved_layer_types(),
            "{family}"
        );
        assert_eq!(
            (
                got.sliding_window,
                got.rope_local_theta,
                got.attention_scale()
            ),
            (
                was.sliding_window,
                was.rope_local_theta,
                was.attention_scale()
            ),
            "{family}"
        );
        let gguf = logits_of(&path, &ids);
        assert!(
            max_diff(&gguf, &want) < 2e-2,
            "{family} gguf: {}",
            max_diff(&gguf, &want)
        );
        let s = summary(out.path());
        for e in &s.exports {
            let f = &e.fidelity;
            assert!(
                f.nll_diff < 1e-3 && f.top10_logit_diff < 1e-2,
                "{family}: {f:?}"
            );
            assert_eq!(f.greedy_agree, f.greedy_tokens, "{family}: {f:?}");
        }
        if let Some(dir) = std::env::var_os("PIPE_EXPORT_TO") {
            let target = Path::new(&dir).join(family);
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(out.path(), &target);
        }
    }
}

/// A Gemma-3 whose layers llama.cpp would run differently is refused for GGUF, naming why.
#[test]
fn gemma3_gguf_export_refuses_what_llama_cpp_would_run_differently() {
    let fx = arch_fixture_edited("gemma3_text", |c| c["rope_local_base_freq"] = 5000.0.into());
    let b = base(&fx);
    let weights: BTreeMap<String, Tensor> = b.model.weights().into_iter().collect();
    let export = GgufExport {
        config: b.model.config(),
        weights: &weights,
        tokenizer: TokenizerSource::Hf(&b.tokenizer),
        chat_template: None,
        name: "gemma",
        dtype: GgufType::F16,
    };
    let err = export
        .write(&fx.ws.path().join("x.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rope base 10000") && err.contains("gguf = \"none\""),
        "{err}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
