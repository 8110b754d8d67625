//! The real `pipe` binary on ingest → model → sft → generate → score with the real SmolLM2
//! (skipped when PIPE_TEST_MODEL is unset): the outputs are consistent, the same seed gives
//! the same candidates, and a score key re-runs score alone, never generate.

mod support;

use std::path::PathBuf;

use support::{pipe_bin, strs, Ws};

fn pipeline(model: &str) -> String {
    format!(
        r#"
[project]
seed = 5

[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"
val_fraction = 0.2

[model]
path = "{model}"

[sft]
max_steps = 2
batch_size = 2
max_seq_len = 96
max_eval_rows = 2
samples = 0

[sft.lora]
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj"]

[generate]
limit = 3
candidates = 2
max_new_tokens = 16
batch_size = 4
checkpoint_every = 2

[score]
min_margin = 0.0

[score.reference]

[score.rules]
weight = 0.5
[[score.rules.rule]]
name = "short"
max_tokens = 12
[[score.rules.rule]]
must_not_match = "(?i)as an ai"

[score.command]
weight = 0.5
argv = ["sh", "judge.sh"]
scale = [0, 10]
"#
    )
}

/// A judge that rates each JSONL row by its length modulo 11: deterministic and varied.
const JUDGE: &str = "while IFS= read -r line; do echo $(( ${#line} % 11 )); done\n";

fn csv() -> String {
    let tools = [
        ("ls", "List directory contents."),
        ("cat", "Concatenate files and print on the standard output."),
        ("grep", "Print lines that match patterns."),
        ("sed", "Stream editor for filtering and transforming text."),
        ("cp", "Copy files and directories."),
        ("mv", "Move (rename) files."),
        ("rm", "Remove files or directories."),
        ("tar", "An archiving utility."),
        ("df", "Report file system space usage."),
        ("du", "Estimate file space usage."),
    ];
    let mut text = String::from("question,answer\n");
    for (t, a) in tools {
        text.push_str(&format!("What does the `{t}` command do?,{a}\n"));
    }
    text
}

fn model() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("PIPE_TEST_MODEL").filter(|v| !v.is_empty())?);
    assert!(
        path.is_file(),
        "PIPE_TEST_MODEL={} is not a file",
        path.display()
    );
    Some(std::path::absolute(path).unwrap())
}

fn read(ws: &Ws, stage: &str, file: &str) -> String {
    let entries = ws.entries(stage);
    assert_eq!(entries.len(), 1, "{stage}: {entries:?}");
    std::fs::read_to_string(
        ws.path("artifacts")
            .join(stage)
            .join(&entries[0])
            .join(file),
    )
    .unwrap_or_else(|e| panic!("{stage}/{file}: {e}"))
}

fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn generate_and_score_on_smollm2() {
    let Some(model) = model() else {
        eprintln!("skipped: PIPE_TEST_MODEL is not set");
        return;
    };
    let ws = Ws::new(pipe_bin(), &pipeline(&model.to_string_lossy()));
    ws.write("data/qa.csv", csv());
    ws.write("judge.sh", JUDGE);
    let first = ws.ok(&["run"]);
    assert_eq!(
        first.ran(),
        strs(&["generate", "ingest", "model", "score", "sft"]),
        "{}",
        first.all()
    );

    // generate: 3 train prompts × 2 candidates of at most 16 tokens.
    let candidates = read(&ws, "generate", "candidates.jsonl");
    let records = jsonl(&candidates);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert!(r["prompt"].as_str().unwrap().starts_with("What does the"));
        assert!(!r["reference"].as_str().unwrap().is_empty());
        let cands = r["candidates"].as_array().unwrap();
        assert_eq!(cands.len(), 2);
        for c in cands {
            let tokens = c["tokens"].as_u64().unwrap();
            assert!((1..=16).contains(&tokens), "{c}");
            assert!(c["mean_logprob"].as_f64().unwrap() <= 0.0);
            assert!(["eos", "stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&read(&ws, "generate", "summary.json")).unwrap();
    assert_eq!(summary["prompts"], 3);
    assert_eq!(summary["candidates"], 6);
    assert!(summary["tokens_per_s"].as_f64().unwrap() > 0.0);

    // score: one line per prompt, pairs + drops = prompts, the scorers file for eval.
    let scores = jsonl(&read(&ws, "score", "scores.jsonl"));
    assert_eq!(scores.len(), 3);
    for s in &scores {
        let reference = &s["reference"]["scores"];
        assert_eq!(reference["scorers"]["reference"], 1.0, "{s}");
        assert!(reference["scorers"]["command"].is_number(), "{s}");
        assert_eq!(s["candidates"].as_array().unwrap().len(), 2);
    }
    let stats: serde_json::Value = serde_json::from_str(&read(&ws, "score", "stats.json")).unwrap();
    let pairs = jsonl(&read(&ws, "score", "pairs.jsonl"));
    assert_eq!(stats["pairs"].as_u64().unwrap() as usize, pairs.len());
    assert_eq!(
        stats["pairs"].as_u64().unwrap() + stats["dropped_total"].as_u64().unwrap(),
        3,
        "{stats}"
    );
    for p in &pairs {
        assert!(p["chosen_score"].as_f64().unwrap() > p["rejected_score"].as_f64().unwrap());
        assert_ne!(p["chosen"], p["rejected"]);
    }
    let scorers: serde_json::Value =
        serde_json::from_str(&read(&ws, "score", "scorers.json")).unwrap();
    assert!(scorers["command"]["argv"][1]
        .as_str()
        .is_some_and(|a| a.starts_with('/') && a.ends_with("judge.sh")));
    let shown = ws.ok(&["show", "score"]);
    assert!(shown.stdout.contains("combined"), "{}", shown.stdout);

    // A score key re-runs score alone.
    let rescore = ws.ok(&["run", "-s", "score.min_margin=0.5"]);
    assert_eq!(rescore.ran(), strs(&["score"]), "{}", rescore.all());
    let status = ws.ok(&["status", "-s", "score.min_margin=0.7"]);
    let line = |stage: &str| {
        status
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no {stage} line in:\n{}", status.stdout))
            .to_string()
    };
    assert!(line("score").contains("stale"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("config score.min_margin: 0.5 -> 0.7"),
        "{}",
        status.stdout
    );
    assert!(!line("generate").contains("stale"), "{}", status.stdout);

    // The same seed samples the same candidates.
    ws.ok(&["run", "--only", "generate", "--force"]);
    assert_eq!(read(&ws, "generate", "candidates.jsonl"), candidates);
}
