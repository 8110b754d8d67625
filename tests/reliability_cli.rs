//! Regressions of issue 16 through the real `pipe` binary that need no model run: what the
//! cache key covers (a judge's files, a `cp -p` over the dataset).

mod support;

use support::{tiny_workspace, Ws};

const PIPELINE: &str = r#"
[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"

[model]
path = "tiny"

[sft]
max_steps = 1

[generate]

[score]

[score.command]
argv = ["python3", "judges/judge", "--prompt=judges/prompt.txt", "JUDGE_ABS"]
"#;

/// The key `pipe status` shows for `stage`.
fn key_of(ws: &Ws, stage: &str) -> String {
    let status = ws.ok(&["status"]).stdout;
    let line = status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .unwrap_or_else(|| panic!("no `{stage}` in\n{status}"));
    line.split_whitespace()
        .find(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no key in {line}"))
        .to_string()
}

/// Issue 16: score hashed only relative paths with a known extension, so a judge named by an
/// absolute path or a script without an extension could change while status said "cached".
#[test]
fn every_judge_file_in_argv_is_part_of_the_score_key() {
    let outside = tempfile::tempdir().unwrap();
    let absolute = outside.path().join("rubric.txt");
    std::fs::write(&absolute, "be brief").unwrap();
    let ws = tiny_workspace(&PIPELINE.replace("JUDGE_ABS", &absolute.to_string_lossy()));
    ws.write("judges/judge", "import sys\nfor _ in sys.stdin: print(1)\n");
    ws.write("judges/prompt.txt", "Rate it.");
    let first = key_of(&ws, "score");
    let generate = key_of(&ws, "generate");
    ws.write("judges/judge", "import sys\nfor _ in sys.stdin: print(0)\n");
    let edited_script = key_of(&ws, "score");
    assert_ne!(first, edited_script, "an extensionless script");
    ws.write("judges/prompt.txt", "Rate it harshly.");
    let edited_option = key_of(&ws, "score");
    assert_ne!(
        edited_script, edited_option,
        "a file given as --option=path"
    );
    std::fs::write(&absolute, "be very brief").unwrap();
    let edited_absolute = key_of(&ws, "score");
    assert_ne!(edited_option, edited_absolute, "an absolute path");
    assert_eq!(key_of(&ws, "generate"), generate, "only score's key moves");
}

/// Issue 16: the digest cache keyed on (size, mtime, inode), so a `cp -p` of a same-size file
/// over the dataset kept ingest "cached".
#[test]
fn a_same_size_cp_p_over_the_dataset_changes_the_key() {
    let ws = tiny_workspace(PIPELINE);
    let before = key_of(&ws, "ingest");
    let data = ws.path("data/qa.csv");
    let text = std::fs::read_to_string(&data).unwrap();
    let swapped = text.replacen("ls", "sl", 1);
    assert_eq!(swapped.len(), text.len());
    let copy = ws.path("other.csv");
    std::fs::write(&copy, swapped).unwrap();
    // Same size, and cp -p gives it the old mtime back: only the ctime tells.
    let stamp = std::fs::metadata(&data).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let status = std::process::Command::new("cp")
        .arg("-p")
        .arg(&copy)
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::metadata(&data).unwrap().modified().unwrap(), stamp);
    assert_ne!(key_of(&ws, "ingest"), before);
}
