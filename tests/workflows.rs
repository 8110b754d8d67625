//! Pipelines other than the fixed chain, through the real binary on the tiny generated model:
//! SFT only (ingest → model → sft → merge → eval comparing base and the merged sft model),
//! the demo pipeline.toml with `[generate]`, `[score]` and `[orpo]` deleted, which must be
//! that same valid pipeline, and multi-turn chats trained whole and answered in context.

mod support;

use support::{strs, tiny_workspace, Ws};

const SFT_ONLY: &str = r#"
[project]
seed = 3

[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"
val_fraction = 0.34

[model]
path = "tiny"

[sft]
preset = "fast"
max_steps = 2
batch_size = 2
max_seq_len = 64
samples = 1
sample_max_new_tokens = 4

[merge]
dtype = "f32"

[eval]
limit = 3
max_new_tokens = 6
samples = 2
"#;

/// The eval.json of the instance's current artifact (the key `pipe status` names).
fn eval_json(ws: &Ws, instance: &str, overrides: &[&str]) -> serde_json::Value {
    let path = eval_dir(ws, instance, overrides).join("eval.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The directory of the instance's current artifact (the key `pipe status` names).
fn eval_dir(ws: &Ws, instance: &str, overrides: &[&str]) -> std::path::PathBuf {
    let mut args = vec!["status"];
    args.extend_from_slice(overrides);
    let status = ws.ok(&args).stdout;
    let key = status
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(instance) && parts.next() == Some("cached"))
                .then(|| parts.next().map(str::to_string))
                .flatten()
        })
        .unwrap_or_else(|| panic!("{instance} is not cached: {status}"));
    ws.path(&format!("artifacts/{instance}")).join(key)
}

