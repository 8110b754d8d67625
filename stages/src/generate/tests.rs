//! Tests of the generate stage on the tiny model of `testkit` with a one-step sft adapter:
//! prompt selection, seeding, distinct candidates, reproducibility and exact resume. The
//! random tiny model is near-certain of its next token, so sampling runs hot (temperature 4)
//! for its candidates to differ.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::contract::pick_table;
use crate::ingest::artifact::Example as Row;
use crate::progress::NullProgress;
use crate::testkit::stage_artifact;

fn row(i: usize, prompt: &str, response: &str) -> Row {
    Row {
        id: format!("{i:016x}"),
        prompt: prompt.to_string(),
        response: response.to_string(),
        system: i.is_multiple_of(3).then(|| "Be brief.".to_string()),
        category: None,
        source_row: i as u64 + 1,
        rejected: None,
        history: Vec::new(),
    }
}

fn rows(n: usize) -> Vec<Row> {
    let words = ["ls", "cat", "grep", "sed", "awk", "cp", "mv", "rm", "tar"];
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

/// A workspace with committed-like ingest, model and sft (one step) artifacts.
struct Fixture {
    ws: tempfile::TempDir,
    inputs: BTreeMap<String, PathBuf>,
}

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
        crate::testkit::default_inputs("generate", &inputs),
        7,
        &NullProgress,
    )
}

fn fixture() -> Fixture {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    crate::testkit::write_tiny_model(&root.join("tiny"), 5).unwrap();
    let ingest = root.join("ingest-out");
    std::fs::create_dir_all(&ingest).unwrap();
    let all = rows(9);
    write_rows(&ingest.join(TRAIN_FILE), &all[..7]);
    write_rows(&ingest.join(VAL_FILE), &all[7..]);
    let model = stage_artifact("model", "[model]\npath = \"tiny\"\n", root, &[]);
    let sft = stage_artifact(
        "sft",
        "[sft]\nmax_steps = 1\nbatch_size = 2\nmax_seq_len = 96\nsamples = 0\n[sft.lora]\nr = 2\nalpha = 4\n",
        root,
        &[("ingest", &ingest), ("model", &model)],
    );
    let mut inputs = BTreeMap::from([("ingest".to_string(), ingest), ("model".to_string(), model)]);
    inputs.insert("sft".to_string(), sft);
    Fixture { ws, inputs }
}

fn config(toml: &str) -> GenerateConfig {
    let cfg: GenerateConfig = pick_table(&format!("[generate]\n{toml}"), "generate").unwrap();
    config::validate(&cfg).unwrap();
    cfg
}

/// Runs generate; returns the output directory and the candidates file's bytes.
fn run_in(
    fx: &Fixture,
    toml: &str,
    partial: &Path,
    hooks: Hooks,
) -> Result<(tempfile::TempDir, String), String> {
    let out = tempfile::tempdir().unwrap();
    let mut cx = context(fx.ws.path(), out.path(), partial, fx.inputs.clone());
    run_generate(&config(toml), &mut cx, hooks).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(out.path().join(CANDIDATES_FILE)).unwrap();
    Ok((out, text))
}

fn summary(dir: &Path) -> GenerateSummary {
    serde_json::from_str(&std::fs::read_to_string(dir.join(SUMMARY_FILE)).unwrap()).unwrap()
}

const SMALL: &str = "candidates = 3\nmax_new_tokens = 6\nbatch_size = 4\ncheckpoint_every = 2\ntemperature = 4.0\ntop_k = 0\n";

#[test]
fn limit_takes_a_seeded_sample_that_grows_as_a_superset() {
    let all = rows(20);
    let ids = |v: &[Row]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&select(all.clone(), None, 1)),
        ids(&all),
        "no limit: file order"
    );
    let five = select(all.clone(), Some(5), 1);
    assert_eq!(five.len(), 5);
    assert_eq!(
        ids(&select(all.clone(), Some(5), 1)),
        ids(&five),
        "same seed, same sample"
    );
    assert_ne!(
        ids(&select(all.clone(), Some(5), 2)),
        ids(&five),
        "seed changes the sample"
    );
    assert_ne!(ids(&five), ids(&all[..5]), "a sample, not the first rows");
    let eight = select(all.clone(), Some(8), 1);
    assert_eq!(
        ids(&eight[..5]),
        ids(&five),
        "a larger limit keeps the smaller sample"
    );
    assert_eq!(select(all, Some(50), 1).len(), 20);
}

#[test]
fn prompt_seeds_depend_on_seed_and_id_only() {
    assert_eq!(prompt_seed(1, "a"), prompt_seed(1, "a"));
    assert_ne!(prompt_seed(1, "a"), prompt_seed(2, "a"));
    assert_ne!(prompt_seed(1, "a"), prompt_seed(1, "b"));
}

