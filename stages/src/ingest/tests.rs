//! Tests of the ingest stage: every layout and format, the cleaning counts, the seeded split
//! and every error naming the file, row, column or key.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::Value;

use super::artifact::read_examples;
use super::config::Layout;
use super::read::choose_layout;
use super::split::val_quotas;
use super::stats::{Drops, Percentiles};
use super::template::{parse_template, Piece};
use super::*;
use crate::contract::pick_table;
use crate::llm::ChatMessage;
use crate::progress::{Bar, NullProgress, Progress};

/// Progress that keeps the info lines, to check that drops are reported.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn bar(&self, total: Option<u64>, unit: &str) -> Box<dyn Bar> {
        NullProgress.bar(total, unit)
    }
    fn info(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn debug(&self, _msg: &str) {}
}

struct Outputs {
    out: tempfile::TempDir,
    train: Vec<Example>,
    val: Vec<Example>,
    stats: IngestStats,
    metrics: serde_json::Map<String, Value>,
    lines: Vec<String>,
}

impl Outputs {
    fn all(&self) -> Vec<Example> {
        let mut all: Vec<Example> = self.train.iter().chain(&self.val).cloned().collect();
        all.sort_by_key(|e| e.source_row);
        all
    }
}

fn config(toml: &str) -> IngestConfig {
    let cfg: IngestConfig = pick_table(toml, "ingest").unwrap();
    validate_config(&cfg).unwrap();
    cfg
}

fn issue(toml: &str) -> ConfigIssue {
    let cfg: IngestConfig = pick_table(toml, "ingest").unwrap();
    validate_config(&cfg).unwrap_err()
}

/// Runs the stage with `workspace` as the workspace root and a fresh output directory.
fn run_at(workspace: &Path, toml: &str, seed: u64) -> Result<Outputs, String> {
    let cfg = config(toml);
    let out = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let mut cx = StageContext::new(
        workspace.to_path_buf(),
        out.path().to_path_buf(),
        out.path().join("partial"),
        Vec::new(),
        seed,
        &recorder,
    );
    Ingest::run(&cfg, &mut cx).map_err(|e| e.to_string())?;
    let metrics = cx.metrics().clone();
    let stats =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(STATS_FILE)).unwrap())
            .unwrap();
    Ok(Outputs {
        train: read_examples(&out.path().join(TRAIN_FILE)).unwrap(),
        val: read_examples(&out.path().join(VAL_FILE)).unwrap(),
        stats,
        metrics,
        lines: recorder.0.into_inner().unwrap(),
        out,
    })
}

/// Writes `files` into a temporary workspace and runs the stage there.
fn run_with(toml: &str, files: &[(&str, &[u8])], seed: u64) -> Result<Outputs, String> {
    let ws = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(ws.path().join(name), bytes).unwrap();
    }
    run_at(ws.path(), toml, seed)
}

fn run_err(toml: &str, files: &[(&str, &[u8])]) -> String {
    match run_with(toml, files, 1) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

const QA: &str = "[ingest]\npath = \"qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ncategory = \"category\"\n";

/// `n` distinct rows spread over categories of the given sizes.
fn categorised_csv(sizes: &[(&str, usize)]) -> String {
    let mut text = String::from("question,answer,category\n");
    for (category, n) in sizes {
        for i in 0..*n {
            text.push_str(&format!(
                "what is {category} {i}?,it is {category} number {i},{category}\n"
            ));
        }
    }
    text
}

#[test]
fn csv_happy_path_keeps_quoted_commas_and_newlines() {
    let csv = "question,answer,category\n\
               \"What does ls, the tool, do?\",\"Lists files.\nOne per line.\",cmd\n\
               What is cat?,Concatenates files.,cmd\n\
               What is /etc/passwd?,\"The \"\"user\"\" database.\",file\n\
               What is tty?,A terminal.,file\n";
    let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 7).unwrap();
    let all = o.all();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].prompt, "What does ls, the tool, do?");
    assert_eq!(all[0].response, "Lists files.\nOne per line.");
    assert_eq!(all[0].category.as_deref(), Some("cmd"));
    assert_eq!(all[0].system, None);
    assert_eq!(all[2].response, "The \"user\" database.");
    assert_eq!(
        all.iter().map(|e| e.source_row).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(all
        .iter()
        .all(|e| e.id.len() == 16 && e.id.chars().all(|c| c.is_ascii_hexdigit())));
    // Two categories of two rows: each has one row in each split.
    assert_eq!((o.train.len(), o.val.len()), (2, 2));
    assert_eq!(o.stats.categories["cmd"], SplitCounts { train: 1, val: 1 });
    assert_eq!(o.stats.encoding, "utf-8");
    assert_eq!(o.stats.format, "csv");
    assert_eq!(o.stats.layout, "columns");
    assert_eq!(o.metrics["rows_in"], 4);
    assert_eq!(o.metrics["dropped"], 0);
}

