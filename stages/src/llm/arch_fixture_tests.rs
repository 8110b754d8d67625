//! Every family pipe implements against transformers + PEFT on tiny seeded random models
//! (tests/fixtures/archs, see its README): both config forms, NLL, top-10 logits and greedy ids
//! with and without a PEFT adapter (applied and merged), one training step's loss and LoRA
//! gradient norms, on the fused CPU kernels, on the plain candle compositions (the path a GPU
//! build takes) and through the 8-bit packed decode.

use std::path::PathBuf;

use candle_core::{DType, Device};
use serde_json::Value;

use super::testing::probes::{argmax, decode_step_logits, greedy_batch, ids, nll_and_last_logits};
use super::testing::workspace_root;
use crate::llm::io::merge::merge_adapters;
use crate::llm::io::peft::PeftAdapter;
use crate::llm::io::weights::ModelWeights;
use crate::llm::model::config::ModelConfig;
use crate::llm::model::decoder::LlamaModel;
use crate::llm::model::kernels::with_kernels;
use crate::llm::model::lora::Mode;
use crate::llm::objectives::batch::{Example, TokenBatch};
use crate::llm::objectives::loss::{sft_loss, DEFAULT_CHUNK};

/// The bounds: NLL, top-10 logits, training loss (absolute), gradient norms
/// (relative), and the top1 − top2 margin below which a greedy choice may flip on rounding.
const NLL_TOL: f64 = 1e-3;
const LOGIT_TOL: f64 = 1e-2;
const LOSS_TOL: f64 = 1e-4;
const GRAD_REL_TOL: f64 = 1e-3;
const TIE_MARGIN: f64 = 1e-3;
/// The 8-bit decode copies round random (off-grid) weights: a looser bound on the logits,
/// with the same top-1.
const PACKED_LOGIT_TOL: f64 = 5e-2;

