//! Tests of the orpo stage: its loss path reproduces the reference ORPO numbers on SmolLM2,
//! and on the tiny model of `testkit` it learns a preference, resumes exactly, guards against
//! NaN, continues the sft adapter, writes a loadable adapter and shows its curves.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::Value;

use super::*;
use crate::contract::pick_table;
use crate::llm::testing::micro::max_abs_diff;
use crate::llm::testing::{smollm2_fixture, smollm2_model, TEST_MODEL_ENV};
use crate::progress::NullProgress;
use crate::testkit::preference::{fixture, tool_pairs, write_pairs, Fixture};

fn context<'a>(
    ws: &Path,
    out: &Path,
    partial: &Path,
    inputs: BTreeMap<String, PathBuf>,
) -> StageContext<'a> {
    StageContext::new(
        ws.to_path_buf(),
        out.to_path_buf(),
        partial.to_path_buf(),
        crate::testkit::default_inputs("orpo", &inputs),
        7,
        &NullProgress,
    )
}

/// What a finished run left.
struct Done {
    out: tempfile::TempDir,
    summary: OrpoSummary,
    metrics: serde_json::Map<String, Value>,
}

fn config(toml: &str) -> OrpoStageConfig {
    let cfg: OrpoStageConfig = pick_table(&format!("[orpo]\n{toml}"), "orpo").unwrap();
    config::validate(&cfg).unwrap();
    cfg
}