#[test]
fn bad_settings_are_refused_by_key() {
    let issue = |toml: &str| {
        let cfg: GenerateConfig = pick_table(&format!("[generate]\n{toml}"), "generate").unwrap();
        config::validate(&cfg).unwrap_err().key
    };
    assert_eq!(issue("temperature = 0.0"), "temperature");
    assert!(config::validate(
        &pick_table(
            "[generate]\ntemperature = 0.0\ncandidates = 1\n",
            "generate"
        )
        .unwrap()
    )
    .is_ok());
    assert_eq!(issue("candidates = 0"), "candidates");
    assert_eq!(issue("limit = 0"), "limit");
    assert_eq!(issue("batch_size = 0"), "batch_size");
    assert_eq!(issue("top_p = 1.5"), "top_p");
    assert_eq!(issue("repetition_penalty = 0.0"), "repetition_penalty");
    assert_eq!(issue("stop = [\"\"]"), "stop");
    let err = pick_table::<GenerateConfig>("[generate]\ncandidate = 2\n", "generate").unwrap_err();
    assert!(err.message().contains("unknown field `candidate`"), "{err}");
    let err =
        pick_table::<GenerateConfig>("[generate]\nsplit = \"test\"\n", "generate").unwrap_err();
    assert!(err.message().contains("unknown variant `test`"), "{err}");
}

#[test]
fn writes_distinct_seeded_candidates_reproducibly_and_resumes_exactly() {
    let fx = fixture();
    let toml = format!("{SMALL}split = \"both\"\nlimit = 5\n");
    let (out, first) = run_in(&fx, &toml, &fx.ws.path().join("p1"), Hooks::default()).unwrap();
    let records: Vec<CandidateRecord> = read_candidates(&out.path().join(CANDIDATES_FILE)).unwrap();
    assert_eq!(records.len(), 5);
    let sample = select(rows(9), Some(5), 7);
    for (r, want) in records.iter().zip(&sample) {
        assert_eq!(r.id, want.id, "prompts in sample order");
        assert_eq!(r.reference, want.response);
        assert_eq!(r.system, want.system);
        assert_eq!(r.candidates.len(), 3);
        for c in &r.candidates {
            assert!(c.tokens >= 1 && c.tokens <= 6, "{c:?}");
            assert!(c.mean_logprob.is_finite() && c.mean_logprob <= 0.0, "{c:?}");
        }
        let mut texts: Vec<&str> = r.candidates.iter().map(|c| c.text.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(
            texts.len(),
            3,
            "sampled candidates of one prompt differ: {r:?}"
        );
    }
    let s = summary(out.path());
    assert_eq!((s.prompts, s.candidates), (5, 15));
    assert_eq!(
        s.tokens,
        records
            .iter()
            .flat_map(|r| &r.candidates)
            .map(|c| c.tokens)
            .sum::<usize>()
    );
    assert_eq!(s.finish_reasons.values().sum::<usize>(), 15);
    assert_eq!(s.seed, 7, "the project seed");
    assert_eq!(s.resumed_from_prompt, None);

    // Same settings, fresh partial dir: the same bytes.
    let (_, again) = run_in(&fx, &toml, &fx.ws.path().join("p2"), Hooks::default()).unwrap();
    assert_eq!(again, first);
    // Another seed: other candidates for the same prompts.
    let (_, other) = run_in(
        &fx,
        &format!("{toml}seed = 99\n"),
        &fx.ws.path().join("p3"),
        Hooks::default(),
    )
    .unwrap();
    assert_ne!(other, first);

    // Interrupted after the second chunk (4 prompts), with a torn line left behind.
    let partial = fx.ws.path().join("p4");
    let err = run_in(
        &fx,
        &toml,
        &partial,
        Hooks {
            stop_after: Some(3),
        },
    )
    .unwrap_err();
    assert!(err.contains("stopped after 4 prompts"), "{err}");
    let file = partial.join(CANDIDATES_FILE);
    let mut text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 4);
    text.push_str("{\"id\":\"torn");
    std::fs::write(&file, text).unwrap();
    let (out, resumed) = run_in(&fx, &toml, &partial, Hooks::default()).unwrap();
    assert_eq!(
        resumed, first,
        "a resumed run writes what an uninterrupted one wrote"
    );
    assert_eq!(summary(out.path()).resumed_from_prompt, Some(4));

    // A partial file of other settings is not continued.
    let (_, restarted) = run_in(
        &fx,
        &format!("{toml}max_new_tokens = 5\n").replace("max_new_tokens = 6\n", ""),
        &partial,
        Hooks::default(),
    )
    .unwrap();
    assert_ne!(restarted, first);

    let mut shown = Vec::new();
    Generate::show(out.path(), &mut shown).unwrap();
    let shown = String::from_utf8(shown).unwrap();
    assert!(
        shown.contains("prompts     5 from the both split, 3 candidates"),
        "{shown}"
    );
    assert!(shown.contains("reference: "), "{shown}");
}

#[test]
fn truncation_keeps_whole_chunks_of_complete_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.jsonl");
    let record = CandidateRecord {
        id: "a".into(),
        prompt: "p".into(),
        system: None,
        history: Vec::new(),
        reference: "r".into(),
        candidates: vec![],
    };
    let line = serde_json::to_string(&record).unwrap() + "\n";
    std::fs::write(&file, format!("{line}{line}{line}{{\"id\"")).unwrap();
    assert_eq!(truncate_to_chunks(&file, 2).unwrap(), 2);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{line}{line}")
    );
    assert_eq!(truncate_to_chunks(&file, 1).unwrap(), 2);
    assert_eq!(truncate_to_chunks(&file, 4).unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
}
