//! Regressions of issue 16 through the real `pipe` binary that need no model run: what the
//! cache key covers (a judge's files, a `cp -p` over the dataset), a moved hub ref, a closed stdout.

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

/// Issue 16: later stages re-resolved `hf:org/name` through the branch, so a moved ref changed
/// the weights they trained on under unchanged keys. They now load the commit model.json
/// recorded, and the device `auto` resolved to is part of the key.
#[test]
fn a_moved_hub_ref_does_not_change_the_model_later_stages_load() {
    let pipeline = r#"
[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"

[model]
path = "hf:TinyOrg/tiny"

[sft]
max_steps = 1
"#;
    let ws = tiny_workspace(pipeline);
    let repo = ws.path("hub/models--TinyOrg--tiny");
    let (first, second) = ("a".repeat(40), "b".repeat(40));
    pipe_stages::testkit::write_tiny_model(&repo.join("snapshots").join(&first), 1).unwrap();
    ws.write("hub/models--TinyOrg--tiny/refs/main", &first);
    let run = |args: &[&str]| {
        let out = ws
            .command(args)
            .env("HF_HUB_CACHE", ws.path("hub"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pipe {args:?} failed:\n{text}");
        text
    };
    run(&["run"]);
    let model_dir = ws.path("artifacts/model").join(&ws.entries("model")[0]);
    let info = std::fs::read_to_string(model_dir.join("model.json")).unwrap();
    assert!(
        info.contains(&format!("\"revision\": \"{first}\"")),
        "{info}"
    );
    assert!(info.contains("\"device\": \"cpu\""), "{info}");
    let manifest = std::fs::read_to_string(model_dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"device\": \"cpu\""), "{manifest}");

    // The branch moves to a commit whose snapshot is no model at all: a stage that followed
    // it would fail to load.
    std::fs::create_dir_all(repo.join("snapshots").join(&second)).unwrap();
    ws.write(
        &format!("hub/models--TinyOrg--tiny/snapshots/{second}/config.json"),
        "{}",
    );
    ws.write("hub/models--TinyOrg--tiny/refs/main", &second);
    let rerun = run(&["run", "-s", "sft.max_steps=2"]);
    assert_eq!(ws.entries("model").len(), 1, "model stays cached:\n{rerun}");
    assert_eq!(
        ws.entries("sft").len(),
        2,
        "sft trained on the recorded commit:\n{rerun}"
    );
}

/// `pipe dag | head -0`: a reader that went away ends pipe quietly with 141 (as SIGPIPE would),
/// not with a panic reported as an internal error.
#[test]
fn a_closed_stdout_ends_quietly() {
    let ws = tiny_workspace(PIPELINE);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = ws.command(&["dag"]).stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
}