#[test]
fn csv_numbers_stay_text_and_blank_lines_keep_row_numbers() {
    let csv = "question,answer,category\r\n\r\n007,1e3,0.50\r\n\r\n\"1,000\",\"-0\r\n+42\",NaN\r\n";
    let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
    let all = o.all();
    let got: Vec<(&str, &str, Option<&str>, u64)> = all
        .iter()
        .map(|e| {
            let category = e.category.as_deref();
            (
                e.prompt.as_str(),
                e.response.as_str(),
                category,
                e.source_row,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("007", "1e3", Some("0.50"), 1),
            ("1,000", "-0\n+42", Some("NaN"), 2)
        ]
    );
}

#[test]
fn output_rows_have_the_documented_shape() {
    let csv = "question,answer,category\nq1,a1,c\nq2,a2,c\nq3,a3,\n";
    let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
    let text = std::fs::read_to_string(o.out.path().join(TRAIN_FILE)).unwrap()
        + &std::fs::read_to_string(o.out.path().join(VAL_FILE)).unwrap();
    let q1 = text.lines().find(|l| l.contains("\"q1\"")).unwrap();
    let id = &blake3::hash(b"\0q1\0a1").to_hex()[..16];
    assert_eq!(
        q1,
        format!(r#"{{"id":"{id}","prompt":"q1","response":"a1","category":"c","source_row":1}}"#)
    );
    let q3 = text.lines().find(|l| l.contains("\"q3\"")).unwrap();
    assert!(
        !q3.contains("category"),
        "an empty category is omitted: {q3}"
    );
}

#[test]
fn utf8_bom_is_stripped_before_the_header() {
    let csv = "\u{feff}question,answer,category\nq1,a1,x\nq2,a2,x\n";
    let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
    assert_eq!(o.stats.encoding, "utf-8 (bom)");
    assert_eq!(o.all()[0].prompt, "q1");
}

#[test]
fn cp949_korean_csv_is_detected_and_decoded_exactly() {
    let text = "question,answer,category\n\
                리눅스에서 파일 목록은?,ls 명령을 씁니다.,명령\n\
                \"쉼표, 그리고 똠방각하\",뷁 햏 똠 확장 완성형,명령\n";
    let (bytes, _, unmappable) = encoding_rs::EUC_KR.encode(text);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the test file must not be UTF-8"
    );
    let o = run_with(QA, &[("qa.csv", &bytes)], 1).unwrap();
    assert_eq!(o.stats.encoding, "cp949");
    let all = o.all();
    assert_eq!(all[0].prompt, "리눅스에서 파일 목록은?");
    assert_eq!(all[0].response, "ls 명령을 씁니다.");
    assert_eq!(all[1].prompt, "쉼표, 그리고 똠방각하");
    assert_eq!(all[1].response, "뷁 햏 똠 확장 완성형");
    assert_eq!(all[1].category.as_deref(), Some("명령"));
}

const ALPACA_JSON: &str = r#"[
    {"instruction": "Name the command that lists files.", "input": "", "output": "ls"},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat", "system": "You translate."},
    {"instruction": "Sum the numbers.", "input": "1 2", "output": 3}
]"#;

#[test]
fn alpaca_json_joins_the_input_only_where_there_is_one() {
    let toml = "[ingest]\npath = \"a.json\"\n";
    let o = run_with(toml, &[("a.json", ALPACA_JSON.as_bytes())], 1).unwrap();
    assert_eq!(o.stats.layout, "alpaca");
    assert_eq!(o.stats.format, "json");
    let all = o.all();
    assert_eq!(all[0].prompt, "Name the command that lists files.");
    assert_eq!(all[1].prompt, "Translate to French.\n\ncat");
    assert_eq!(all[1].system.as_deref(), Some("You translate."));
    assert_eq!(all[2].response, "3", "numbers are taken as their JSON text");
    assert_eq!(all[2].source_row, 3);
    assert_eq!(
        o.stats.columns["prompt_template"],
        "{instruction}\n\n{input}"
    );
}

#[test]
fn alpaca_jsonl_without_input_fields() {
    let jsonl = "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"c\", \"output\": \"d\", \"input\": \"e\"}\n";
    let o = run_with(
        "[ingest]\npath = \"a.jsonl\"\n",
        &[("a.jsonl", jsonl.as_bytes())],
        1,
    )
    .unwrap();
    let all = o.all();
    assert_eq!(all[0].prompt, "a");
    assert_eq!(all[1].prompt, "c\n\ne");
    // JSONL rows are numbered by line; the blank line 2 is skipped.
    assert_eq!(all[1].source_row, 3);
}

#[test]
fn messages_jsonl_keeps_whole_chats_and_counts_turns_not_kept() {
    let jsonl = [
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}], "topic": "greet"}"#,
        r#"{"messages": [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"}, {"role": "user", "content": "Two?"}, {"role": "assistant", "content": " 2 "}], "topic": "count"}"#,
        r#"{"conversations": [{"from": "human", "value": "ShareGPT?"}, {"from": "gpt", "value": "Yes."}, {"from": "human", "value": "And?"}, {"from": "gpt", "value": "Done."}, {"from": "human", "value": "Left open?"}], "topic": "greet"}"#,
        r#"{"messages": [{"role": "user", "content": "Unanswered?"}], "topic": "count"}"#,
    ]
    .join("\n");
    let toml = "[ingest]\npath = \"c.jsonl\"\ncategory = \"topic\"\n";
    let o = run_with(toml, &[("c.jsonl", jsonl.as_bytes())], 1).unwrap();
    assert_eq!(o.stats.layout, "messages");
    let all = o.all();
    assert_eq!(all.len(), 3);
    assert_eq!(
        (all[0].prompt.as_str(), all[0].response.as_str()),
        ("Hi?", "Hello.")
    );
    assert_eq!(all[0].system.as_deref(), Some("Be brief."));
    assert!(all[0].history.is_empty());
    // The last answer is the response, the question before it the prompt, the rest history.
    assert_eq!(
        (all[1].prompt.as_str(), all[1].response.as_str()),
        ("Two?", "2")
    );
    assert_eq!(
        all[1].history,
        vec![ChatMessage::user("One?"), ChatMessage::assistant("1")]
    );
    // A trailing question has no answer to learn: it is not kept, and counted.
    assert_eq!(
        (all[2].prompt.as_str(), all[2].response.as_str()),
        ("And?", "Done.")
    );
    assert_eq!(
        all[2].history,
        vec![
            ChatMessage::user("ShareGPT?"),
            ChatMessage::assistant("Yes.")
        ]
    );
    assert_eq!(all[2].category.as_deref(), Some("greet"));
    assert_eq!(o.stats.truncated_conversations, 2);
    assert_eq!(o.stats.multi_turn, 2);
    assert_eq!(o.stats.dropped.empty_response, 1);
    assert!(
        o.lines
            .iter()
            .any(|l| l.contains("2 chats have turns that are not kept")),
        "{:?}",
        o.lines
    );
}

