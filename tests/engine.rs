//! The engine through a real process: caching, staleness, selection, gc, locking, crashes and
//! config errors, on the testkit's small stages (source -> upper -> count, source -> side).

mod support;

use std::time::{Duration, Instant};

use support::{strs, testkit_bin, Ws};

const PIPELINE: &str = r#"
[project]
name = "t"

[source]
path = "input.txt"

[upper]
suffix = "!"

[count]

[side]
"#;

fn ws() -> Ws {
    let ws = Ws::new(testkit_bin(), PIPELINE);
    ws.write("input.txt", "hello");
    ws
}

fn set_pipeline(ws: &Ws, text: &str) {
    ws.write("pipeline.toml", text);
}

#[test]
fn second_run_runs_nothing() {
    let ws = ws();
    let first = ws.ok(&["run"]);
    assert_eq!(first.ran(), strs(&["count", "side", "source", "upper"]));
    let second = ws.ok(&["run"]);
    assert!(second.ran().is_empty(), "{}", second.all());
    assert_eq!(second.cached(), strs(&["count", "side", "source", "upper"]));
    let count = std::fs::read_to_string(
        ws.path("artifacts/count")
            .join(&ws.entries("count")[0])
            .join("count.jsonl"),
    )
    .unwrap();
    assert_eq!(count.trim(), "{\"chars\": 6}");
}

#[test]
fn config_change_reruns_the_stage_and_downstream_only() {
    let ws = ws();
    ws.ok(&["run"]);
    set_pipeline(&ws, &PIPELINE.replace("suffix = \"!\"", "suffix = \"?\""));
    let status = ws.ok(&["status"]);
    assert!(
        status
            .stdout
            .contains("config upper.suffix: \"!\" -> \"?\""),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("upstream `upper` changed"),
        "{}",
        status.stdout
    );
    let r = ws.ok(&["run"]);
    assert_eq!(r.ran(), strs(&["count", "upper"]));
    assert_eq!(r.cached(), strs(&["side", "source"]));
}

