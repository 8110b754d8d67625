//! Tests of the eval stage on the tiny model: eval.json holds three models whose NLLs are those
//! of base, base + sft and the merged model, answers.jsonl one line per prompt with every
//! model's scored answer, and report.html is self-contained, escaped and draws the curves of
//! every training instance on the models' paths.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::report::{esc, line_chart, render, series, Series, TrainingLog};
use super::*;
use crate::contract::pick_table;
use crate::llm::TargetModule;
use crate::orpo::artifact as orpo_artifact;
use crate::progress::NullProgress;
use crate::scoring::ScorersConfig;
use crate::testkit::stage_artifact;

struct Fixture {
    ws: tempfile::TempDir,
    dirs: Dirs,
    inputs: Inputs,
}

/// The upstream artifacts of the fixture.
struct Dirs {
    ingest: PathBuf,
    model: PathBuf,
    sft: PathBuf,
    orpo: PathBuf,
}

const SFT_ADAPTER_DIR: &str = crate::sft::artifact::ADAPTER_DIR;

/// A copy of `base` with the PEFT adapter in `dir` attached.
fn with_adapter(base: &LlamaModel, dir: &Path) -> Result<LlamaModel, LlmError> {
    let adapter = crate::llm::PeftAdapter::load(dir, base.device())?;
    let mut model = base.clone();
    adapter.attach_to(&mut model)?;
    Ok(model)
}