#[test]
fn the_same_last_exchange_after_another_history_is_another_row() {
    let chat = |first: &str| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": "{first}"}}, {{"role": "assistant", "content": "ok"}}, {{"role": "user", "content": "Next?"}}, {{"role": "assistant", "content": "Done."}}]}}"#
        )
    };
    let single = r#"{"messages": [{"role": "user", "content": "Next?"}, {"role": "assistant", "content": "Done."}]}"#;
    let jsonl = [chat("A?"), chat("B?"), chat("A?"), single.to_string()].join("\n");
    let o = run_with(
        "[ingest]\npath = \"c.jsonl\"\n",
        &[("c.jsonl", jsonl.as_bytes())],
        1,
    )
    .unwrap();
    let all = o.all();
    assert_eq!(all.len(), 3, "only the repeated chat is a duplicate");
    assert_eq!(o.stats.dropped.duplicate, 1);
    let single_row = all.iter().find(|r| r.history.is_empty()).unwrap();
    // A single exchange keeps the id it had before chats were kept whole.
    let mut h = blake3::Hasher::new();
    h.update(b"\0Next?\0Done.");
    assert_eq!(single_row.id, h.finalize().to_hex()[..16]);
}

#[test]
fn input_column_is_joined_by_the_template() {
    let csv = "instruction,context,answer\nSummarise.,Some text.,Short.\nSay hi.,,Hi.\n";
    let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"instruction\"\nresponse = \"answer\"\n\
                input = \"context\"\nprompt_template = \"{instruction}\\nContext: {context}\"\n";
    let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
    let all = o.all();
    assert_eq!(all[0].prompt, "Summarise.\nContext: Some text.");
    assert_eq!(
        all[1].prompt, "Say hi.",
        "an empty input collapses to the prompt alone"
    );
}

#[test]
fn a_template_without_input_applies_to_every_row() {
    let csv = "q,topic,a\nWhat?,unix,That.\n2?,x,y\n";
    let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"q\"\nresponse = \"a\"\nprompt_template = \"[{topic}] {q} {{braces}}\"\n";
    let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
    assert_eq!(o.all()[0].prompt, "[unix] What? {braces}");
}

#[test]
fn text_is_trimmed_and_crlf_becomes_lf() {
    let csv = "question,answer,category\r\n  padded  ,\"two\r\nlines \",\t c \r\nq,a,c\r\n";
    let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
    let all = o.all();
    assert_eq!(all[0].prompt, "padded");
    assert_eq!(all[0].response, "two\nlines");
    assert_eq!(all[0].category.as_deref(), Some("c"));
}

#[test]
fn drops_are_counted_by_reason_and_reported() {
    let csv = "question,answer,category\n\
               q1,a1,c\n\
               ,no prompt,c\n\
               q2,   ,c\n\
               q1 ,a1,c\n\
               q3,a3,c\n";
    let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
    assert_eq!(
        o.stats.dropped,
        Drops {
            empty_prompt: 1,
            empty_response: 1,
            duplicate: 1,
            ..Drops::default()
        }
    );
    assert_eq!((o.stats.rows_read, o.stats.rows_out), (5, 2));
    assert_eq!(o.metrics["dropped"], 3);
    assert_eq!(
        o.all().iter().map(|e| e.source_row).collect::<Vec<_>>(),
        vec![1, 5]
    );
    let line = o.lines.iter().find(|l| l.contains("dropped")).unwrap();
    assert_eq!(
        line,
        "ingest: dropped 3 of 5 rows: 1 with an empty prompt, 1 with an empty response, 1 duplicate"
    );
}

#[test]
fn different_system_prompts_are_not_duplicates() {
    let csv = "s,q,a\nbe terse,q,a\nbe kind,q,a\nbe kind,q,a\n";
    let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"q\"\nresponse = \"a\"\nsystem = \"s\"\n";
    let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
    assert_eq!(o.stats.rows_out, 2);
    assert_eq!(o.stats.dropped.duplicate, 1);
    assert_ne!(o.all()[0].id, o.all()[1].id);
}

#[test]
fn stratified_split_properties() {
    let sizes = [
        ("a", 2),
        ("b", 3),
        ("c", 10),
        ("d", 50),
        ("e", 135),
        ("solo", 1),
    ];
    let csv = categorised_csv(&sizes);
    let files = [("qa.csv", csv.as_bytes())];
    let o = run_with(QA, &files, 42).unwrap();
    for (category, n) in sizes.iter().filter(|(_, n)| *n >= 2) {
        let c = o.stats.categories[*category];
        assert!(c.train >= 1 && c.val >= 1, "{category}: {c:?}");
        assert_eq!(c.train + c.val, *n);
    }
    assert_eq!(o.stats.categories["solo"], SplitCounts { train: 1, val: 0 });
    // 201 rows at 0.2: 40 val, exactly, by largest-remainder apportionment.
    assert_eq!((o.train.len(), o.val.len()), (161, 40));
    let ids = |v: &[Example]| v.iter().map(|e| e.id.clone()).collect::<HashSet<_>>();
    assert!(ids(&o.train).is_disjoint(&ids(&o.val)));

    let again = run_with(QA, &files, 42).unwrap();
    assert_eq!(ids(&again.val), ids(&o.val), "same seed, same split");
    let other = run_with(QA, &files, 43).unwrap();
    assert_ne!(ids(&other.val), ids(&o.val), "another seed, another split");
    assert_eq!(other.val.len(), 40);
}