#[test]
fn override_behaves_like_an_edit_and_is_checked() {
    let ws = ws();
    ws.ok(&["run"]);
    let r = ws.ok(&["run", "-s", "upper.suffix=?"]);
    assert_eq!(r.ran(), strs(&["count", "upper"]));
    let bad = ws.run(&["run", "-s", "upper.sufix=?"]);
    assert_eq!(bad.code, 2, "{}", bad.all());
    assert!(
        bad.stderr
            .contains("-s upper.sufix=?: unknown key `sufix` in [upper]"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("did you mean `suffix`?"),
        "{}",
        bad.stderr
    );
    let bad = ws.run(&["run", "-s", "source.repeat=many"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("wrong type"), "{}", bad.stderr);
    let bad = ws.run(&["run", "-s", "source.repeat=1000"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("invalid `source.repeat`: must be at most 100"),
        "{}",
        bad.stderr
    );
}

#[test]
fn input_bytes_rerun_and_touch_does_not() {
    let ws = ws();
    ws.ok(&["run"]);
    // same content, new mtime: re-hashed, same key, nothing runs
    std::thread::sleep(Duration::from_millis(20));
    ws.write("input.txt", "hello");
    let r = ws.ok(&["run"]);
    assert!(r.ran().is_empty(), "{}", r.all());
    ws.write("input.txt", "hellO");
    let status = ws.ok(&["status"]);
    assert!(
        status.stdout.contains("input file input.txt changed"),
        "{}",
        status.stdout
    );
    let r = ws.ok(&["run"]);
    assert_eq!(r.ran(), strs(&["count", "side", "source", "upper"]));
}

#[test]
fn from_reruns_downstream_and_reuses_stale_ancestors_saying_so() {
    let ws = ws();
    ws.ok(&["run"]);
    ws.write("input.txt", "changed");
    let r = ws.ok(&["run", "--from", "upper"]);
    assert_eq!(r.ran(), strs(&["count", "upper"]));
    assert_eq!(r.reused(), strs(&["source"]));
    assert!(
        r.stdout
            .contains("although stale: input file input.txt changed"),
        "{}",
        r.stdout
    );
    // upper re-ran on the old source: its output still says HELLO!
    let upper = ws.entries("upper");
    let texts: Vec<String> = upper
        .iter()
        .map(|k| {
            std::fs::read_to_string(ws.path("artifacts/upper").join(k).join("data.txt")).unwrap()
        })
        .collect();
    assert!(texts.contains(&"HELLO!".to_string()), "{texts:?}");
}

#[test]
fn from_needs_ancestors_that_ran() {
    let ws = ws();
    let r = ws.run(&["run", "--from", "upper"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("`source` has never run; run `pipe run --to source` first"),
        "{}",
        r.stderr
    );
    let r = ws.run(&["run", "--from", "uper"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no such stage") && r.stderr.contains("did you mean `upper`?"),
        "{}",
        r.stderr
    );
}

#[test]
fn to_only_and_dry_run_select() {
    let ws = ws();
    let r = ws.ok(&["run", "--dry-run"]);
    assert!(r.ran().is_empty());
    assert_eq!(r.stdout.matches("would run").count(), 4, "{}", r.stdout);
    assert!(
        ws.entries("source").is_empty(),
        "dry run must not run anything"
    );

    let r = ws.ok(&["run", "--to", "upper"]);
    assert_eq!(r.ran(), strs(&["source", "upper"]));
    let r = ws.ok(&["run", "--only", "side"]);
    assert_eq!(r.ran(), strs(&["side"]));
    assert_eq!(r.reused(), strs(&["source"]));
    let r = ws.ok(&["run", "--only", "side"]);
    assert!(r.ran().is_empty(), "cached --only stage must not re-run");
    let r = ws.ok(&["run", "--only", "side", "--force"]);
    assert_eq!(r.ran(), strs(&["side"]));
    let r = ws.ok(&["run"]);
    assert_eq!(r.ran(), strs(&["count"]));
}

#[test]
fn gc_lists_then_deletes_only_with_yes_keeping_the_latest() {
    let ws = ws();
    ws.ok(&["run"]);
    ws.ok(&["run", "-s", "upper.suffix=1"]);
    ws.ok(&["run", "-s", "upper.suffix=2"]);
    assert_eq!(ws.entries("upper").len(), 3);
    // No terminal to ask on: it lists, deletes nothing, and says how to go ahead.
    let refused = ws.run(&["gc"]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(
        refused.stdout.contains("would delete 2 artifact(s)"),
        "{}",
        refused.stdout
    );
    assert!(refused.stderr.contains("pass --yes"), "{}", refused.stderr);
    assert_eq!(ws.entries("upper").len(), 3);
    let dry = ws.ok(&["gc", "--dry-run"]);
    assert!(dry.stdout.contains("would delete upper/"), "{}", dry.stdout);
    assert_eq!(ws.entries("upper").len(), 3);
    // Kept: the current entries and the latest of each stage (suffix 2).
    ws.ok(&["gc", "--yes"]);
    assert_eq!(ws.entries("upper").len(), 2);
    assert!(ws.ok(&["run"]).ran().is_empty());
    assert!(ws.ok(&["run", "-s", "upper.suffix=2"]).ran().is_empty());
    // --all keeps only what the pipeline as configured uses.
    ws.ok(&["gc", "--all", "--yes"]);
    assert_eq!(ws.entries("upper").len(), 1);
    let r = ws.ok(&["run"]);
    assert!(
        r.ran().is_empty(),
        "gc must keep the current artifacts: {}",
        r.all()
    );
}

/// Issue 16: `pipe gc` without the `-s` of the run took "current" from its own overrides and
/// deleted the whole trained chain and a resumable checkpoint, without asking.
#[test]
fn gc_without_the_runs_overrides_keeps_its_chain_and_young_checkpoints() {
    let ws = ws();
    ws.ok(&["run", "-s", "upper.suffix=trained"]);
    let checkpoint = ws.path("artifacts/.partial/count/0123456789abcdef/checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(checkpoint.join("state.json"), "{}").unwrap();
    let r = ws.ok(&["gc", "--yes"]);
    assert!(r.stdout.contains("nothing to delete"), "{}", r.stdout);
    assert!(checkpoint.exists());
    assert!(ws
        .ok(&["run", "-s", "upper.suffix=trained"])
        .ran()
        .is_empty());
    // An upstream of a kept artifact is kept too, even when it is not its stage's latest.
    ws.ok(&["run", "--only", "upper", "-s", "upper.suffix=newer"]);
    ws.ok(&["gc", "--yes"]);
    assert!(ws
        .ok(&["run", "-s", "upper.suffix=trained"])
        .ran()
        .is_empty());
    // --all also deletes checkpoints younger than a day.
    ws.ok(&["gc", "--all", "--yes"]);
    assert!(!checkpoint.exists());
}

/// Issue 16: gc trusted `manifest.key` where lookup trusts the directory name, so an edited
/// manifest let gc delete an entry in use. The directory name is the identity: a manifest that
/// disagrees makes the entry corrupt, which gc reports and never deletes.
#[test]
fn a_manifest_disagreeing_with_its_directory_is_corrupt_and_never_deleted() {
    let ws = ws();
    ws.ok(&["run"]);
    let key = ws.entries("upper")[0].clone();
    let manifest = ws.path("artifacts/upper").join(&key).join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace(&key, "00000000deadbeef")).unwrap();
    let status = ws.ok(&["status"]);
    assert!(
        status.stdout.contains(&format!(
            "upper      corrupt    {key} (its manifest names key `00000000deadbeef`"
        )),
        "{}",
        status.stdout
    );
    let gc = ws.ok(&["gc", "--all", "--yes"]);
    assert!(
        gc.stdout.contains(&format!("corrupt upper/{key}")) && gc.stdout.contains("left in place"),
        "{}",
        gc.stdout
    );
    assert!(manifest.exists());
    // A run rebuilds it (under the same key: count, keyed by that key, stays cached).
    let r = ws.ok(&["run"]);
    assert_eq!(r.ran(), strs(&["upper"]));
}

/// Issue 16: a same-size corruption of an artifact stayed "cached" until a downstream stage
/// failed on it. `status --verify` and `pipe verify` re-hash outputs; a run re-hashes what it
/// reads, and rebuilds a corrupt upstream with a line that says so.
#[test]
fn same_size_corruption_is_found_by_verify_and_rebuilt_by_a_run() {
    let ws = ws();
    ws.ok(&["run"]);
    let key = ws.entries("upper")[0].clone();
    let data = ws.path("artifacts/upper").join(&key).join("data.txt");
    let text = std::fs::read_to_string(&data).unwrap();
    assert_eq!(text, "HELLO!");
    std::fs::write(&data, "NANNA!").unwrap();
    let plain = ws.ok(&["status"]);
    assert!(
        plain.stdout.contains("upper      cached"),
        "{}",
        plain.stdout
    );
    let verified = ws.ok(&["status", "--verify"]);
    assert!(
        verified.stdout.contains(&format!(
            "upper      corrupt    {key} (data.txt does not match its blake3 digest in the manifest)"
        )),
        "{}",
        verified.stdout
    );
    // A run that reads it (count re-runs) rebuilds it first.
    let r = ws.ok(&["run", "--force", "--only", "count"]);
    assert!(
        r.stdout.contains("upper      running")
            && r.stdout
                .contains("its artifact is corrupt: data.txt does not match"),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "HELLO!");
    // `pipe verify` checks the whole store, marks what is corrupt, and fails.
    ws.ok(&["verify"]);
    std::fs::write(&data, "HELLO?").unwrap();
    let v = ws.run(&["verify"]);
    assert_eq!(v.code, 1, "{}", v.all());
    assert!(
        v.stdout
            .contains(&format!("corrupt upper/{key} (data.txt does not match")),
        "{}",
        v.stdout
    );
    let status = ws.ok(&["status"]);
    assert!(
        status.stdout.contains(&format!(
            "upper      corrupt    {key} (marked corrupt: data.txt"
        )),
        "{}",
        status.stdout
    );
    // gc lists what pipe marked corrupt with the rest.
    let gc = ws.ok(&["gc", "--dry-run"]);
    assert!(
        gc.stdout.contains(&format!(
            "would delete upper/{key} (marked corrupt: data.txt"
        )),
        "{}",
        gc.stdout
    );
    assert_eq!(ws.ok(&["run"]).ran(), strs(&["upper"]));
}

/// Issue 16: status said "never run" for an entry that exists but is broken.
#[test]
fn status_says_corrupt_for_an_entry_with_a_missing_output() {
    let ws = ws();
    ws.ok(&["run"]);
    let key = ws.entries("source")[0].clone();
    std::fs::remove_file(ws.path("artifacts/source").join(&key).join("data.txt")).unwrap();
    let status = ws.ok(&["status"]);
    assert!(
        status.stdout.contains(&format!(
            "source     corrupt    {key} (data.txt is missing)"
        )),
        "{}",
        status.stdout
    );
}

const SLEEPY: &str = "[sleep]\nseconds = 30\n";

fn wait_for(path: &std::path::Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_run_is_refused_naming_the_holder() {
    let ws = Ws::new(testkit_bin(), SLEEPY);
    let mut first = ws
        .command(&["run"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&ws.path("sleep.started"));
    let second = ws.run(&["run"]);
    first.kill().unwrap();
    let _ = first.wait();
    assert_ne!(second.code, 0);
    assert!(
        second
            .stderr
            .contains(&format!("another pipe run (pid {})", first.id())),
        "{}",
        second.stderr
    );
}

#[test]
fn sigkill_mid_stage_leaves_no_entry_and_the_next_run_redoes_it() {
    let ws = Ws::new(testkit_bin(), SLEEPY);
    let mut child = ws
        .command(&["run"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&ws.path("sleep.started"));
    child.kill().unwrap(); // SIGKILL on unix
    let _ = child.wait();
    assert!(
        ws.entries("sleep").is_empty(),
        "a killed stage must not leave an entry"
    );
    let status = ws.ok(&["status"]);
    assert!(
        status.stdout.contains("sleep      never run"),
        "{}",
        status.stdout
    );
    set_pipeline(&ws, "[sleep]\nseconds = 30\n"); // same key
    ws.write("pipeline.toml", "[sleep]\nseconds = 0.01\n");
    let r = ws.ok(&["run"]);
    assert_eq!(r.ran(), strs(&["sleep"]));
    assert!(!ws
        .path("artifacts/.tmp")
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false));
}

#[test]
fn stage_failure_exits_1_and_commits_nothing() {
    let ws = Ws::new(testkit_bin(), "[sleep]\nseconds = 0\nfail = true\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("stage `sleep` failed: sleep was asked to fail (row 3, column `x`)"),
        "{}",
        r.stderr
    );
    assert!(ws.entries("sleep").is_empty());
    let ws = Ws::new(testkit_bin(), "[sleep]\nseconds = 0\npanic = true\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("panicked: sleep was asked to panic"),
        "{}",
        r.stderr
    );
}

#[test]
fn failure_skips_downstream() {
    let ws = ws();
    ws.write("input.txt", "x");
    std::fs::remove_file(ws.path("input.txt")).unwrap();
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("stage `source` reads input.txt, which does not exist"),
        "{}",
        r.stderr
    );
}

#[test]
fn config_errors_are_located() {
    let ws = Ws::new(testkit_bin(), "[source]\npath = \"input.txt\"\nrepet = 3\n");
    let r = ws.run(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("pipeline.toml:3:1: unknown key `repet` in [source]"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("did you mean `repeat`?"), "{}", r.stderr);

    let ws = Ws::new(testkit_bin(), "[source]\npath = 3\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("pipeline.toml:2:8: wrong type for `source.path`"),
        "{}",
        r.stderr
    );

    let ws = Ws::new(testkit_bin(), "[upper]\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("pipeline.toml:1:2: [upper] `source` reads `source` (by default), but the pipeline has no instance `source`"),
        "{}",
        r.stderr
    );

    let ws = Ws::new(testkit_bin(), "[source]\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("missing required key `path` in [source]"),
        "{}",
        r.stderr
    );

    let ws = Ws::new(testkit_bin(), "[source\npath = 1\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("pipeline.toml:1:"), "{}", r.stderr);

    let r = ws.run(&["--config", "nope.toml", "run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("nope.toml: no such file; run `pipe init`"),
        "{}",
        r.stderr
    );
}

#[test]
fn show_dag_and_init() {
    let ws = ws();
    ws.ok(&["run"]);
    let show = ws.ok(&["show", "count"]);
    assert!(show.stdout.contains("(current)"), "{}", show.stdout);
    assert!(show.stdout.contains("count.jsonl"), "{}", show.stdout);
    assert!(
        show.stdout.contains("sample rows of count.jsonl"),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("{\"chars\": 6}"), "{}", show.stdout);
    let key = &ws.entries("count")[0];
    let json = ws.ok(&["show", "count", "--key", &key[..6], "--json"]);
    let manifest: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(manifest["key"], key.as_str());
    let source = ws.ok(&["show", "source"]);
    assert!(
        source.stdout.contains("bytes"),
        "metrics are shown: {}",
        source.stdout
    );

    assert!(ws
        .ok(&["dag", "--dot"])
        .stdout
        .contains("\"source\" -> \"upper\";"));
    assert!(ws
        .ok(&["dag", "--mermaid"])
        .stdout
        .contains("upper --> count"));
    assert!(ws
        .ok(&["dag"])
        .stdout
        .contains("count      counts upper's characters <- upper"));

    let fresh = Ws::new(testkit_bin(), "");
    std::fs::remove_file(fresh.path("pipeline.toml")).unwrap();
    fresh.ok(&["init"]);
    let text = std::fs::read_to_string(fresh.path("pipeline.toml")).unwrap();
    assert!(
        text.contains("[project]") && text.contains("[sleep]"),
        "{text}"
    );
    assert_eq!(fresh.run(&["init"]).code, 2, "init must not overwrite");
    fresh.ok(&["dag"]);
}

#[test]
fn quiet_prints_nothing_on_success() {
    let ws = ws();
    let r = ws.ok(&["-q", "run"]);
    assert!(r.stdout.trim().is_empty(), "{}", r.stdout);
    let r = ws.ok(&["run", "-v"]);
    assert_eq!(r.cached().len(), 4);
}

/// Issue 16: a panic outside a stage run (here in a stage's `show`) escaped with exit 101 and
/// Rust's panic message. Every command reports it as an internal error with the command line.
#[test]
fn a_panic_in_any_command_is_an_internal_error_naming_the_command_line() {
    let ws = Ws::new(testkit_bin(), "[sleep]\nseconds = 0\nshow_panics = true\n");
    ws.ok(&["run"]);
    let r = ws.run(&["show", "sleep"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("error: internal error (a bug in pipe): sleep's show was asked to panic")
            && r.stderr.contains("command line: ")
            && r.stderr.contains("show sleep"),
        "{}",
        r.stderr
    );
}

/// Issue 16: `pipe show`'s errors reading a stage's files were labelled `<stdout>`.
#[test]
fn show_names_the_artifact_it_could_not_read() {
    let ws = Ws::new(testkit_bin(), "[sleep]\nseconds = 0\n");
    ws.ok(&["run"]);
    let key = ws.entries("sleep")[0].clone();
    let dir = ws.path("artifacts/sleep").join(&key);
    // Same size, not UTF-8: the entry still counts, the stage's `show` cannot read it.
    std::fs::write(dir.join("done.txt"), b"\xff\xfe\xfd\xfc").unwrap();
    let r = ws.run(&["show", "sleep"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(!r.stderr.contains("<stdout>"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("sleep/{key}: cannot show this artifact")),
        "{}",
        r.stderr
    );
}