fn family_dir(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/archs").join(name)
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The worst error seen per check, printed at the end of each family.
#[derive(Debug, Default)]
struct Worst {
    nll: f64,
    logit: f64,
    packed_logit: f64,
    loss: f64,
    grad_rel: f64,
    greedy_compared: usize,
}

struct Family {
    name: &'static str,
    expected: Value,
    config: ModelConfig,
    base: LlamaModel,
    adapter: PeftAdapter,
    pad: u32,
}

/// Loads a fixture family, checking that both config forms parse to the same config.
fn load(name: &'static str) -> Family {
    let dir = family_dir(name);
    let hub = ModelConfig::from_config_json(&dir.join("model/config.json")).unwrap();
    let t5 = ModelConfig::from_config_json(&dir.join("model/config.transformers5.json")).unwrap();
    assert_eq!(
        hub, t5,
        "{name}: config.json and config.transformers5.json differ"
    );
    let mut weights = ModelWeights::from_hf_dir(&dir.join("model"), &Device::Cpu).unwrap();
    weights.validate(&hub).unwrap();
    let base = LlamaModel::from_tensors(&hub, weights.into_map()).unwrap();
    let adapter = PeftAdapter::load(&dir.join("adapter"), &Device::Cpu).unwrap();
    Family {
        name,
        expected: read_json(dir.join("expected.json")),
        pad: hub.pad_token_id.unwrap_or(0),
        config: hub,
        base,
        adapter,
    }
}

impl Family {
    fn cases(&self) -> Vec<(&'static str, Vec<u32>)> {
        ["short", "long"]
            .into_iter()
            .map(|c| (c, ids(&self.expected["cases"][c]["ids"])))
            .collect()
    }

    fn with_adapter(&self) -> LlamaModel {
        let mut model = self.base.clone();
        self.adapter.attach_to(&mut model).unwrap();
        model
    }

    fn merged(&self) -> LlamaModel {
        let mut weights = self.base.weights();
        merge_adapters(&mut weights, std::slice::from_ref(&self.adapter)).unwrap();
        LlamaModel::from_tensors(&self.config, weights).unwrap()
    }
}

/// The reference's top-10 logits at the last position within `tol`, and the same top-1;
/// returns the worst error.
fn check_top10(what: &str, case: &Value, logits: &[f32], tol: f64) -> f64 {
    let top = case["last_top10"].as_array().unwrap();
    let mut worst: f64 = 0.0;
    for entry in top {
        let id = entry[0].as_u64().unwrap() as usize;
        let err = (logits[id] as f64 - entry[1].as_f64().unwrap()).abs();
        worst = worst.max(err);
        assert!(
            err < tol,
            "{what}: logit of token {id}: {} vs {} (err {err})",
            logits[id],
            entry[1]
        );
    }
    assert_eq!(
        argmax(logits) as u64,
        top[0][0].as_u64().unwrap(),
        "{what}: top-1 differs"
    );
    worst
}

fn check_nll_and_top10(what: &str, case: &Value, nll: f64, logits: &[f32], worst: &mut Worst) {
    let want = case["nll_mean"].as_f64().unwrap();
    let err = (nll - want).abs();
    worst.nll = worst.nll.max(err);
    assert!(err < NLL_TOL, "{what}: nll {nll} vs {want} (err {err})");
    worst.logit = worst.logit.max(check_top10(what, case, logits, LOGIT_TOL));
}

/// Our greedy ids equal the reference's up to the first step whose margin is a near tie.
fn check_greedy(what: &str, case: &Value, ours: &[u32], worst: &mut Worst) {
    let want = ids(&case["greedy"]);
    let margins = floats(&case["greedy_margins"]);
    for step in 0..want.len() {
        assert_eq!(
            ours[step], want[step],
            "{what}: greedy step {step}: {ours:?} vs {want:?}"
        );
        worst.greedy_compared += 1;
        if margins[step] < TIE_MARGIN {
            break;
        }
    }
}

/// NLL, top-10 and greedy ids of `model` against the fixture section `section`
/// (`cases`, `adapter_applied`, `adapter_merged`).
fn check_section(fam: &Family, model: &LlamaModel, section: &str, tag: &str, worst: &mut Worst) {
    let cases = fam.cases();
    let seqs: Vec<Vec<u32>> = cases.iter().map(|(_, s)| s.clone()).collect();
    let results = nll_and_last_logits(model, &seqs, fam.pad);
    for ((case, _), (nll, logits)) in cases.iter().zip(&results) {
        let what = format!("{} {tag} {section}.{case}", fam.name);
        check_nll_and_top10(&what, &fam.expected[section][case], *nll, logits, worst);
    }
    let steps = fam.expected[section]["short"]["greedy"]
        .as_array()
        .unwrap()
        .len();
    let greedy = greedy_batch(model, &seqs, steps, fam.pad);
    for ((case, _), ours) in cases.iter().zip(&greedy) {
        let what = format!("{} {tag} {section}.{case}", fam.name);
        check_greedy(&what, &fam.expected[section][case], ours, worst);
    }
}

/// One training step with the adapter attached: the mean cross-entropy over all positions of
/// `cases.long` and the gradient norm of every LoRA tensor, under PEFT's names.
fn check_train_step(fam: &Family, tag: &str, worst: &mut Worst) {
    let step = &fam.expected["train_step"];
    let seq = ids(&fam.expected["cases"][step["sequence"].as_str().unwrap()]["ids"]);
    let model = fam.with_adapter();
    let batch = TokenBatch::new(
        &[Example::new(seq[..1].to_vec(), seq[1..].to_vec())],
        fam.pad,
        model.device(),
    )
    .unwrap();
    let out = sft_loss(&model, &batch, Mode::Train { seed: 0 }, DEFAULT_CHUNK).unwrap();
    let loss = out
        .loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let want = step["loss"].as_f64().unwrap();
    let err = (loss - want).abs();
    worst.loss = worst.loss.max(err);
    assert!(
        err < LOSS_TOL,
        "{} {tag}: train loss {loss} vs {want}",
        fam.name
    );
    let grads = out.loss.backward().unwrap();
    let norms = step["lora_grad_norms"].as_object().unwrap();
    let mut total_sq = 0.0;
    let mut seen = 0;
    for (layer, module, lora) in model.lora_layers() {
        for (half, var) in [("lora_A", lora.a()), ("lora_B", lora.b())] {
            let name = format!("{}.{half}.default.weight", module.module_path(layer));
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{} {tag}: no gradient for {name}", fam.name));
            let norm = grad
                .to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            total_sq += norm;
            let norm = norm.sqrt();
            let want = norms[&name].as_f64().unwrap();
            let rel = (norm - want).abs() / want.abs().max(1e-12);
            worst.grad_rel = worst.grad_rel.max(rel);
            assert!(
                rel < GRAD_REL_TOL,
                "{} {tag}: grad norm of {name}: {norm} vs {want} (rel {rel})",
                fam.name
            );
            seen += 1;
        }
    }
    assert_eq!(
        seen,
        norms.len(),
        "{} {tag}: LoRA tensors compared",
        fam.name
    );
    let total = total_sq.sqrt();
    let want = step["lora_grad_norm_total"].as_f64().unwrap();
    assert!(
        (total - want).abs() / want < GRAD_REL_TOL,
        "{} {tag}: total grad norm {total} vs {want}",
        fam.name
    );
}

/// The 8-bit packed decode (what generate, eval and chat use) on the base model and with the
/// adapter attached: top-10 logits within [`PACKED_LOGIT_TOL`], the same top-1.
fn check_packed(fam: &Family, worst: &mut Worst) {
    for (section, model) in [
        ("cases", fam.base.clone()),
        ("adapter_applied", fam.with_adapter()),
    ] {
        let mut packed = model;
        assert!(packed.pack_for_decode().unwrap() > 0);
        for (case, seq) in fam.cases() {
            let what = format!("{} packed {section}.{case}", fam.name);
            let logits = decode_step_logits(&packed, &seq);
            let err = check_top10(
                &what,
                &fam.expected[section][case],
                &logits,
                PACKED_LOGIT_TOL,
            );
            worst.packed_logit = worst.packed_logit.max(err);
        }
    }
}

/// Everything for one family, on the fused kernels and on the plain compositions.
fn check_family(name: &'static str) {
    let fam = load(name);
    let mut fused = Worst::default();
    with_kernels(true, || {
        check_section(&fam, &fam.base, "cases", "fused", &mut fused);
        check_section(
            &fam,
            &fam.with_adapter(),
            "adapter_applied",
            "fused",
            &mut fused,
        );
        check_section(&fam, &fam.merged(), "adapter_merged", "fused", &mut fused);
        check_train_step(&fam, "fused", &mut fused);
        check_packed(&fam, &mut fused);
    });
    let mut plain = Worst::default();
    with_kernels(false, || {
        check_section(&fam, &fam.base, "cases", "plain", &mut plain);
        check_section(
            &fam,
            &fam.with_adapter(),
            "adapter_applied",
            "plain",
            &mut plain,
        );
        check_train_step(&fam, "plain", &mut plain);
    });
    eprintln!("{name}: fused {fused:?}");
    eprintln!("{name}: plain {plain:?}");
}

#[test]
fn llama_linear_rope_matches_transformers() {
    check_family("llama_linear_rope");
}

#[test]
fn llama3_rope_matches_transformers() {
    check_family("llama3_rope");
}

#[test]
fn qwen2_matches_transformers() {
    check_family("qwen2");
}

#[test]
fn qwen3_matches_transformers() {
    check_family("qwen3");
}

#[test]
fn gemma3_text_matches_transformers() {
    check_family("gemma3_text");
}

#[test]
fn mistral_matches_transformers() {
    check_family("mistral");
}

/// A Gemma-3 model written back out (HF names, stored `w` norms) reads back to the same
/// model: the `1 + w` form stays internal.
#[test]
fn gemma3_weights_round_trip_in_hf_form() {
    let fam = load("gemma3_text");
    let weights = fam.base.weights();
    let dir = family_dir("gemma3_text").join("model");
    let original = ModelWeights::from_hf_dir(&dir, &Device::Cpu).unwrap();
    for (name, tensor) in &weights {
        let want = original.get(name).unwrap();
        let diff = (tensor - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{name}: {diff}");
    }
}