#[test]
fn unstratified_split_ignores_categories() {
    let csv = categorised_csv(&[("a", 30), ("b", 70)]);
    let toml = format!("{QA}stratify = false\nval_fraction = 0.3\n");
    let o = run_with(&toml, &[("qa.csv", csv.as_bytes())], 1).unwrap();
    assert!(!o.stats.stratified);
    assert_eq!(o.val.len(), 30);
    assert_eq!(
        o.stats.categories.values().map(|c| c.val).sum::<usize>(),
        30
    );
}

#[test]
fn val_quotas_hit_the_fraction_and_cover_every_group() {
    assert_eq!(val_quotas(&[100], 0.2), vec![20]);
    assert_eq!(val_quotas(&[3, 7], 0.3), vec![1, 2]);
    // Every group of two or more needs a val row, even past the target.
    assert_eq!(val_quotas(&[2, 2, 2, 2, 2], 0.2), vec![1; 5]);
    // Minimums that overshoot are paid back by the larger groups.
    assert_eq!(
        val_quotas(&[2, 3, 10, 50, 135, 1], 0.2),
        vec![1, 1, 2, 10, 26, 0]
    );
    // Only singletons: val still gets its share.
    assert_eq!(val_quotas(&[1, 1, 1, 1], 0.5).iter().sum::<usize>(), 2);
    // A val share that would empty train is capped.
    assert_eq!(val_quotas(&[5], 0.99), vec![4]);
    assert_eq!(val_quotas(&[2], 0.01), vec![1]);
}

#[test]
fn max_rows_takes_a_seeded_sample_after_cleaning() {
    let csv = categorised_csv(&[("a", 20), ("b", 20)]) + "what is a 0?,it is a number 0,a\n";
    let toml = format!("{QA}max_rows = 10\n");
    let files = [("qa.csv", csv.as_bytes())];
    let o = run_with(&toml, &files, 5).unwrap();
    assert_eq!(o.stats.rows_out, 10);
    assert_eq!(o.stats.dropped.duplicate, 1);
    assert_eq!(o.stats.sampled_out, 30);
    assert_eq!((o.train.len(), o.val.len()), (8, 2));
    let rows = |o: &Outputs| o.all().iter().map(|e| e.source_row).collect::<Vec<_>>();
    assert_eq!(rows(&run_with(&toml, &files, 5).unwrap()), rows(&o));
    assert_ne!(rows(&run_with(&toml, &files, 6).unwrap()), rows(&o));
}

#[test]
fn tsv_and_custom_delimiters() {
    let tsv = "question\tanswer\tcategory\nq, with comma\ta\tc\nq2\ta2\tc\n";
    let toml = "[ingest]\npath = \"t.tsv\"\nprompt = \"question\"\nresponse = \"answer\"\n";
    let o = run_with(toml, &[("t.tsv", tsv.as_bytes())], 1).unwrap();
    assert_eq!(o.stats.delimiter.as_deref(), Some("\t"));
    assert_eq!(o.all()[0].prompt, "q, with comma");

    let csv = "question;answer\nq1;a1\nq2;a2\n";
    let toml = "[ingest]\npath = \"t.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ndelimiter = \";\"\n";
    let o = run_with(toml, &[("t.csv", csv.as_bytes())], 1).unwrap();
    assert_eq!(o.stats.rows_out, 2);
}

#[test]
fn demo_csv_ingests_without_drops() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let toml = "[ingest]\npath = \"data/unix_manual_qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ncategory = \"category\"\n";
    let o = run_at(&workspace, toml, 0).unwrap();
    assert_eq!(o.stats.rows_read, 664);
    assert_eq!(o.stats.dropped.total(), 0);
    assert_eq!((o.train.len(), o.val.len()), (531, 133));
    assert_eq!(o.stats.categories.len(), 5);
    assert!(o
        .stats
        .categories
        .values()
        .all(|c| c.train > 0 && c.val > 0));
    assert!(o.stats.lengths["prompt"].max <= 60);
}

#[test]
fn starter_parses_validates_and_runs_on_the_demo_data() {
    let cfg = config(Ingest::STARTER);
    assert_eq!(cfg.val_fraction, 0.2);
    assert!(cfg.stratify);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = run_at(&workspace, Ingest::STARTER, 3).unwrap();
    assert_eq!(o.stats.rows_out, 664);
    assert!(crate::registry().iter().any(|s| s.name() == "ingest"));
}

#[test]
fn show_prints_counts_drops_categories_and_lengths() {
    let csv = "question,answer,category\nq1,a1,x\nq2,a2,x\n,a,x\nq3,a3,y\nq4,a4,y\n";
    let o = run_with(QA, &[("qa.csv", csv.as_bytes())], 1).unwrap();
    let mut shown = Vec::new();
    Ingest::show(o.out.path(), &mut shown).unwrap();
    let shown = String::from_utf8(shown).unwrap();
    for part in [
        "source      qa.csv (csv, utf-8, layout columns, delimiter \",\")",
        "5 read",
        "1 empty prompt",
        "4 written: 2 train, 2 val",
        "categories (stratified)",
        "x",
        "lengths (characters)",
        "response",
    ] {
        assert!(shown.contains(part), "missing {part:?} in:\n{shown}");
    }
}