fn model_names(eval: &serde_json::Value) -> Vec<String> {
    eval["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sft_only_runs_merges_and_compares_base_with_the_merged_model() {
    let ws = tiny_workspace(SFT_ONLY);
    let r = ws.ok(&["run"]);
    assert_eq!(
        r.ran(),
        strs(&["eval", "ingest", "merge", "model", "sft"]),
        "{}",
        r.all()
    );
    let eval = eval_json(&ws, "eval", &[]);
    assert_eq!(model_names(&eval), ["base", "final"]);
    assert_eq!(eval["win_rates"].as_array().unwrap().len(), 1);
    // Without a score stage the answers are judged by the reference scorer alone.
    let scorers = eval["models"][0]["scorers"].as_object().unwrap();
    assert_eq!(scorers.keys().collect::<Vec<_>>(), ["reference"]);
    let mermaid = ws.ok(&["dag", "--mermaid"]).stdout;
    for edge in [
        "ingest --> sft",
        "model --> sft",
        "sft --> merge",
        "merge --> eval",
        "ingest --> eval",
    ] {
        assert!(mermaid.contains(edge), "{edge}: {mermaid}");
    }
    let again = ws.ok(&["run"]);
    assert!(again.ran().is_empty(), "{}", again.all());

    // Any model-yielding instance answers: the adapter stage on its base, the merged export.
    for stage in ["model", "sft", "merge"] {
        let r = ws.ok(&[
            "generate",
            "--stage",
            stage,
            "-p",
            "What does ls do?",
            "--max-new-tokens",
            "3",
        ]);
        assert!(r.all().contains("3 tokens at"), "{stage}: {}", r.all());
    }
    let r = ws.run(&["generate", "--stage", "ingest", "-p", "hi"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("--stage ingest"), "{}", r.stderr);

    // Naming the models: base and the sft adapter unmerged, next to the merged export.
    let models = ["-s", "eval.models=[\"model\", \"sft\", \"merge\"]"];
    let r = ws.ok(&["run", models[0], models[1]]);
    assert_eq!(r.ran(), strs(&["eval"]), "{}", r.all());
    let eval = eval_json(&ws, "eval", &models);
    assert_eq!(model_names(&eval), ["base", "sft", "final"]);
}

/// Deletes the tables `names` (and their sub-tables) from a pipeline.toml text.
fn without_tables(text: &str, names: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            let header = trimmed.trim_start_matches('[');
            let name = header.split([']', '.']).next().unwrap_or("").trim();
            skipping = names.contains(&name);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_demo_without_generate_score_and_orpo_is_sft_then_merge_and_eval() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml")).unwrap();
    let text = without_tables(&demo, &["generate", "score", "orpo"]);
    assert!(
        !text.contains("[orpo") && text.contains("[merge]"),
        "{text}"
    );
    let ws = Ws::new(support::pipe_bin(), &text);
    // A dry run hashes the inputs without loading them.
    ws.write(
        "data/unix_manual_qa.csv",
        "question,answer,category\na,b,c\n",
    );
    ws.write(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "not loaded by a dry run",
    );
    let r = ws.ok(&["run", "--dry-run"]);
    let mut would: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains(" would run "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    would.sort();
    assert_eq!(
        would,
        ["eval", "ingest", "merge", "model", "sft"],
        "{}",
        r.all()
    );
    let text = ws.ok(&["dag"]).stdout;
    assert!(text.contains("merge"), "{text}");
    let mermaid = ws.ok(&["dag", "--mermaid"]).stdout;
    assert!(mermaid.contains("sft --> merge"), "{mermaid}");
    assert!(mermaid.contains("sft --> eval"), "{mermaid}");
    assert!(!mermaid.contains("orpo"), "{mermaid}");
}

/// Two-exchange chats from [`support::tools_csv`]'s rows: row `i` then row `i + 1`.
fn tool_chats() -> String {
    let tools = [
        "ls", "cat", "grep", "sed", "awk", "cp", "mv", "rm", "tar", "ssh",
    ];
    let turn = |role: &str, content: String| serde_json::json!({"role": role, "content": content});
    tools
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let messages = vec![
                turn("user", format!("What does {} do?", w[0])),
                turn("assistant", format!("{} is tool number {i}.", w[0])),
                turn("user", format!("What does {} do?", w[1])),
                turn("assistant", format!("{} is tool number {}.", w[1], i + 1)),
            ];
            serde_json::json!({ "messages": messages }).to_string() + "\n"
        })
        .collect()
}

#[test]
fn multi_turn_chats_are_trained_whole_and_answered_with_their_history() {
    let pipeline = r#"
[project]
seed = 3

[ingest]
path = "data/chats.jsonl"
val_fraction = 0.34

[model]
path = "tiny"

[sft]
max_steps = 2
batch_size = 2
max_seq_len = 128
samples = 0

[generate]
split = "train"
limit = 2
candidates = 2
max_new_tokens = 4

[eval]
models = ["model", "sft"]
limit = 2
max_new_tokens = 4
"#;
    let ws = tiny_workspace(pipeline);
    ws.write("data/chats.jsonl", tool_chats());
    let r = ws.ok(&["run", "--to", "generate"]);
    assert!(r.all().contains("9 records"), "{}", r.all());
    let show = ws.ok(&["show", "ingest"]).stdout;
    assert!(show.contains("9 multi-turn rows"), "{show}");
    // Generation answers the last question in the context of the first exchange.
    let status = ws.ok(&["status"]).stdout;
    let key = status
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("generate "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{status}"));
    let text = std::fs::read_to_string(
        ws.path("artifacts/generate")
            .join(key)
            .join("candidates.jsonl"),
    )
    .unwrap();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let history = record["history"].as_array().unwrap();
        assert_eq!(history.len(), 2, "{line}");
        assert_eq!(history[1]["role"], "assistant", "{line}");
    }
    ws.ok(&["run", "--only", "eval"]);
    let eval = eval_json(&ws, "eval", &[]);
    assert_eq!(model_names(&eval), ["base", "sft"]);
    // Each answer is recorded, and shown, with the turns it was asked after.
    let dir = eval_dir(&ws, "eval", &[]);
    let answers = std::fs::read_to_string(dir.join("answers.jsonl")).unwrap();
    for line in answers.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["history"].as_array().unwrap().len(), 2, "{line}");
    }
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        report.contains("<b>earlier turns</b><pre>user: What does"),
        "{report}"
    );
}
