//! Tests of the sft stage on the tiny model of `testkit`: it learns, resumes exactly, guards
//! against NaN, writes a loadable PEFT adapter, and never builds a batch without targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::contract::pick_table;
use crate::ingest::artifact::Example as Row;
use crate::llm::testing::micro::max_abs_diff;
use crate::llm::PeftAdapter;
use crate::progress::NullProgress;
use crate::testkit::stage_artifact;

/// A workspace with the tiny model, a committed `model` artifact and an ingest artifact.
struct Fixture {
    ws: tempfile::TempDir,
    ingest: PathBuf,
    model: PathBuf,
}

fn row(i: usize, prompt: &str, response: &str) -> Row {
    Row {
        id: format!("{i:016x}"),
        prompt: prompt.to_string(),
        response: response.to_string(),
        system: None,
        category: None,
        source_row: i as u64 + 1,
        rejected: None,
        history: Vec::new(),
    }
}

fn qa_rows(n: usize) -> Vec<Row> {
    let words = [
        "ls", "cat", "grep", "sed", "awk", "cp", "mv", "rm", "tar", "ssh", "df", "du",
    ];
    (0..n)
        .map(|i| {
            let w = words[i % words.len()];
            row(i, &format!("what is {w}?"), &format!("{w} is tool {i}"))
        })
        .collect()
}