// --- bad input: every one a clear error -----------------------------------------------

#[test]
fn error_missing_file() {
    let err = run_err(QA, &[]);
    assert!(err.starts_with("cannot find qa.csv (looked for /"), "{err}");
    assert!(
        err.ends_with(
            "qa.csv); check the path, which is relative to the directory holding pipeline.toml"
        ),
        "{err}"
    );
}

#[test]
fn error_empty_file() {
    let err = run_err(QA, &[("qa.csv", b"")]);
    assert_eq!(
        err,
        "qa.csv is empty; it needs a header line and at least one data row"
    );
    let err = run_err("[ingest]\npath = \"a.jsonl\"\n", &[("a.jsonl", b"\n\n")]);
    assert_eq!(err, "a.jsonl is empty; it needs one JSON object per line");
}

#[test]
fn error_header_only() {
    let err = run_err(QA, &[("qa.csv", b"question,answer,category\n")]);
    assert_eq!(err, "qa.csv has a header (question, answer, category) but no data rows; add rows below the header line");
}

#[test]
fn error_missing_column_lists_columns_and_suggests_the_nearest() {
    let toml = "[ingest]\npath = \"qa.csv\"\nprompt = \"questoin\"\nresponse = \"answer\"\n";
    let err = run_err(toml, &[("qa.csv", b"question,answer,category\nq,a,c\n")]);
    assert_eq!(
        err,
        "qa.csv: no column `questoin` (set by `prompt`); the header has: question, answer, category; \
         did you mean `question`? set `prompt = \"question\"` in [ingest]"
    );
}

#[test]
fn error_missing_default_column_suggests_a_known_alias() {
    let err = run_err(
        "[ingest]\npath = \"qa.csv\"\n",
        &[("qa.csv", b"question,answer,category\nq,a,c\n")],
    );
    assert_eq!(
        err,
        "qa.csv: no column `prompt` (the default for `prompt`); the header has: question, answer, category; \
         did you mean `question`? set `prompt = \"question\"` in [ingest]"
    );
    let toml = "[ingest]\npath = \"qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\ncategory = \"kind\"\n";
    let err = run_err(toml, &[("qa.csv", b"question,answer,type\nq,a,c\n")]);
    assert!(
        err.ends_with("did you mean `type`? set `category = \"type\"` in [ingest]"),
        "{err}"
    );
}

#[test]
fn error_template_placeholder_not_a_column() {
    let toml = "[ingest]\npath = \"qa.csv\"\nprompt = \"question\"\nresponse = \"answer\"\nprompt_template = \"{question} {categroy}\"\n";
    let err = run_err(toml, &[("qa.csv", b"question,answer,category\nq,a,c\n")]);
    assert_eq!(
        err,
        "qa.csv: no column `categroy` (used in `prompt_template`); the header has: question, answer, category; \
         did you mean `category`? fix the placeholder in `prompt_template`"
    );
}

#[test]
fn error_duplicate_mapped_column() {
    let err = run_err(QA, &[("qa.csv", b"question,answer,question\nq,a,c\n")]);
    assert_eq!(err, "qa.csv: column `question` (set by `prompt`) appears 2 times in the header; rename the duplicates so the mapping is unambiguous");
}

#[test]
fn error_undecodable_bytes() {
    let err = run_err(
        QA,
        &[(
            "qa.csv",
            b"question,answer,category\nq,a,c\nq2,\xff\xfe,c\n",
        )],
    );
    assert_eq!(
        err,
        "qa.csv: line 3 (byte 35) cannot be decoded as utf-8 (fails at line 3 (byte 35)) or cp949/euc-kr; \
         re-save the file as UTF-8, or set `encoding` to the file's real encoding"
    );
    let (korean, _, _) = encoding_rs::EUC_KR.encode("question,answer\n질문,답\n");
    let toml = "[ingest]\npath = \"qa.csv\"\nencoding = \"utf-8\"\nprompt = \"question\"\nresponse = \"answer\"\n";
    let err = run_err(toml, &[("qa.csv", &korean)]);
    assert!(err.starts_with("qa.csv: line 2 (byte 17) cannot be decoded as utf-8; re-save the file as UTF-8, or set `encoding`"), "{err}");
}

#[test]
fn error_ragged_csv_row() {
    let err = run_err(
        QA,
        &[("qa.csv", b"question,answer,category\nq,a,c\nq2,a, b,c\n")],
    );
    assert_eq!(
        err,
        "qa.csv: line 3 (row 2) has 4 fields but the header has 3; quote fields that contain the delimiter `,` (\"a, b\"), or set the right delimiter"
    );
}

#[test]
fn error_malformed_json_and_jsonl() {
    let toml = "[ingest]\npath = \"a.json\"\n";
    let err = run_err(toml, &[("a.json", b"[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\" \"output\": \"d\"}\n]")]);
    assert!(
        err.starts_with(
            "a.json: line 3, column 22: invalid JSON: expected `,` or `}`; fix the syntax there"
        ),
        "{err}"
    );
    let toml = "[ingest]\npath = \"a.jsonl\"\n";
    let err = run_err(toml, &[("a.jsonl", b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": }\n")]);
    assert!(
        err.starts_with(
            "a.jsonl: line 2, column 32: invalid JSON: expected value; fix the syntax there"
        ),
        "{err}"
    );
}