/// Runs orpo in `fx` with its checkpoints in `partial`.
fn run_in(fx: &Fixture, toml: &str, partial: &Path, hooks: Hooks) -> Result<Done, String> {
    let cfg = config(toml);
    let out = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([
        ("model".to_string(), fx.model.clone()),
        ("sft".to_string(), fx.sft.clone()),
        ("score".to_string(), fx.score.clone()),
    ]);
    let mut cx = context(fx.ws.path(), out.path(), partial, inputs);
    run_orpo(&cfg, &mut cx, hooks).map_err(|e| e.to_string())?;
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

#[test]
fn the_stage_loss_path_reproduces_the_reference_in_both_nll_variants() {
    if std::env::var_os(TEST_MODEL_ENV).is_none() {
        eprintln!("skipped: {TEST_MODEL_ENV} is not set");
        return;
    }
    let loaded = smollm2_model();
    let model = LlamaModel::from_tensors(&loaded.config, loaded.weights.tensors().clone()).unwrap();
    let pad = loaded.config.pad_token_id.unwrap_or(0);
    let path = smollm2_fixture("orpo_loss.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
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
    for (nll, key) in [
        ("completion", "loss_completion_nll"),
        ("full", "loss_full_sequence_nll_as_trl"),
    ] {
        let settings = config(&format!("nll = \"{nll}\"\nbeta = {}\n", fx["beta"])).resolve();
        let want = fx[key].as_f64().unwrap();
        // Evaluation: the held-out batching (sorted by length, 2 pairs a batch, weighted).
        let batches = eval_batches(&rows, 2);
        assert_eq!(batches.len(), 2);
        let got = evaluate_batches(&model, &batches, pad, &settings.loss()).unwrap();
        let err = (got["loss"] - want).abs();
        assert!(err < 1e-3, "{nll}: eval path {} vs {want}", got["loss"]);
        // Training: all pairs of a step in one micro-batch, in training mode.
        let all: Vec<PreferencePair> = rows.iter().map(|r| r.pair.clone()).collect();
        let mode = Mode::Train { seed: 1 };
        let out = micro_loss(&model, &all, pad, &settings.loss(), mode).unwrap();
        let loss = out
            .loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (loss - want).abs() < 1e-3,
            "{nll}: train path {loss} vs {want}"
        );
        eprintln!(
            "orpo stage, nll = {nll}: eval err {err:.2e}, train err {:.2e}",
            (loss - want).abs()
        );
    }
}

#[test]
fn learns_the_preference_on_the_tiny_model() {
    let fx = fixture(&tool_pairs(10));
    let done = run(
        &fx,
        "max_steps = 30\nlearning_rate = 1e-2\nlr_scheduler = \"constant\"\nwarmup_steps = 0\n\
         batch_size = 8\ngradient_accumulation = 1\nbeta = 0.5\neval_fraction = 0.2\neval_every = 10\n\
         [orpo.lora]\nr = 8\nalpha = 16\ndropout = 0.0\n",
    );
    let s = &done.summary;
    assert_eq!(
        (s.pairs.pairs, s.pairs.train.kept, s.pairs.eval.kept),
        (10, 8, 2)
    );
    let (before, after) = (&s.eval_before, &s.eval_after);
    assert!(
        after["rewards/margins"] > before["rewards/margins"] + 0.1,
        "margins must grow: {before:?} -> {after:?}"
    );
    assert_eq!(after["rewards/accuracies"], 1.0, "{after:?}");
    assert!(s.train_loss_last < s.train_loss_first, "{s:?}");
    assert_eq!(s.adapter_applies_to, "base+sft");
    let lines = metric_lines(done.out.path());
    assert_eq!(lines.len(), 31);
    assert!(lines[0].eval_loss.is_some() && lines[0].loss.is_none());
    for key in [
        "nll_loss",
        "log_odds_ratio",
        "log_odds_chosen",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
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
    assert!(!lines[5].extra.contains_key("eval_nll_loss"));
    // rewards = beta * mean completion log-prob, as TRL's ORPOTrainer defines them.
    let l = &lines[30].extra;
    assert!((l["rewards/chosen"] - 0.5 * l["logps/chosen"]).abs() < 1e-9);
    for key in [
        "eval_accuracy_before",
        "eval_accuracy_after",
        "eval_margin_after",
        "tok_s",
    ] {
        assert!(done.metrics.contains_key(key), "metric {key}");
    }
    // The adapter is PEFT and names the base portably.
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
    [orpo.lora]\nr = 4\nalpha = 8\ndropout = 0.1\n";

#[test]
fn a_killed_run_resumes_to_the_same_adapter() {
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
    assert!(err.contains("stopped after step 5"), "{err}");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(partial.join("checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 4, "the last checkpoint before the crash");
    let resumed = run_in(&fx, RESUMABLE, &partial, Hooks::default()).unwrap();
    assert_eq!(resumed.summary.resumed_from_step, Some(4));
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
    let (la, lb) = (
        metric_lines(whole.out.path()),
        metric_lines(resumed.out.path()),
    );
    let steps: Vec<usize> = lb.iter().map(|r| r.step).collect();
    assert_eq!(steps, (0..=7).collect::<Vec<_>>());
    for (x, y) in la.iter().zip(&lb) {
        assert!(
            (x.loss.unwrap_or(0.0) - y.loss.unwrap_or(0.0)).abs() < 1e-5,
            "{x:?} {y:?}"
        );
        assert_eq!(x.eval_loss.is_some(), y.eval_loss.is_some());
    }
    let margin = |d: &Done| d.summary.eval_after["rewards/margins"];
    assert!((margin(&whole) - margin(&resumed)).abs() < 1e-5);
}

#[test]
fn nan_loss_stops_naming_the_step_and_pairs_and_keeps_the_checkpoint() {
    let fx = fixture(&tool_pairs(8));
    let partial = fx.ws.path().join("nan");
    let err = run_in(
        &fx,
        "max_steps = 6\nsave_every = 1\nbatch_size = 3\ngradient_accumulation = 1\n\
         learning_rate = 1e30\nlr_scheduler = \"constant\"\nwarmup_steps = 0\n",
        &partial,
        Hooks::default(),
    )
    .err()
    .expect("a learning rate of 1e30 must blow up");
    assert!(err.contains("orpo: non-finite"), "{err}");
    let step: usize = err
        .split("at step ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {err}"));
    assert!(step >= 2, "{err}");
    assert!(
        err.contains("train pairs id 0000000000000") && err.contains("pairs.jsonl line"),
        "{err}"
    );
    assert!(
        err.contains(&format!("checkpoint (step {})", step - 1)),
        "{err}"
    );
}

#[test]
fn continuing_sft_trains_the_sft_adapter_itself() {
    let fx = fixture(&tool_pairs(6));
    let done = run(
        &fx,
        "init = \"continue_sft\"\nmax_steps = 2\nbatch_size = 4\nlearning_rate = 1e-2\n",
    );
    assert_eq!(done.summary.adapter_applies_to, "base");
    let sft = adapter_tensors(&fx.sft);
    let orpo = adapter_tensors(done.out.path());
    let mut names: Vec<&String> = sft.keys().collect();
    names.sort();
    let mut ours: Vec<&String> = orpo.keys().collect();
    ours.sort();
    assert_eq!(names, ours, "the sft adapter's shape");
    let moved = sft
        .iter()
        .map(|(n, t)| max_abs_diff(t, &orpo[n]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-6, "training changed it");
    // And with init = "new", the held-out metrics before training are those of base + sft.
    let new = run(&fx, "max_steps = 1\nbatch_size = 4\n");
    let before = |d: &Done| d.summary.eval_before["loss"];
    assert!(
        (before(&new) - before(&done)).abs() < 1e-4,
        "{} {}",
        before(&new),
        before(&done)
    );
}

#[test]
fn too_few_or_unfitting_pairs_are_clear_errors() {
    let fx = fixture(&tool_pairs(1));
    let err = run_in(
        &fx,
        "max_steps = 1\n",
        &fx.ws.path().join("p1"),
        Hooks::default(),
    )
    .err()
    .unwrap();
    assert!(err.contains("at least 2 pairs"), "{err}");
    write_pairs(&fx.score, &[]);
    let err = run_in(
        &fx,
        "max_steps = 1\n",
        &fx.ws.path().join("p0"),
        Hooks::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.contains("score kept 0 pairs; lower score.min_margin"),
        "{err}"
    );
    write_pairs(&fx.score, &tool_pairs(4));
    let err = run_in(
        &fx,
        "max_steps = 1\nmax_seq_len = 4\n",
        &fx.ws.path().join("p4"),
        Hooks::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.contains("none of the 3 train pairs fits `max_seq_len` = 4"),
        "{err}"
    );
}

#[test]
fn show_prints_summary_and_curves() {
    let fx = fixture(&tool_pairs(6));
    let done = run(&fx, "max_steps = 4\nbatch_size = 2\neval_every = 2\n");
    let mut out = Vec::new();
    Orpo::show(done.out.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for needle in [
        "accuracy",
        "margin",
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
fn the_stage_refuses_bad_keys_by_name() {
    let stage = crate::contract::erase::<Orpo>();
    match stage.load_config("[orpo]\nbeta = -1.0\n", "orpo") {
        Err(crate::contract::ConfigProblem::Invalid(issue)) => assert_eq!(issue.key, "beta"),
        other => panic!("{other:?}"),
    }
    assert!(Orpo::STARTER.starts_with("[orpo]"));
    let starter: OrpoStageConfig = pick_table(Orpo::STARTER, "orpo").unwrap();
    config::validate(&starter).unwrap();
}

/// Every error's message shows its cause (a `{{0}}` in a format once printed a literal `{0}`).
#[test]
fn every_error_message_shows_its_cause() {
    let cause = "the disk is on fire";
    let llm = || Box::new(LlmError::Invalid(cause.into()));
    let errors: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(TrainError::Resume {
            stage: "orpo",
            source: Box::new(ResumeError::Restore {
                dir: PathBuf::from("ckpt"),
                source: LlmError::Invalid(cause.into()),
            }),
        }),
        Box::new(TrainError::Checkpoint(CheckpointError::Io {
            path: PathBuf::from("ckpt"),
            source: std::io::Error::other(cause),
        })),
        Box::new(TrainError::Metrics(MetricsError {
            path: PathBuf::from("metrics.jsonl"),
            message: cause.into(),
        })),
        Box::new(TrainError::llm("orpo", "step 3")(LlmError::Invalid(
            cause.into(),
        ))),
        Box::new(PolicyError::Adapters {
            stack: "base + sft adapter".into(),
            source: llm(),
        }),
        Box::new(PairsError::Render {
            line: 3,
            id: "1a2b".into(),
            source: llm(),
        }),
        Box::new(OutputError {
            path: PathBuf::from("out"),
            source: std::io::Error::other(cause),
        }),
    ];
    for e in errors {
        let text = e.to_string();
        assert!(text.contains(cause) && !text.contains("{0}"), "{text}");
    }
}
