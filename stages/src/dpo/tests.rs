//! Tests of the dpo stage: its loss path reproduces TRL's DPO numbers on SmolLM2 (policy with
//! a PEFT adapter against the base), its gradient through a tiny model equals finite
//! differences, and on the tiny model of `testkit` it learns a preference, resumes exactly
//! without computing the reference again, guards against NaN and shows its curves.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::*;
use crate::contract::pick_table;
use crate::llm::testing::micro::{max_abs_diff, micro_model};
use crate::llm::testing::{smollm2_fixture, smollm2_model, TEST_MODEL_ENV};
use crate::llm::{Architecture, LoraConfig, PeftAdapter, TargetModule};
use crate::progress::NullProgress;
use crate::testkit::preference::{fixture, tool_pairs, Fixture};
use crate::train::metrics::MetricRecord;
use crate::train::preference::evaluate_pairs;

/// What a finished run left.
struct Done {
    out: tempfile::TempDir,
    summary: DpoSummary,
    metrics: serde_json::Map<String, Value>,
}

fn config(toml: &str) -> DpoStageConfig {
    let cfg: DpoStageConfig = pick_table(&format!("[dpo]\n{toml}"), "dpo").unwrap();
    config::validate(&cfg).unwrap();
    cfg
}

/// Runs dpo in `fx` with its checkpoints in `partial`.
fn run_in(fx: &Fixture, toml: &str, partial: &Path, hooks: Hooks) -> Result<Done, String> {
    let cfg = config(toml);
    let out = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([
        ("model".to_string(), fx.model.clone()),
        ("sft".to_string(), fx.sft.clone()),
        ("score".to_string(), fx.score.clone()),
    ]);
    let mut cx = StageContext::new(
        fx.ws.path().to_path_buf(),
        out.path().to_path_buf(),
        partial.to_path_buf(),
        crate::testkit::default_inputs("dpo", &inputs),
        7,
        &NullProgress,
    );
    run_dpo(&cfg, &mut cx, hooks).map_err(|e| e.to_string())?;
    let metrics = cx.metrics().clone();
    let text = std::fs::read_to_string(out.path().join(SUMMARY_FILE)).unwrap();
    Ok(Done {
        summary: serde_json::from_str(&text).unwrap(),
        out,
        metrics,
    })
}

fn run(fx: &Fixture, toml: &str) -> Done {
    let partial = fx
        .ws
        .path()
        .join(format!("partial-{}", blake3::hash(toml.as_bytes())));
    run_in(fx, toml, &partial, Hooks::default()).unwrap()
}

fn adapter_tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        dir.join(ADAPTER_DIR).join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn metric_lines(dir: &Path) -> Vec<MetricRecord> {
    crate::train::metrics::read(&dir.join(METRICS_FILE)).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Relative error, against a floor for values near 0.
fn relative(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-6)
}