#[test]
fn error_alpaca_without_output() {
    let toml = "[ingest]\npath = \"a.jsonl\"\nlayout = \"alpaca\"\n";
    let jsonl = b"{\"instruction\": \"a\", \"input\": \"\", \"answer\": \"b\"}\n";
    let err = run_err(toml, &[("a.jsonl", jsonl)]);
    assert_eq!(
        err,
        "a.jsonl: line 1: no field `output` (the alpaca field for `response`); the record has: answer, input, instruction; \
         did you mean `answer`? set `response = \"answer\"` in [ingest], or use layout = \"columns\""
    );
}

#[test]
fn error_field_missing_in_a_later_record() {
    let jsonl = b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n";
    let err = run_err("[ingest]\npath = \"a.jsonl\"\n", &[("a.jsonl", jsonl)]);
    assert!(err.starts_with("a.jsonl: line 2: no field `output` (the alpaca field for `response`); the record has: instruction;"), "{err}");
}

#[test]
fn error_messages_layout_mismatch() {
    let toml = "[ingest]\npath = \"a.jsonl\"\nlayout = \"messages\"\n";
    let err = run_err(
        toml,
        &[("a.jsonl", b"{\"instruction\": \"a\", \"output\": \"b\"}\n")],
    );
    assert_eq!(
        err,
        "a.jsonl: line 1: layout \"messages\" needs a `messages` (or `conversations`) array, but the record has: instruction, output; \
         set `layout` to \"alpaca\" or \"columns\" in [ingest]"
    );
    let err = run_err(
        toml,
        &[("a.jsonl", b"{\"messages\": [{\"role\": \"user\"}]}\n")],
    );
    assert_eq!(
        err,
        "a.jsonl: line 1: message 1: has no `content` (or `value`)"
    );
    let err = run_err(
        "[ingest]\npath = \"qa.csv\"\nlayout = \"messages\"\n",
        &[("qa.csv", b"a,b\n1,2\n")],
    );
    assert!(
        err.starts_with("qa.csv: layout \"messages\" needs JSON or JSONL input"),
        "{err}"
    );
}

#[test]
fn error_non_text_field() {
    let jsonl = b"{\"instruction\": \"a\", \"output\": [\"b\"]}\n";
    let err = run_err("[ingest]\npath = \"a.jsonl\"\n", &[("a.jsonl", jsonl)]);
    assert_eq!(
        err,
        "a.jsonl: line 1: field `output` is an array, expected text; make it a string"
    );
}

#[test]
fn error_unknown_extension() {
    let err = run_err("[ingest]\npath = \"data.txt\"\n", &[("data.txt", b"x")]);
    assert_eq!(err, "data.txt: cannot tell the format from the extension `.txt`; set `format` in [ingest] to \"csv\", \"json\" or \"jsonl\"");
}

#[test]
fn error_too_few_rows_after_cleaning() {
    let err = run_err(
        QA,
        &[("qa.csv", b"question,answer,category\nq,a,c\nq,a,c\n,x,c\n")],
    );
    assert_eq!(err, "qa.csv: only 1 usable row(s) of 3 (dropped: 1 with an empty prompt, 1 duplicate); need at least 2 to make a train and a val split");
}

// --- config validation ----------------------------------------------------------------

#[test]
fn val_fraction_must_be_inside_zero_one() {
    for bad in ["0.0", "1.0", "1.5", "-0.1", "nan"] {
        let i = issue(&format!(
            "[ingest]\npath = \"a.csv\"\nval_fraction = {bad}\n"
        ));
        assert_eq!(i.key, "val_fraction", "{bad}");
        assert!(
            i.message.starts_with("must be between 0 and 1 (exclusive)"),
            "{}",
            i.message
        );
    }
}

#[test]
fn other_config_issues_name_their_key() {
    let base = "[ingest]\npath = \"a.csv\"\n";
    let cases = [
        ("delimiter = \"ab\"", "delimiter"),
        ("delimiter = \"\\\"\"", "delimiter"),
        ("max_rows = 1", "max_rows"),
        ("prompt = \" \"", "prompt"),
        ("prompt_template = \"{prompt\"", "prompt_template"),
        ("prompt_template = \"a } b\"", "prompt_template"),
        ("prompt_template = \"{}\"", "prompt_template"),
        (
            "input = \"ctx\"\nprompt_template = \"{prompt}\"",
            "prompt_template",
        ),
        ("layout = \"messages\"\nprompt = \"q\"", "prompt"),
        (
            "layout = \"messages\"\nprompt_template = \"{q}\"",
            "prompt_template",
        ),
        ("format = \"json\"\ndelimiter = \";\"", "delimiter"),
    ];
    for (extra, key) in cases {
        assert_eq!(issue(&format!("{base}{extra}\n")).key, key, "{extra}");
    }
    assert!(config("[ingest]\npath = \"a.csv\"\ndelimiter = \"\\t\"\nlayout = \"messages\"\ncategory = \"c\"\n").delimiter.is_some());
}

#[test]
fn unknown_keys_and_values_are_refused() {
    let err = pick_table::<IngestConfig>("[ingest]\npath = \"a\"\nval_frac = 0.1\n", "ingest")
        .unwrap_err();
    assert!(err.message().contains("unknown field `val_frac`"), "{err}");
    let err =
        pick_table::<IngestConfig>("[ingest]\npath = \"a\"\nencoding = \"latin1\"\n", "ingest")
            .unwrap_err();
    assert!(err.message().contains("unknown variant `latin1`"), "{err}");
}