fn write_rows(path: &Path, rows: &[Row]) {
    let text: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

fn fixture(train: &[Row], val: &[Row]) -> Fixture {
    let ws = tempfile::tempdir().unwrap();
    crate::testkit::write_tiny_model(&ws.path().join("tiny"), 5).unwrap();
    let ingest = ws.path().join("ingest-out");
    std::fs::create_dir_all(&ingest).unwrap();
    write_rows(&ingest.join(TRAIN_FILE), train);
    write_rows(&ingest.join(VAL_FILE), val);
    let model = stage_artifact("model", "[model]\npath = \"tiny\"\n", ws.path(), &[]);
    Fixture { ws, ingest, model }
}

/// What a finished run left.
struct Done {
    out: tempfile::TempDir,
    summary: SftSummary,
    metrics: serde_json::Map<String, serde_json::Value>,
}

fn config(toml: &str) -> SftConfig {
    let cfg: SftConfig = pick_table(&format!("[sft]\n{toml}"), "sft").unwrap();
    config::validate(&cfg).unwrap();
    cfg
}

/// Runs sft in `fx` with its checkpoints in `partial`.
fn run_in(fx: &Fixture, toml: &str, partial: &Path, hooks: Hooks) -> Result<Done, String> {
    let cfg = config(toml);
    let out = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([
        ("ingest".to_string(), fx.ingest.clone()),
        ("model".to_string(), fx.model.clone()),
    ]);
    let mut cx = StageContext::new(
        fx.ws.path().to_path_buf(),
        out.path().to_path_buf(),
        partial.to_path_buf(),
        crate::testkit::default_inputs("sft", &inputs),
        7,
        &NullProgress,
    );
    run_sft(&cfg, &mut cx, hooks).map_err(|e| e.to_string())?;
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
fn overfits_eight_rows() {
    let rows = qa_rows(8);
    let fx = fixture(&rows, &rows);
    let done = run(
        &fx,
        "max_steps = 80\nlearning_rate = 5e-3\nlr_scheduler = \"constant\"\nwarmup_steps = 0\n\
         batch_size = 8\ngradient_accumulation = 1\nsamples = 2\n\
         [sft.lora]\nr = 16\nalpha = 32\ndropout = 0.0\n",
    );
    let s = &done.summary;
    assert!(
        s.train_loss_first > 3.0,
        "a random model starts far above 0: {s:?}"
    );
    assert!(s.train_loss_last < 0.1, "the loop must learn: {s:?}");
    assert!(s.eval_loss_after < 0.1 && s.eval_loss_before > 3.0, "{s:?}");
    let samples: Vec<Sample> = std::fs::read_to_string(done.out.path().join(SAMPLES_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 2);
    for sample in &samples {
        assert_eq!(
            sample.after, sample.reference,
            "greedy recalls the memorised answer"
        );
        assert_ne!(sample.before, sample.reference);
    }
    let lines = metric_lines(done.out.path());
    assert_eq!(lines.len(), 81);
    assert_eq!(lines[0].step, 0);
    assert!(lines[0].eval_loss.is_some() && lines[0].loss.is_none());
    let last = lines.last().unwrap();
    assert_eq!(last.step, 80);
    assert!(last.eval_loss.is_some() && last.grad_norm.is_some() && last.tokens_per_s.is_some());
    assert!((last.epoch - 80.0).abs() < 1e-9);
    for key in [
        "eval_loss_before",
        "eval_loss_after",
        "train_loss",
        "tok_s",
        "peak_rss_mb",
    ] {
        assert!(done.metrics.contains_key(key), "metric {key}");
    }
}

/// The config of the resume test: dropout and NEFTune on, so every RNG stream is exercised,
/// and accumulation over micro-batches of 2.
const RESUMABLE: &str =
    "max_steps = 7\nsave_every = 2\nbatch_size = 2\ngradient_accumulation = 2\n\
    learning_rate = 5e-3\nneftune_alpha = 5.0\nwarmup_steps = 2\neval_every = 3\nsamples = 1\n\
    [sft.lora]\nr = 4\nalpha = 8\ndropout = 0.1\n";

#[test]
fn a_killed_run_resumes_to_the_same_adapter() {
    let fx = fixture(&qa_rows(10), &qa_rows(3));
    let whole = run(&fx, RESUMABLE);

    let partial = fx.ws.path().join("crashing");
    let stop = Hooks {
        stop_after: Some(5),
    };
    let err = run_in(&fx, RESUMABLE, &partial, stop).err().unwrap();
    assert!(err.contains("stopped after step 5"), "{err}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(partial.join("checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 4, "the last checkpoint before the crash");

    let resumed = run_in(&fx, RESUMABLE, &partial, Hooks::default()).unwrap();
    assert_eq!(resumed.summary.resumed_from_step, Some(4));
    assert_eq!(whole.summary.resumed_from_step, None);
    let (a, b) = (
        adapter_tensors(whole.out.path()),
        adapter_tensors(resumed.out.path()),
    );
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for (name, t) in &a {
        worst = worst.max(max_abs_diff(t, &b[name]));
    }
    assert!(worst < 1e-5, "resumed adapter differs by {worst}");
    assert!(a.values().any(|t| t
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        > 0.0));
    // The log has every step once, and the resumed steps match the uninterrupted ones.
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
    assert!((whole.summary.eval_loss_after - resumed.summary.eval_loss_after).abs() < 1e-5);
    let samples = |d: &Done| std::fs::read_to_string(d.out.path().join(SAMPLES_FILE)).unwrap();
    assert_eq!(samples(&whole), samples(&resumed));
}

/// Issue 16: `-s sft.max_steps=1000000000000` aborted with "memory allocation of
/// 32000000000000 bytes failed" (and 3e8 steps exhausted memory) before training started: the
/// batching plan was built up front. It trains now, one lazily planned step after another.
#[test]
fn an_enormous_max_steps_trains_without_planning_every_step() {
    let fx = fixture(&qa_rows(6), &qa_rows(2));
    let partial = fx.ws.path().join("huge");
    let stop = Hooks {
        stop_after: Some(2),
    };
    let err = run_in(
        &fx,
        "max_steps = 1000000000000\nsave_every = 1000\nbatch_size = 2\nsamples = 0\n",
        &partial,
        stop,
    )
    .err()
    .unwrap();
    assert!(err.contains("stopped after step 2"), "{err}");
}

#[test]
fn a_checkpoint_of_other_settings_is_not_resumed() {
    let fx = fixture(&qa_rows(6), &qa_rows(2));
    let partial = fx.ws.path().join("shared");
    let stop = Hooks {
        stop_after: Some(2),
    };
    let err = run_in(
        &fx,
        "max_steps = 3\nsave_every = 1\nbatch_size = 2\nsamples = 0\n",
        &partial,
        stop,
    );
    assert!(err.is_err());
    let done = run_in(
        &fx,
        "max_steps = 3\nsave_every = 1\nbatch_size = 2\nsamples = 0\nlearning_rate = 1e-3\n",
        &partial,
        Hooks::default(),
    )
    .unwrap();
    assert_eq!(done.summary.resumed_from_step, None);
}

#[test]
fn nan_loss_stops_naming_the_step_and_rows_and_keeps_the_checkpoint() {
    let fx = fixture(&qa_rows(6), &qa_rows(2));
    let partial = fx.ws.path().join("nan");
    let err = run_in(
        &fx,
        "max_steps = 6\nsave_every = 1\nbatch_size = 3\nlearning_rate = 1e30\n\
         lr_scheduler = \"constant\"\nwarmup_steps = 0\nsamples = 0\n",
        &partial,
        Hooks::default(),
    )
    .err()
    .expect("a learning rate of 1e30 must blow up");
    assert!(err.contains("non-finite"), "{err}");
    let step: usize = err
        .split("at step ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {err}"));
    assert!(step >= 2, "{err}");
    assert!(
        err.contains("source row") && err.contains("id 0000000000000"),
        "{err}"
    );
    assert!(
        err.contains(&format!("checkpoint (step {})", step - 1)),
        "{err}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(partial.join("checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], step - 1);
}

#[test]
fn the_adapter_loads_back_in_peft_format() {
    let fx = fixture(&qa_rows(6), &qa_rows(3));
    let done = run(
        &fx,
        "max_steps = 4\nbatch_size = 3\nlearning_rate = 1e-2\nsamples = 0\n\
         [sft.lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\n",
    );
    let dir = done.out.path().join(ADAPTER_DIR);
    let adapter = PeftAdapter::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        adapter.config.base_model_name_or_path.as_deref(),
        Some("tiny")
    );
    assert_eq!((adapter.config.r, adapter.config.lora_alpha), (4, 8.0));
    assert_eq!(adapter.weights.len(), 2 * 3, "2 layers x 3 modules");
    assert!(adapter_tensors(done.out.path())
        .keys()
        .all(|k| k.starts_with("base_model.model.model.layers.") && k.ends_with(".weight")));

    // Every field we write is one PEFT writes.
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    let fixture_path = crate::llm::testing::smollm2_fixture("peft_adapter/adapter_config.json");
    let peft: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_path).unwrap()).unwrap();
    for key in ours.as_object().unwrap().keys() {
        assert!(peft.get(key).is_some(), "`{key}` is not a PEFT field");
    }

    // Attached to a fresh base, it gives the evaluation the run reported.
    let base = BaseModel::load(&fx.model, fx.ws.path(), &Device::Cpu).unwrap();
    let val = qa_rows(3);
    let settings = config("").resolve();
    let (rows, _) = data::encode_split(
        &base,
        &val,
        settings.max_seq_len,
        settings.overlength,
        "val",
    )
    .unwrap();
    let mut model = base.model;
    adapter.attach_to(&mut model).unwrap();
    let batches = eval_batches(&rows, 3, base.info.pad_token_id, &Device::Cpu).unwrap();
    let loss = completion_loss(&model, &batches).unwrap().loss;
    assert!(
        (loss - done.summary.eval_loss_after).abs() < 1e-5,
        "{loss} vs {:?}",
        done.summary
    );
}