#[test]
fn the_stage_loss_path_reproduces_the_reference() {
    if std::env::var_os(TEST_MODEL_ENV).is_none() {
        eprintln!("skipped: {TEST_MODEL_ENV} is not set");
        return;
    }
    let loaded = smollm2_model();
    let mut model =
        LlamaModel::from_tensors(&loaded.config, loaded.weights.tensors().clone()).unwrap();
    let pad = loaded.config.pad_token_id.unwrap_or(0);
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(smollm2_fixture("dpo_loss.json")).unwrap())
            .unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let rows: Vec<PairRow> = fx["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| PairRow {
            id: format!("fixture{i}"),
            line: i + 1,
            pair: PreferencePair {
                prompt: ids(&p["prompt_ids"]),
                chosen: ids(&p["chosen_ids"]),
                rejected: ids(&p["rejected_ids"]),
            },
        })
        .collect();
    let want = |i: usize, key: &str| fx["pairs"][i][key].as_f64().unwrap();
    let mut worst: f64 = 0.0;
    let mut check = |what: String, got: f64, want: f64| {
        let err = relative(got, want);
        worst = worst.max(err);
        assert!(err < 1e-4, "{what}: {got} vs {want} (relative {err:.1e})");
    };
    // The reference: the stage's own computation, on the base model, in batches of 2.
    let all: Vec<&PairRow> = rows.iter().collect();
    let reference = reference::compute(&model, &all, pad, 2, "fixture").unwrap();
    for (i, &(_, c, r)) in reference.pairs.iter().enumerate() {
        check(
            format!("pair {i} reference chosen"),
            c,
            want(i, "ref_logp_chosen"),
        );
        check(
            format!("pair {i} reference rejected"),
            r,
            want(i, "ref_logp_rejected"),
        );
    }
    // The policy: base + the PEFT adapter, applied.
    let adapter = PeftAdapter::load(&smollm2_fixture("peft_adapter"), &Device::Cpu).unwrap();
    adapter.attach_to(&mut model).unwrap();
    let preference: Vec<PreferencePair> = rows.iter().map(|r| r.pair.clone()).collect();
    let (pc, pr) =
        crate::llm::pair_logps(&model, &preference, pad, Mode::Eval, DEFAULT_CHUNK).unwrap();
    let (pc, pr) = (
        pc.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
        pr.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
    );
    for i in 0..rows.len() {
        check(
            format!("pair {i} policy chosen"),
            pc[i] as f64,
            want(i, "policy_logp_chosen"),
        );
        check(
            format!("pair {i} policy rejected"),
            pr[i] as f64,
            want(i, "policy_logp_rejected"),
        );
    }
    // The loss and TRL's metrics, through the stage's evaluation (held-out batches of 2, the
    // reference of each looked up by pair) and its training path (all pairs in one batch).
    let train_refs = lookup(&reference, &all).unwrap();
    let scale = train_refs
        .iter()
        .map(|(c, r)| c.abs() + r.abs())
        .sum::<f64>()
        / (2 * train_refs.len()) as f64;
    for beta in ["0.1", "0.5"] {
        let expected = &fx["betas"][beta];
        let settings = config(&format!("beta = {beta}\n")).resolve();
        let eval_rows = pairs::eval_batch_rows(&rows, 2);
        let loss = DpoPairLoss {
            config: settings.loss(),
            train: train_refs.clone(),
            eval: eval_rows
                .iter()
                .map(|b| lookup(&reference, b).unwrap())
                .collect(),
        };
        let batches = pairs::eval_batches(&rows, 2);
        let got = evaluate_pairs(&loss, &model, &batches, pad).unwrap();
        let mode = Mode::Train { seed: 1 };
        let trained = micro_loss(
            &model,
            &preference,
            &train_refs,
            pad,
            &settings.loss(),
            mode,
        )
        .unwrap();
        let trained = values_of(&trained.metrics);
        for key in ["loss", "rewards/accuracies"] {
            let want = expected[key].as_f64().unwrap();
            check(format!("beta {beta} eval {key}"), got[key], want);
            check(format!("beta {beta} train {key}"), trained[key], want);
        }
        // A reward is β times the difference of two log-prob sums of ~30-50 that agree to
        // ~1e-4 (f32 on both sides), and the mean of `rewards/chosen` cancels down to 0.009:
        // its relative error is that of the sums scaled up by the cancellation (2.9e-4 here,
        // 2.6e-6 absolute). So rewards are held to 1e-4 relative of β·|log-prob|, the size of
        // the terms they are computed from, and reported.
        let beta: f64 = beta.parse().unwrap();
        for key in ["rewards/chosen", "rewards/rejected", "rewards/margins"] {
            let want = expected[key].as_f64().unwrap();
            for (path, value) in [("eval", got[key]), ("train", trained[key])] {
                let err = (value - want).abs();
                eprintln!(
                    "beta {beta} {path} {key}: {value} vs {want}: {err:.1e} absolute, {:.1e} relative",
                    relative(value, want)
                );
                assert!(
                    err < 1e-4 * beta * scale,
                    "beta {beta} {path} {key}: {value} vs {want}"
                );
            }
        }
    }
    eprintln!("dpo stage vs the reference: log-probs and loss within {worst:.1e} relative");
}