#[test]
fn templates_parse_placeholders_and_escapes() {
    assert_eq!(
        parse_template("{a}\n{{b}} {c}").unwrap(),
        vec![
            Piece::Field("a".into()),
            Piece::Text("\n{b} ".into()),
            Piece::Field("c".into())
        ]
    );
    assert!(parse_template("{a").is_err());
    assert!(parse_template("{a{b}").is_err());
}

#[test]
fn percentiles_use_nearest_rank() {
    let p = percentiles((1..=100).collect());
    assert_eq!(
        p,
        Percentiles {
            p50: 50,
            p90: 90,
            p99: 99,
            max: 100
        }
    );
    assert_eq!(
        percentiles(vec![7]),
        Percentiles {
            p50: 7,
            p90: 7,
            p99: 7,
            max: 7
        }
    );
}

#[test]
fn auto_layout_prefers_explicit_column_keys_over_a_chat() {
    let names = [
        "messages".to_string(),
        "instruction".into(),
        "output".into(),
    ];
    let base = "[ingest]\npath = \"a.jsonl\"\n";
    assert_eq!(choose_layout(&config(base), &names), Layout::Messages);
    let with_system = config(&format!("{base}system = \"sys\"\n"));
    assert_eq!(choose_layout(&with_system, &names), Layout::Alpaca);
    let with_prompt = config(&format!("{base}prompt = \"instruction\"\n"));
    assert_eq!(choose_layout(&with_prompt, &names), Layout::Columns);
}

/// A manual throughput check: `PIPE_INGEST_BENCH_MB=1000 cargo test -p pipe-stages --lib
/// --release ingest::tests::large_csv -- --ignored --nocapture`.
#[test]
#[ignore]
fn large_csv_throughput() {
    let megabytes: usize = std::env::var("PIPE_INGEST_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let ws = tempfile::tempdir().unwrap();
    let path = ws.path().join("qa.csv");
    let mut out = BufWriter::new(File::create(&path).unwrap());
    writeln!(out, "question,answer,category").unwrap();
    let mut written = 0;
    let mut i = 0usize;
    while written < megabytes << 20 {
        let line = format!(
            "\"What does command number {i}, in section {}, do?\",\"It does thing {i}; \
             see the \"\"manual\"\" for the long explanation of all its options.\",cat{}\n",
            i % 8,
            i % 13
        );
        written += line.len();
        out.write_all(line.as_bytes()).unwrap();
        i += 1;
    }
    out.flush().unwrap();
    let started = std::time::Instant::now();
    let o = run_at(ws.path(), QA, 1).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{megabytes} MB, {} rows in {seconds:.1} s ({:.0} MB/s)",
        o.stats.rows_read,
        megabytes as f64 / seconds
    );
    assert_eq!(o.stats.rows_read, i);
}

/// The pair of every output row, by source row: (prompt, chosen, rejected, system).
fn pairs_of(out: &Outputs) -> Vec<(String, String, String, Option<String>)> {
    out.all()
        .into_iter()
        .map(|e| (e.prompt, e.response, e.rejected.unwrap(), e.system))
        .collect()
}

#[test]
fn preference_columns_are_renamable_and_bad_pairs_are_counted() {
    let csv = "q,good,bad\nwhat is ls?,lists files,deletes files\nwhat is cat?,prints files,prints files\nwhat is rm?,removes files,\nwhat is cp?,copies files,moves files\nwhat is mv?,moves files,copies files\n";
    let toml = "[ingest]\npath = \"p.csv\"\nlayout = \"preference\"\nprompt = \"q\"\nchosen = \"good\"\nrejected = \"bad\"\nval_fraction = 0.34\n";
    let out = run_with(toml, &[("p.csv", csv.as_bytes())], 1).unwrap();
    assert_eq!(
        pairs_of(&out)[0],
        (
            "what is ls?".to_string(),
            "lists files".to_string(),
            "deletes files".to_string(),
            None
        )
    );
    assert_eq!(out.all().len(), 3);
    assert_eq!(out.stats.dropped.same_answers, 1);
    assert_eq!(out.stats.dropped.empty_rejected, 1);
    let stats = std::fs::read_to_string(out.out.path().join(STATS_FILE)).unwrap();
    assert!(stats.contains("\"same_answers\": 1"), "{stats}");
    assert!(!out.val.is_empty() && !out.train.is_empty());
}

#[test]
fn preference_is_detected_from_chosen_and_rejected_columns() {
    let csv = "prompt,chosen,rejected\na?,yes,no\nb?,up,down\nc?,left,right\n";
    let out = run_with(
        "[ingest]\npath = \"p.csv\"\n",
        &[("p.csv", csv.as_bytes())],
        1,
    )
    .unwrap();
    assert_eq!(out.stats.layout, "preference");
    assert_eq!(pairs_of(&out)[1].2, "down");
    // Other layouts' rows keep their ids and stats: no rejected answer, no new drop counts.
    let plain = run_with(
        "[ingest]\npath = \"p.csv\"\nresponse = \"chosen\"\n",
        &[("p.csv", csv.as_bytes())],
        1,
    )
    .unwrap();
    assert!(plain.all().iter().all(|e| e.rejected.is_none()));
    let stats = std::fs::read_to_string(plain.out.path().join(STATS_FILE)).unwrap();
    assert!(!stats.contains("same_answers"), "{stats}");
}

