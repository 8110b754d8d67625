//! The real `pipe` binary on the ingest stage: the demo pipeline, caching by content, config
//! overrides, and every kind of bad input a user will hit, each with its exit code and message.

mod support;

use support::{pipe_bin, strs, Ws};

const DEMO_CSV: &str = include_str!("../data/unix_manual_qa.csv");

const PIPELINE: &str = r#"
[project]
name = "qa"

[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"
category = "category"
"#;

fn ws_with(csv: &[u8]) -> Ws {
    let ws = Ws::new(pipe_bin(), PIPELINE);
    ws.write("data/qa.csv", csv);
    ws
}

fn lines(ws: &Ws, file: &str) -> Vec<serde_json::Value> {
    let key = &ws.entries("ingest")[0];
    let text = std::fs::read_to_string(ws.path("artifacts/ingest").join(key).join(file)).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_repository_pipeline_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(pipe_bin())
        .args([
            "--config",
            root.join("pipeline.toml").to_str().unwrap(),
            "run",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_data_ingests_splits_and_caches() {
    let ws = ws_with(DEMO_CSV.as_bytes());
    let r = ws.ok(&["run"]);
    assert_eq!(r.ran(), strs(&["ingest"]));
    let (train, val) = (lines(&ws, "train.jsonl"), lines(&ws, "val.jsonl"));
    assert_eq!(train.len() + val.len(), 664);
    assert!((125..=140).contains(&val.len()), "val {}", val.len());
    assert!(train[0]["prompt"].as_str().unwrap().starts_with("What"));

    let again = ws.ok(&["run"]);
    assert!(again.ran().is_empty(), "{}", again.all());
    assert_eq!(again.cached(), strs(&["ingest"]));

    let show = ws.ok(&["show", "ingest"]);
    assert!(
        show.stdout.contains("train.jsonl") && show.stdout.contains("sample rows"),
        "{}",
        show.stdout
    );
}

#[test]
fn val_fraction_change_reruns_ingest_and_touch_does_not() {
    let ws = ws_with(DEMO_CSV.as_bytes());
    ws.ok(&["run"]);
    let r = ws.ok(&["run", "-s", "ingest.val_fraction=0.1"]);
    assert_eq!(r.ran(), strs(&["ingest"]));
    assert_eq!(ws.entries("ingest").len(), 2);

    std::thread::sleep(std::time::Duration::from_millis(20));
    ws.write("data/qa.csv", DEMO_CSV);
    let r = ws.ok(&["run"]);
    assert!(r.ran().is_empty(), "touch must not re-run: {}", r.all());

    let mut changed = DEMO_CSV.as_bytes().to_vec();
    let last = changed.len() - 2;
    changed[last] = b'X';
    ws.write("data/qa.csv", changed);
    let status = ws.ok(&["status"]);
    assert!(
        status.stdout.contains("input file data/qa.csv changed"),
        "{}",
        status.stdout
    );
    let r = ws.ok(&["run"]);
    assert_eq!(r.ran(), strs(&["ingest"]));
}

fn fails(ws: &Ws, code: i32, needles: &[&str]) {
    let r = ws.run(&["run"]);
    assert_eq!(r.code, code, "{}", r.all());
    for n in needles {
        assert!(r.stderr.contains(n), "missing {n:?} in:\n{}", r.stderr);
    }
    assert!(
        ws.entries("ingest").is_empty(),
        "a failed ingest must not commit"
    );
}

#[test]
fn missing_file_is_a_config_error() {
    let ws = Ws::new(pipe_bin(), PIPELINE);
    fails(
        &ws,
        2,
        &["stage `ingest` reads data/qa.csv, which does not exist"],
    );
}

#[test]
fn empty_and_header_only_csv_are_refused() {
    fails(&ws_with(b""), 1, &["data/qa.csv", "empty"]);
    fails(
        &ws_with(b"question,answer,category\n"),
        1,
        &["data/qa.csv", "no data rows"],
    );
}

#[test]
fn missing_column_lists_the_columns() {
    let ws = ws_with(b"question,answr,category\nq,a,c\n");
    fails(&ws, 1, &["`answer`", "question, answr, category"]);
}

#[test]
fn undecodable_bytes_name_the_row_and_encodings() {
    let mut csv = b"question,answer,category\nq1,a1,c\nq2,".to_vec();
    csv.extend_from_slice(&[0xff, 0xfe, 0xff]);
    csv.extend_from_slice(b",c\n");
    let ws = ws_with(&csv);
    ws.write(
        "pipeline.toml",
        PIPELINE.replace(
            "category = \"category\"",
            "category = \"category\"\nencoding = \"utf-8\"",
        ),
    );
    fails(&ws, 1, &["data/qa.csv", "utf-8"]);
}

#[test]
fn ragged_rows_name_the_line() {
    let ws = ws_with(b"question,answer,category\nq1,a1,c\nq2,a2\n");
    fails(&ws, 1, &["data/qa.csv", "line 3"]);
}

#[test]
fn korean_cp949_is_detected() {
    let text = "question,answer,category\n한국어 질문입니까?,네 그렇습니다.,ko\n두 번째 질문?,두 번째 답.,ko\n";
    let (bytes, _, bad) = encoding_rs::EUC_KR.encode(text);
    assert!(!bad);
    let ws = ws_with(&bytes);
    ws.ok(&["run"]);
    let all: Vec<serde_json::Value> = [lines(&ws, "train.jsonl"), lines(&ws, "val.jsonl")].concat();
    assert!(
        all.iter().any(|r| r["prompt"] == "한국어 질문입니까?"),
        "{all:?}"
    );
}

#[test]
fn config_mistakes_are_located() {
    let ws = ws_with(DEMO_CSV.as_bytes());
    ws.write(
        "pipeline.toml",
        PIPELINE.replace("category = \"category\"", "val_fractoin = 0.1"),
    );
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("pipeline.toml:9:1: unknown key `val_fractoin` in [ingest]"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("did you mean `val_fraction`?"),
        "{}",
        r.stderr
    );
    ws.write("pipeline.toml", PIPELINE);
    let r = ws.run(&["run", "-s", "ingest.val_fraction=1.5"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("invalid `ingest.val_fraction`"),
        "{}",
        r.stderr
    );
}