fn row(i: usize, prompt: &str, response: &str) -> ingest::Example {
    ingest::Example {
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

fn stage_dir(ws: &Path, name: &str) -> PathBuf {
    let dir = ws.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn random_adapter(model: &LlamaModel, seed: u64, modules: Vec<TargetModule>, dir: &Path) {
    crate::llm::testing::write_random_adapter(model, seed, 0.2, modules, dir);
}

const SFT_METRICS: &str = r#"{"step":0,"epoch":0.0,"eval_loss":5.1,"eval_perplexity":164.0}
{"step":1,"epoch":0.1,"loss":5.0,"lr":0.001}
{"step":2,"epoch":0.2,"loss":4.2,"lr":0.001,"eval_loss":4.4}
"#;
const ORPO_METRICS: &str = r#"{"step":1,"epoch":0.5,"loss":3.0,"rewards/accuracies":0.5,"rewards/margins":0.01}
{"step":2,"epoch":1.0,"loss":2.5,"rewards/accuracies":0.75,"rewards/margins":0.05,"eval_loss":2.7,"eval_rewards/accuracies":0.6,"eval_rewards/margins":0.03}
"#;

/// Every upstream artifact eval reads, built from the tiny model and random adapters.
fn fixture() -> Fixture {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    crate::testkit::write_tiny_model(&root.join("tiny"), 5).unwrap();
    let model = stage_artifact("model", "[model]\npath = \"tiny\"\n", root, &[]);

    let ingest = stage_dir(root, "ingest-out");
    let mut val = [
        row(0, "what is ls?", "ls lists files"),
        row(1, "what is <b>cat</b> & \"tac\"?", "cat prints <files>"),
        row(2, "what is grep?", "grep searches text"),
        row(3, "what is tar?", "tar packs archives"),
        row(4, "what is ssh?", "ssh is a remote shell"),
    ];
    for (i, r) in val.iter_mut().enumerate() {
        r.category = Some(if i % 2 == 0 { "files" } else { "net" }.to_string());
    }
    let text: String = val
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(ingest.join(VAL_FILE), text).unwrap();

    let base = BaseModel::load(&model, root, &Device::Cpu).unwrap().model;
    let sft = stage_dir(root, "sft-out");
    random_adapter(
        &base,
        1,
        TargetModule::ALL.to_vec(),
        &sft.join(SFT_ADAPTER_DIR),
    );
    std::fs::write(sft.join(SFT_METRICS_FILE), SFT_METRICS).unwrap();
    let orpo = stage_dir(root, "orpo-out");
    random_adapter(
        &base,
        2,
        vec![TargetModule::VProj, TargetModule::UpProj],
        &orpo.join(orpo_artifact::ADAPTER_DIR),
    );
    std::fs::write(orpo.join(ORPO_METRICS_FILE), ORPO_METRICS).unwrap();
    let applies_to = serde_json::json!({
        orpo_artifact::APPLIES_TO_KEY: orpo_artifact::APPLIES_TO_BASE_SFT
    });
    std::fs::write(
        orpo.join(orpo_artifact::SUMMARY_FILE),
        applies_to.to_string(),
    )
    .unwrap();

    // Merged as the engine runs merge: sft's adapter, then orpo's, exported in f32.
    let merged = stage_artifact(
        "merge",
        "[merge]\ndtype = \"f32\"\n",
        root,
        &[("model", &model), ("sft", &sft), ("orpo", &orpo)],
    );

    let score = stage_dir(root, "score-out");
    let scorers = ScorersConfig::default().effective();
    std::fs::write(
        score.join(SCORERS_FILE),
        serde_json::to_string(&scorers).unwrap(),
    )
    .unwrap();
    let stack = |adapters: &[(&str, &Path)]| {
        ModelSource::Stack(ModelStack {
            base: model.clone(),
            adapters: adapters
                .iter()
                .map(|(name, dir)| crate::base::StackAdapter {
                    instance: name.to_string(),
                    kind: name.to_string(),
                    dir: dir.join(SFT_ADAPTER_DIR),
                })
                .collect(),
            replaced: Vec::new(),
        })
    };
    let inputs = Inputs {
        data: ingest.clone(),
        models: vec![
            EvalModel {
                name: "base".into(),
                source: stack(&[]),
            },
            EvalModel {
                name: "sft".into(),
                source: stack(&[("sft", &sft)]),
            },
            EvalModel {
                name: "final".into(),
                source: ModelSource::Merged(merged.join(MERGED_MODEL_DIR)),
            },
        ],
        scorers: Some(score),
        trained: vec![
            Link::new("sft", "sft", &sft),
            Link::new("orpo", "orpo", &orpo),
        ],
        seed: 11,
    };
    Fixture {
        inputs,
        dirs: Dirs {
            ingest,
            model,
            sft,
            orpo,
        },
        ws,
    }
}

fn config(toml: &str) -> EvalConfig {
    let cfg: EvalConfig = pick_table(&format!("[eval]\n{toml}"), "eval").unwrap();
    Eval::validate(&cfg).unwrap();
    cfg
}

/// The NLL of `model` on the fixture's val rows, computed directly.
fn nll_of(fx: &Fixture, model: &LlamaModel, cfg: &EvalConfig, limit: usize) -> f64 {
    let base = BaseModel::load(&fx.dirs.model, fx.ws.path(), &Device::Cpu).unwrap();
    let val = ingest::read_examples(&fx.dirs.ingest.join(VAL_FILE)).unwrap();
    let val = ingest::seeded_sample(val, Some(limit), fx.inputs.seed);
    let rows = render_rows(&base, val, cfg.max_seq_len).unwrap();
    let batches = nll_batches(&rows, 2, base.info.pad_token_id, &Device::Cpu).unwrap();
    completion_loss(model, &batches).unwrap().loss
}

#[test]
fn eval_json_answers_and_report_on_the_tiny_model() {
    let fx = fixture();
    let cfg = config("limit = 4\nmax_new_tokens = 6\nbatch_size = 3\nsamples = 4\n");
    let out = tempfile::tempdir().unwrap();
    let results = evaluate(&cfg, &fx.inputs, fx.ws.path(), out.path(), &NullProgress).unwrap();

    let json: EvalResults =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(EVAL_FILE)).unwrap())
            .unwrap();
    // The file is the results as written (parsing may round a float's last bit differently).
    assert_eq!(
        std::fs::read_to_string(out.path().join(EVAL_FILE)).unwrap(),
        serde_json::to_string_pretty(&results).unwrap() + "\n"
    );
    assert_eq!(json.prompts, 4);
    let names: Vec<&str> = json.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["base", "sft", "final"]);
    for m in &json.models {
        assert!((0.0..=1.0).contains(&m.score), "{m:?}");
        assert!(m.scorers.contains_key("reference"), "{m:?}");
        assert!(m.val_nll.is_finite() && m.val_nll > 0.0, "{m:?}");
        assert!((m.val_ppl - m.val_nll.exp()).abs() < 1e-9 * m.val_ppl);
        assert_eq!(m.finish_reasons.values().sum::<usize>(), 4);
        assert!(m.mean_answer_tokens > 0.0 && m.mean_answer_tokens <= 6.0);
    }
    assert_eq!(json.win_rates.len(), 3);
    for w in &json.win_rates {
        assert_eq!(w.a_wins + w.b_wins + w.ties, 4);
    }

    // Each row's NLL is that of the model it names.
    let base = BaseModel::load(&fx.dirs.model, fx.ws.path(), &Device::Cpu)
        .unwrap()
        .model;
    let sft = with_adapter(&base, &fx.dirs.sft.join(SFT_ADAPTER_DIR)).unwrap();
    // The final model: sft merged, orpo on top (what merge exports).
    let mut sft_merged = base.clone();
    let sft_adapter =
        crate::llm::PeftAdapter::load(&fx.dirs.sft.join(SFT_ADAPTER_DIR), &Device::Cpu).unwrap();
    crate::llm::merge_adapters_into_model(&mut sft_merged, &[sft_adapter]).unwrap();
    let fin = with_adapter(&sft_merged, &fx.dirs.orpo.join(orpo_artifact::ADAPTER_DIR)).unwrap();
    for (m, model) in json.models.iter().zip([&base, &sft, &fin]) {
        let want = nll_of(&fx, model, &cfg, 4);
        assert!(
            (m.val_nll - want).abs() < 1e-4,
            "{}: {} vs {want}",
            m.name,
            m.val_nll
        );
    }
    assert!((json.models[0].val_nll - json.models[2].val_nll).abs() > 1e-3);

    let lines: Vec<AnswerRecord> = std::fs::read_to_string(out.path().join(ANSWERS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|r| r.answers.len() == 3));
    let mean_final = lines
        .iter()
        .map(|r| r.answers["final"].scores.combined)
        .sum::<f64>()
        / 4.0;
    assert!((mean_final - json.models[2].score).abs() < 1e-12);

    // `limit` is a seeded sample of the val rows, and the scores break down by category.
    let sampled = ingest::seeded_sample(
        ingest::read_examples(&fx.dirs.ingest.join(VAL_FILE)).unwrap(),
        Some(4),
        fx.inputs.seed,
    );
    let mut want_ids: Vec<&str> = sampled.iter().map(|r| r.id.as_str()).collect();
    let mut got_ids: Vec<&str> = lines.iter().map(|r| r.id.as_str()).collect();
    want_ids.sort();
    got_ids.sort();
    assert_eq!(got_ids, want_ids);
    let per_category: usize = json.categories.values().sum();
    assert_eq!(per_category, 4);
    for m in &json.models {
        for c in json.categories.keys() {
            let scores: Vec<f64> = lines
                .iter()
                .filter(|r| {
                    sampled
                        .iter()
                        .any(|s| s.id == r.id && s.category.as_deref() == Some(c.as_str()))
                })
                .map(|r| r.answers[&m.name].scores.combined)
                .collect();
            let want = scores.iter().sum::<f64>() / scores.len() as f64;
            assert!((m.categories[c] - want).abs() < 1e-12, "{}: {c}", m.name);
        }
    }

    // The fixture's seed samples the row whose prompt needs escaping.
    assert!(sampled.iter().any(|r| r.prompt.contains("<b>")));
    let html = std::fs::read_to_string(out.path().join(REPORT_FILE)).unwrap();
    assert!(html.contains("what is &lt;b&gt;cat&lt;/b&gt; &amp; &quot;tac&quot;?"));
    assert!(!html.contains("<b>cat</b>"));
    assert!(html.matches("<svg").count() == 4, "four charts");
    assert!(html.contains("<polyline"), "the curves are drawn");
    assert!(!html.contains("<script") && !html.contains("http://cdn"));
    assert!(html.contains("ORPO reward margin"));
    assert!(html.contains("Score by category"));

    let mut shown = Vec::new();
    Eval::show(out.path(), &mut shown).unwrap();
    let shown = String::from_utf8(shown).unwrap();
    for needle in [
        "base",
        "sft",
        "final",
        "val NLL",
        "win rates",
        "score by category",
        "report.html",
    ] {
        assert!(shown.contains(needle), "`{needle}` missing:\n{shown}");
    }
}