#[test]
fn over_length_rows_are_truncated_or_dropped_and_counted() {
    let long_prompt = "why ".repeat(60);
    let long_answer = "because ".repeat(40);
    let mut train = qa_rows(3);
    train.push(row(10, &long_prompt, "short answer"));
    train.push(row(11, "short?", &long_answer));
    let fx = fixture(&train, &qa_rows(2));
    let done = run(
        &fx,
        "max_seq_len = 96\nmax_steps = 2\nbatch_size = 5\nsamples = 0\n",
    );
    let c = done.summary.train;
    assert_eq!((c.rows, c.kept, c.truncated), (5, 4, 1), "{c:?}");
    assert_eq!(
        (c.dropped_overlength, c.dropped_completion_too_long),
        (0, 1),
        "{c:?}"
    );
    // The truncated row still trains on its whole completion: every step had targets.
    assert!(done.summary.target_tokens > 0);

    let dropped = run(
        &fx,
        "max_seq_len = 96\noverlength = \"drop\"\nmax_steps = 1\nsamples = 0\n",
    );
    assert_eq!(dropped.summary.train.dropped_overlength, 2);
    assert_eq!(dropped.summary.train.kept, 3);

    let err = run_in(
        &fx,
        "max_seq_len = 8\noverlength = \"drop\"\nmax_steps = 1\n",
        &fx.ws.path().join("none"),
        Hooks::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.contains("none of the 5 rows of train.jsonl fits `max_seq_len` = 8")
            && err.contains("truncate_prompt"),
        "{err}"
    );
}