/// Makes every B nonzero (deterministically), so the policy differs from the reference and A
/// receives gradient too.
fn randomize_b(model: &LlamaModel) {
    for (i, (_, _, lora)) in model.lora_layers().into_iter().enumerate() {
        let b = lora.b();
        let v: Vec<f64> = (0..b.elem_count())
            .map(|j| 0.05 * (((i * 31 + j * 7) % 13) as f64 - 6.0) / 6.0)
            .collect();
        b.set(&Tensor::from_vec(v, b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

/// The stage's DPO loss through a tiny f64 model: the gradient of every LoRA matrix equals
/// central finite differences, for the sigmoid, cDPO and IPO losses.
#[test]
fn the_gradient_equals_finite_differences() {
    let mut model = micro_model(Architecture::Llama, DType::F64);
    model
        .attach_lora(&LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: TargetModule::ALL.to_vec(),
            use_rslora: false,
            seed: 3,
        })
        .unwrap();
    let pairs = vec![
        PreferencePair {
            prompt: vec![1, 5, 9, 12],
            chosen: vec![7, 3, 2],
            rejected: vec![4, 2],
        },
        PreferencePair {
            prompt: vec![1, 30],
            chosen: vec![11, 25, 19, 2],
            rejected: vec![6, 6, 2],
        },
    ];
    let rows: Vec<PairRow> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| PairRow {
            id: format!("p{i}"),
            line: i + 1,
            pair: p.clone(),
        })
        .collect();
    let refs: Vec<&PairRow> = rows.iter().collect();
    // The reference is the model before training: B = 0.
    let reference = lookup(
        &reference::compute(&model, &refs, 0, 1, "fd").unwrap(),
        &refs,
    )
    .unwrap();
    randomize_b(&model);
    for toml in [
        "beta = 0.5\n",
        "beta = 0.3\nlabel_smoothing = 0.2\n",
        "beta = 0.5\nloss_type = \"ipo\"\n",
    ] {
        let cfg = config(toml).resolve().loss();
        let value = || {
            scalar(
                &micro_loss(&model, &pairs, &reference, 0, &cfg, Mode::Eval)
                    .unwrap()
                    .loss,
            )
        };
        let loss = micro_loss(&model, &pairs, &reference, 0, &cfg, Mode::Eval).unwrap();
        let grads = loss.loss.backward().unwrap();
        let mut checked = 0;
        for (layer, module, lora) in model.lora_layers() {
            for (which, var) in [("A", lora.a()), ("B", lora.b())] {
                let g = grads.get(var).expect("gradient").flatten_all().unwrap();
                let g = g.to_vec1::<f64>().unwrap();
                let n = var.elem_count();
                for &j in &[0, n / 2, n - 1] {
                    let fd = finite_difference(&value, var, j, 1e-5);
                    let err = (g[j] - fd).abs() / fd.abs().max(1e-3);
                    assert!(
                        err < 1e-5,
                        "{toml}layer {layer} {module} lora_{which}[{j}]: {} vs {fd}",
                        g[j]
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * 7 * 2 * 3);
    }
}

/// Central difference of `loss` in entry `j` of `var` (restored afterwards).
fn finite_difference(loss: &impl Fn() -> f64, var: &Var, j: usize, h: f64) -> f64 {
    let original = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let at = |delta: f64| {
        let mut v = original.clone();
        v[j] += delta;
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        loss()
    };
    let fd = (at(h) - at(-h)) / (2.0 * h);
    at(0.0);
    fd
}

#[test]
fn learns_the_preference_on_the_tiny_model() {
    let fx = fixture(&tool_pairs(10));
    let done = run(
        &fx,
        "max_steps = 30\nlearning_rate = 1e-2\nlr_scheduler = \"constant\"\nwarmup_steps = 0\n\
         batch_size = 8\ngradient_accumulation = 1\nbeta = 0.5\neval_fraction = 0.2\neval_every = 10\n\
         [dpo.lora]\nr = 8\nalpha = 16\ndropout = 0.0\n",
    );
    let s = &done.summary;
    assert_eq!(
        (s.pairs.pairs, s.pairs.train.kept, s.pairs.eval.kept),
        (10, 8, 2)
    );
    let (before, after) = (&s.eval_before, &s.eval_after);
    // Before training the policy is the reference: rewards 0, loss log 2.
    assert!(before["rewards/margins"].abs() < 1e-4, "{before:?}");
    assert!(
        (before["loss"] - std::f64::consts::LN_2).abs() < 1e-4,
        "{before:?}"
    );
    assert!(
        after["rewards/margins"] > 0.1,
        "margins must grow: {after:?}"
    );
    assert_eq!(after["rewards/accuracies"], 1.0, "{after:?}");
    assert!(s.train_loss_last < s.train_loss_first, "{s:?}");
    assert_eq!(s.adapter_applies_to, "base+sft");
    assert_eq!((s.reference.pairs, s.reference.reused), (10, false));
    let lines = metric_lines(done.out.path());
    assert_eq!(lines.len(), 31);
    assert!(lines[0].eval_loss.is_some() && lines[0].loss.is_none());
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(
            lines[5].extra.contains_key(key),
            "train {key}: {:?}",
            lines[5]
        );
        assert!(
            lines[10].extra.contains_key(&format!("eval_{key}")),
            "eval {key}"
        );
        assert!(
            lines[0].extra.contains_key(&format!("eval_{key}")),
            "eval {key} at 0"
        );
    }
    assert!(
        lines[5].lr.is_some() && lines[5].grad_norm.is_some() && lines[5].tokens_per_s.is_some()
    );
    for key in [
        "eval_accuracy_before",
        "eval_accuracy_after",
        "eval_margin_after",
        "tok_s",
        "reference_seconds",
    ] {
        assert!(done.metrics.contains_key(key), "metric {key}");
    }
    let adapter = PeftAdapter::load(&done.out.path().join(ADAPTER_DIR), &Device::Cpu).unwrap();
    assert_eq!(
        adapter.config.base_model_name_or_path.as_deref(),
        Some("tiny")
    );
    assert_eq!(adapter.config.r, 8);
}

/// Dropout on and accumulation over micro-batches, so every RNG stream is exercised.
const RESUMABLE: &str =
    "max_steps = 7\nsave_every = 2\nbatch_size = 2\ngradient_accumulation = 2\n\
    learning_rate = 5e-3\nwarmup_steps = 2\neval_every = 3\n\
    [dpo.lora]\nr = 4\nalpha = 8\ndropout = 0.1\n";

#[test]
fn a_killed_run_resumes_to_the_same_adapter_without_recomputing_the_reference() {
    let fx = fixture(&tool_pairs(10));
    let whole = run(&fx, RESUMABLE);
    let partial = fx.ws.path().join("crashing");
    let err = run_in(
        &fx,
        RESUMABLE,
        &partial,
        Hooks {
            stop_after: Some(5),
        },
    )
    .err()
    .unwrap();
    assert!(err.contains("dpo: stopped after step 5"), "{err}");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(partial.join("checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 4, "the last checkpoint before the crash");
    let saved = partial.join(reference::REFERENCE_FILE);
    let written = std::fs::metadata(&saved).unwrap().modified().unwrap();
    let resumed = run_in(&fx, RESUMABLE, &partial, Hooks::default()).unwrap();
    assert_eq!(resumed.summary.resumed_from_step, Some(4));
    assert!(
        resumed.summary.reference.reused,
        "the reference was computed again"
    );
    assert_eq!(
        std::fs::metadata(&saved).unwrap().modified().unwrap(),
        written
    );
    let (a, b) = (
        adapter_tensors(whole.out.path()),
        adapter_tensors(resumed.out.path()),
    );
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .map(|(name, t)| max_abs_diff(t, &b[name]))
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "resumed adapter differs by {worst}");
    let steps: Vec<usize> = metric_lines(resumed.out.path())
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, (0..=7).collect::<Vec<_>>());
    let margin = |d: &Done| d.summary.eval_after["rewards/margins"];
    assert!((margin(&whole) - margin(&resumed)).abs() < 1e-5);
}

#[test]
fn nan_loss_stops_naming_the_step_and_pairs_and_keeps_the_checkpoint() {
    let fx = fixture(&tool_pairs(8));
    let err = run_in(
        &fx,
        "max_steps = 6\nsave_every = 1\nbatch_size = 3\ngradient_accumulation = 1\n\
         learning_rate = 1e30\nlr_scheduler = \"constant\"\nwarmup_steps = 0\n",
        &fx.ws.path().join("nan"),
        Hooks::default(),
    )
    .err()
    .expect("a learning rate of 1e30 must blow up");
    assert!(err.contains("dpo: non-finite"), "{err}");
    assert!(
        err.contains("train pairs id 0000000000000") && err.contains("pairs.jsonl line"),
        "{err}"
    );
    assert!(err.contains("checkpoint (step "), "{err}");
}

#[test]
fn continuing_sft_and_ipo_train_too() {
    let fx = fixture(&tool_pairs(6));
    let done = run(
        &fx,
        "init = \"continue_sft\"\nloss_type = \"ipo\"\nmax_steps = 2\nbatch_size = 4\nlearning_rate = 1e-2\n",
    );
    assert_eq!(done.summary.adapter_applies_to, "base");
    let sft = adapter_tensors(&fx.sft);
    let ours = adapter_tensors(done.out.path());
    let moved = sft
        .iter()
        .map(|(n, t)| max_abs_diff(t, &ours[n]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-6, "training changed the sft adapter");
    // IPO before training: logits 0, loss (1/(2β))² = 25 at β 0.1.
    assert!(
        (done.summary.eval_before["loss"] - 25.0).abs() < 1e-3,
        "{:?}",
        done.summary
    );
}

#[test]
fn too_few_pairs_are_a_clear_error() {
    let fx = fixture(&tool_pairs(1));
    let err = run_in(
        &fx,
        "max_steps = 1\n",
        &fx.ws.path().join("p1"),
        Hooks::default(),
    )
    .err()
    .unwrap();
    assert!(err.contains("dpo needs at least 2 pairs"), "{err}");
}

#[test]
fn show_prints_summary_and_curves() {
    let fx = fixture(&tool_pairs(6));
    let done = run(&fx, "max_steps = 4\nbatch_size = 2\neval_every = 2\n");
    let mut out = Vec::new();
    Dpo::show(done.out.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for needle in [
        "accuracy",
        "margin",
        "reference   log-probs of 6 pairs",
        "loss sigmoid",
        "tok/s",
        "loss curve",
        "accuracy curve",
        "margin curve",
        "held out",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[test]
fn the_stage_refuses_bad_keys_and_its_starter_is_a_commented_table() {
    let stage = crate::contract::erase::<Dpo>();
    match stage.load_config("[dpo]\nbeta = -1.0\n", "dpo") {
        Err(crate::contract::ConfigProblem::Invalid(issue)) => assert_eq!(issue.key, "beta"),
        other => panic!("{other:?}"),
    }
    // Commented out, so `pipe init`'s pipeline keeps [orpo] alone; uncommenting its tables
    // gives a valid one.
    assert!(Dpo::STARTER.lines().all(|l| l.starts_with('#')));
    let tables: String = Dpo::STARTER
        .lines()
        .filter_map(|l| l.strip_prefix("# ["))
        .map(|l| format!("[{l}\n"))
        .collect();
    let starter: DpoStageConfig = pick_table(&tables, "dpo").unwrap();
    config::validate(&starter).unwrap();
}