#[test]
fn bad_eval_keys_are_refused_by_name() {
    let cfg: EvalConfig = pick_table("[eval]\nlimit = 0\n", "eval").unwrap();
    assert_eq!(Eval::validate(&cfg).unwrap_err().key, "limit");
    let cfg: EvalConfig = pick_table("[eval]\nbatch_size = 0\n", "eval").unwrap();
    assert_eq!(Eval::validate(&cfg).unwrap_err().key, "batch_size");
    let err = pick_table::<EvalConfig>("[eval]\nlimt = 3\n", "eval").unwrap_err();
    assert!(err.message().contains("limt"), "{err}");
}

#[test]
fn charts_escape_names_and_survive_empty_or_flat_series() {
    let svg = line_chart(
        "a <b> & c",
        &[Series {
            name: "x\"y".into(),
            color: "#000",
            points: vec![(1.0, 2.0), (2.0, 2.0)],
        }],
    );
    assert!(svg.contains("a &lt;b&gt; &amp; c") && svg.contains("x&quot;y"));
    assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    let empty = line_chart("empty", &[]);
    assert!(empty.contains("no data"));
    assert_eq!(esc("<&>\"'"), "&lt;&amp;&gt;&quot;&#39;");
    let lines = vec![
        serde_json::json!({"step": 3, "loss": 1.5}),
        serde_json::json!({"step": 4}),
    ];
    assert_eq!(series(&lines, "loss"), vec![(3.0, 1.5)]);
}