#[test]
fn show_prints_summary_curve_and_samples() {
    let fx = fixture(&qa_rows(6), &qa_rows(2));
    let done = run(
        &fx,
        "max_steps = 5\nbatch_size = 3\neval_every = 2\nsamples = 1\n",
    );
    let mut out = Vec::new();
    Sft::show(done.out.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for needle in [
        "eval loss",
        "perplexity",
        "tok/s",
        "loss curve",
        "samples",
        "reference",
        "after",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[test]
fn the_stage_refuses_bad_keys_by_name() {
    let stage = crate::contract::erase::<Sft>();
    match stage.load_config("[sft]\n[sft.lora]\nr = 0\n", "sft") {
        Err(crate::contract::ConfigProblem::Invalid(issue)) => assert_eq!(issue.key, "lora.r"),
        other => panic!("{other:?}"),
    }
    let loaded = stage
        .load_config("[sft]\npreset = \"fast\"\n", "sft")
        .unwrap();
    assert_eq!(loaded.canonical["lora"]["r"], 8);
    assert!(Sft::STARTER.starts_with("[sft]"));
    let starter: SftConfig = pick_table(Sft::STARTER, "sft").unwrap();
    config::validate(&starter).unwrap();
}

/// Every error's message shows its cause (a `{{0}}` in a format once printed a literal `{0}`).
#[test]
fn every_error_message_shows_its_cause() {
    let cause = "the disk is on fire";
    let errors = [
        SftError::Train(TrainError::Resume {
            stage: "sft",
            source: Box::new(ResumeError::Restore {
                dir: PathBuf::from("ckpt"),
                source: LlmError::Invalid(cause.into()),
            }),
        }),
        SftError::Llm {
            context: "step 3".into(),
            source: Box::new(LlmError::Invalid(cause.into())),
        },
        SftError::Render {
            file: "train.jsonl".into(),
            id: "1a2b".into(),
            source_row: 3,
            source: Box::new(LlmError::Invalid(cause.into())),
        },
        SftError::Write {
            path: PathBuf::from("out"),
            source: std::io::Error::other(cause),
        },
    ];
    for e in errors {
        let text = e.to_string();
        assert!(text.contains(cause) && !text.contains("{0}"), "{text}");
    }
    let resume = SftError::Train(TrainError::Resume {
        stage: "sft",
        source: Box::new(ResumeError::Restore {
            dir: PathBuf::from("ckpt"),
            source: LlmError::Invalid(cause.into()),
        }),
    });
    assert!(
        resume.to_string().starts_with("sft: cannot restore"),
        "{resume}"
    );
}