#[test]
fn orca_dpo_pairs_form_reads_question_and_system() {
    let jsonl = concat!(
        r#"{"system": "be brief", "question": "what is ls?", "chosen": "lists files", "rejected": "no idea"}"#,
        "\n",
        r#"{"system": "", "question": "what is df?", "chosen": "disk free", "rejected": "a file"}"#,
        "\n",
        r#"{"system": "be brief", "question": "what is du?", "chosen": "disk usage", "rejected": "dunno"}"#,
        "\n"
    );
    let out = run_with(
        "[ingest]\npath = \"orca.jsonl\"\n",
        &[("orca.jsonl", jsonl.as_bytes())],
        1,
    )
    .unwrap();
    let pairs = pairs_of(&out);
    assert_eq!(
        pairs[0],
        (
            "what is ls?".into(),
            "lists files".into(),
            "no idea".into(),
            Some("be brief".into())
        )
    );
    assert_eq!(pairs[1].3, None);
}

#[test]
fn trl_conversational_form_takes_the_shared_turns_as_the_prompt() {
    let jsonl = concat!(
        r#"{"chosen": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello!"}], "rejected": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi?"}, {"role": "assistant", "content": "go away"}]}"#,
        "\n",
        r#"{"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}"#,
        "\n",
        r#"{"chosen": [{"role": "user", "content": "sky?"}, {"role": "assistant", "content": "blue"}], "rejected": [{"role": "user", "content": "sky?"}, {"role": "assistant", "content": "green"}]}"#,
        "\n",
        r#"{"prompt": [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "red"}, {"role": "user", "content": "another?"}], "chosen": [{"role": "assistant", "content": "blue"}], "rejected": [{"role": "assistant", "content": "red"}]}"#,
        "\n"
    );
    let out = run_with(
        "[ingest]\npath = \"trl.jsonl\"\nlayout = \"preference\"\n",
        &[("trl.jsonl", jsonl.as_bytes())],
        1,
    )
    .unwrap();
    let pairs = pairs_of(&out);
    assert_eq!(
        pairs[0],
        (
            "hi?".into(),
            "hello!".into(),
            "go away".into(),
            Some("be kind".into())
        )
    );
    assert_eq!(pairs[1], ("2+2?".into(), "4".into(), "5".into(), None));
    // A multi-turn prompt: the last question is the prompt, the turns before it its history.
    let multi = out
        .all()
        .into_iter()
        .find(|r| r.prompt == "another?")
        .unwrap();
    assert_eq!(
        multi.history,
        vec![
            ChatMessage::user("name a colour"),
            ChatMessage::assistant("red")
        ]
    );
    assert!(out
        .all()
        .iter()
        .filter(|r| r.prompt != "another?")
        .all(|r| r.history.is_empty()));
    let bad = r#"{"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "x"}]}"#;
    let err = run_err(
        "[ingest]\npath = \"bad.jsonl\"\nlayout = \"preference\"\n",
        &[("bad.jsonl", format!("{bad}\n{bad}\n").as_bytes())],
    );
    assert!(
        err.contains("bad.jsonl") && err.contains("assistant answer"),
        "{err}"
    );
}

#[test]
fn preference_keys_are_checked() {
    let i = issue("[ingest]\npath = \"a.csv\"\nlayout = \"columns\"\nchosen = \"c\"\n");
    assert_eq!(i.key, "chosen");
    let i = issue("[ingest]\npath = \"a.csv\"\nlayout = \"preference\"\nresponse = \"r\"\n");
    assert_eq!(i.key, "response");
}

#[test]
fn categories_and_filter_keep_rows_and_count_the_rest() {
    let csv = "q,a,cat,level\n\
               a?,1,net,easy\n\
               b?,2,net,hard\n\
               c?,3,files,easy\n\
               d?,4,files,easy\n\
               e?,5,users,easy\n\
               f?,6,net,easy\n";
    let toml = "[ingest]\npath = \"c.csv\"\nprompt = \"q\"\nresponse = \"a\"\ncategory = \"cat\"\n\
                categories = [\"net\", \"files\"]\nfilter = { column = \"level\", values = [\"easy\"] }\n\
                val_fraction = 0.34\n";
    let out = run_with(toml, &[("c.csv", csv.as_bytes())], 1).unwrap();
    let prompts: Vec<String> = out.all().into_iter().map(|e| e.prompt).collect();
    assert_eq!(prompts, ["a?", "c?", "d?", "f?"]);
    let filtered = out.stats.filtered.unwrap();
    assert_eq!(
        (filtered.by_category, filtered.by_filter, filtered.kept),
        (1, 1, 4)
    );
    let stats = std::fs::read_to_string(out.out.path().join(STATS_FILE)).unwrap();
    assert!(stats.contains("\"by_category\": 1"), "{stats}");
    assert!(
        out.lines.iter().any(|l| l.contains("kept 4 of 6 rows")),
        "{:?}",
        out.lines
    );

    // Without either key, stats.json has no `filtered` entry (the file is as before).
    let plain = run_with(
        "[ingest]\npath = \"c.csv\"\nprompt = \"q\"\nresponse = \"a\"\n",
        &[("c.csv", csv.as_bytes())],
        1,
    )
    .unwrap();
    assert!(plain.stats.filtered.is_none());

    let err = run_err(
        "[ingest]\npath = \"c.csv\"\nprompt = \"q\"\nresponse = \"a\"\nfilter = { column = \"levle\", values = [\"easy\"] }\n",
        &[("c.csv", csv.as_bytes())],
    );
    assert!(err.contains("levle") && err.contains("level"), "{err}");
    assert_eq!(
        issue("[ingest]\npath = \"c.csv\"\ncategories = [\"net\"]\n").key,
        "categories"
    );
    assert_eq!(
        issue("[ingest]\npath = \"c.csv\"\ncategory = \"cat\"\nfilter = { column = \"level\", values = [] }\n").key,
        "filter.values"
    );
}