fn log(instance: &str, kind: &str, metrics: &str) -> TrainingLog {
    TrainingLog {
        instance: instance.into(),
        kind: kind.into(),
        lines: metrics
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    }
}

#[test]
fn the_report_draws_every_training_instance_in_order() {
    let results = EvalResults {
        prompts: 0,
        nll_rows_dropped: 0,
        max_new_tokens: 8,
        models: Vec::new(),
        win_rates: Vec::new(),
        seconds: 0.0,
        categories: Default::default(),
    };
    let logs = [
        log("sft_lo", "sft", SFT_METRICS),
        log("sft<hi>", "sft", SFT_METRICS),
        log("orpo", "orpo", ORPO_METRICS),
        log("dpo_b", "dpo", ORPO_METRICS),
    ];
    let html = render("t", &results, &logs, &[], 0);
    let titles = [
        "sft_lo: SFT loss",
        "sft&lt;hi&gt;: SFT loss",
        "ORPO loss",
        "ORPO reward accuracy",
        "ORPO reward margin",
        "dpo_b: DPO loss",
        "dpo_b: DPO reward accuracy",
        "dpo_b: DPO reward margin",
    ];
    let figures: Vec<&str> = html.split("<figure>").skip(1).collect();
    assert_eq!(figures.len(), titles.len(), "{html}");
    for (figure, title) in figures.iter().zip(titles) {
        assert!(
            figure.contains(&format!("class=\"title\">{title}</text>")),
            "{title}: {figure}"
        );
        // Each log's own points: sft's train and eval loss, a preference stage's train curve
        // (its eval has one point, a dot).
        let curves = if title.contains("SFT") { 2 } else { 1 };
        assert_eq!(figure.matches("<polyline").count(), curves, "{title}");
    }
    assert!(!html.contains("sft<hi>"));

    let none = render("t", &results, &[], &[], 0);
    assert!(!none.contains("<svg") && !none.contains("Training"));
}

#[test]
fn trained_instances_are_listed_once_from_the_base_up() {
    let link = |name: &str, kind: &str| Link::new(name, kind, Path::new(name));
    let chains = [
        vec![link("model", "model")],
        vec![link("sft_hi", "sft"), link("model", "model")],
        vec![
            link("merge", "merge"),
            link("dpo", "dpo"),
            link("orpo", "orpo"),
            link("sft_lo", "sft"),
            link("model", "model"),
        ],
        vec![
            link("orpo", "orpo"),
            link("sft_lo", "sft"),
            link("model", "model"),
        ],
    ];
    let names: Vec<String> = trained_links(&chains)
        .into_iter()
        .map(|l| l.instance)
        .collect();
    assert_eq!(names, ["sft_hi", "sft_lo", "orpo", "dpo"]);
}
