//! `pipe run --sweep` and `pipe compare` through real processes: on the testkit's small stages
//! (value lists, a failing variant that does not stop the others, compare's sorting and
//! formats), and on the real chain ingest → … → orpo with a tiny model, where a sweep over two
//! orpo betas builds every upstream artifact once.

mod support;

use std::sync::LazyLock;

use pipe::compare::Comparison;
use pipe::sweep::{SweepRecord, VariantOutcome};
use support::{testkit_bin, tiny_chain, tiny_workspace, Ws};

const TESTKIT: &str = r#"
[project]
name = "t"

[source]
path = "input.txt"

[upper]
suffix = "!"

[count]

[sleep]
seconds = 0.0
"#;

fn testkit_ws() -> Ws {
    let ws = Ws::new(testkit_bin(), TESTKIT);
    ws.write("input.txt", "hello");
    ws
}

fn read(ws: &Ws, stage: &str, key: &str, file: &str) -> String {
    std::fs::read_to_string(ws.path("artifacts").join(stage).join(key).join(file)).unwrap()
}

fn only_record(ws: &Ws) -> SweepRecord {
    let dir = ws.path("artifacts/.sweeps");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one record in {}", dir.display());
    serde_json::from_str(&std::fs::read_to_string(files[0].path()).unwrap()).unwrap()
}

#[test]
fn a_failing_variant_does_not_stop_the_others() {
    let ws = testkit_ws();
    let r = ws.run(&[
        "run",
        "--sweep",
        "-s",
        "sleep.fail=true,false",
        "-s",
        "upper.suffix=\"?,!\",x",
    ]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains("4 variants, 2 ok, 2 failed"),
        "{}",
        r.all()
    );
    assert!(r.stderr.contains("2 of 4 variants failed"), "{}", r.all());
    assert!(
        r.all().contains("already failed in variant 1"),
        "the same failing key is not run twice:\n{}",
        r.all()
    );
    assert_eq!(ws.entries("source").len(), 1, "{}", r.all());
    let suffixes: Vec<String> = ws
        .entries("upper")
        .iter()
        .map(|k| read(&ws, "upper", k, "data.txt"))
        .collect();
    for expected in ["HELLO?,!", "HELLOx"] {
        assert!(suffixes.contains(&expected.to_string()), "{suffixes:?}");
    }
    let record = only_record(&ws);
    assert_eq!(record.swept, vec!["sleep.fail", "upper.suffix"]);
    let failed: Vec<bool> = record
        .variants
        .iter()
        .map(|v| matches!(v.outcome, VariantOutcome::Failed { .. }))
        .collect();
    assert_eq!(failed, vec![true, true, false, false]);
    assert_eq!(record.variants[2].swept["upper.suffix"], "\"?,!\"");
}

#[test]
fn dry_run_shows_what_variants_share_and_runs_nothing() {
    let ws = testkit_ws();
    let r = ws.ok(&["run", "--sweep", "--dry-run", "-s", "upper.suffix=a,b"]);
    assert!(
        r.stdout.contains("variant 1/2: upper.suffix=a"),
        "{}",
        r.stdout
    );
    let second = r.stdout.split("variant 2/2").nth(1).unwrap();
    for stage in ["source", "sleep"] {
        let line = second
            .lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap();
        assert!(
            line.contains("shared") && line.contains("built by variant 1"),
            "{line}"
        );
    }
    let upper = second
        .lines()
        .find(|l| l.trim_start().starts_with("upper"))
        .unwrap();
    assert!(upper.contains("would run"), "{upper}");
    assert!(
        r.stdout.contains("2 variants: 6 stage runs, 2 shared"),
        "{}",
        r.stdout
    );
    assert!(ws.entries("source").is_empty());
    assert!(!ws.path("artifacts/.sweeps").exists());

    ws.ok(&["run", "--sweep", "-s", "upper.suffix=a"]);
    let r = ws.ok(&["run", "--sweep", "-n", "-s", "upper.suffix=a,b"]);
    let first = r.stdout.split("variant 2/2").next().unwrap();
    assert!(
        first.lines().filter(|l| l.contains(" cached ")).count() == 4,
        "{}",
        r.stdout
    );
}

#[test]
fn a_typo_in_any_variant_fails_before_anything_runs() {
    let ws = testkit_ws();
    let r = ws.run(&["run", "--sweep", "-s", "source.repeat=1,1000"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("source.repeat"), "{}", r.stderr);
    assert!(ws.entries("source").is_empty());
    let r = ws.run(&["run", "--sweep", "-s", "upper.suffix=a,,b"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("empty value"), "{}", r.stderr);
}

#[test]
fn compare_lists_differing_params_sorts_and_round_trips() {
    let ws = testkit_ws();
    ws.ok(&["run", "--to", "source"]);
    ws.ok(&[
        "run",
        "--sweep",
        "-s",
        "source.repeat=2,3",
        "--to",
        "source",
    ]);
    let text = ws.ok(&["compare", "source"]).stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("source: 3 artifact(s), * = 2 of the latest sweep"),
        "{text}"
    );
    assert!(
        lines[1].contains("source.repeat") && lines[1].contains("bytes"),
        "{text}"
    );
    assert!(
        !lines[1].contains("source.path"),
        "equal params are left out:\n{text}"
    );
    assert!(
        lines[2].starts_with('*') && lines[2].contains(" 2 ") && lines[2].ends_with("10"),
        "{text}"
    );
    assert!(
        lines[3].starts_with('*') && lines[3].ends_with("15"),
        "{text}"
    );
    assert!(
        lines[4].starts_with(' ') && lines[4].ends_with('5'),
        "{text}"
    );

    let sorted = ws
        .ok(&["compare", "source", "--sort", "bytes", "--asc"])
        .stdout;
    let order: Vec<&str> = sorted.lines().skip(2).map(|l| l.trim_end()).collect();
    assert!(
        order[0].ends_with("10") && order[1].ends_with("15"),
        "{sorted}"
    );

    let json = ws.ok(&["compare", "source", "--json"]).stdout;
    let parsed: Comparison = serde_json::from_str(&json).unwrap();
    let again = serde_json::to_string_pretty(&parsed).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        serde_json::from_str::<serde_json::Value>(&json).unwrap()
    );
    assert_eq!(parsed.params, vec!["source.repeat"]);
    assert_eq!(parsed.rows.len(), 3);
    assert_eq!(parsed.rows[0].params["source.repeat"], 2);
    assert_eq!(parsed.rows[2].params["source.repeat"], 0);

    let csv = ws.ok(&["compare", "source", "--csv"]).stdout;
    assert_eq!(
        csv.lines().next().unwrap(),
        "key,created,in_sweep,source.repeat,bytes"
    );
    assert_eq!(csv.lines().count(), 4);

    let r = ws.run(&["compare", "source", "--sort", "byts"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("did you mean `bytes`?"), "{}", r.stderr);
    let r = ws.run(&["compare", "count"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no artifacts yet"), "{}", r.stderr);
}

static CHAIN: LazyLock<String> = LazyLock::new(|| {
    tiny_chain(
        r#"

[orpo]
max_steps = 3
batch_size = 2
max_seq_len = 128
eval_every = 3

[orpo.lora]
r = 4
alpha = 8
"#,
    )
});

#[test]
fn a_beta_sweep_builds_the_upstream_chain_once() {
    let ws = tiny_workspace(&CHAIN);
    let dry = ws.ok(&["run", "--sweep", "-n", "-s", "orpo.beta=0.1,0.2"]);
    let second: Vec<&str> = dry
        .stdout
        .split("variant 2/2")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("  "))
        .collect();
    let count = |word: &str| second.iter().filter(|l| l.contains(word)).count();
    assert_eq!(count("shared"), 5, "{}", dry.stdout);
    assert_eq!(count("would run"), 1, "{}", dry.stdout);

    let run = ws.ok(&["run", "--sweep", "-s", "orpo.beta=0.1,0.2"]);
    for (stage, n) in [
        ("ingest", 1),
        ("model", 1),
        ("sft", 1),
        ("generate", 1),
        ("score", 1),
        ("orpo", 2),
    ] {
        assert_eq!(ws.entries(stage).len(), n, "{stage}:\n{}", run.all());
    }
    assert!(
        run.stdout.contains("2 variants, 2 ok, 0 failed"),
        "{}",
        run.stdout
    );
    let record = only_record(&ws);
    assert_eq!(
        record.variants[0].keys["sft"],
        record.variants[1].keys["sft"]
    );
    assert_ne!(
        record.variants[0].keys["orpo"],
        record.variants[1].keys["orpo"]
    );

    let text = ws.ok(&["compare", "orpo"]).stdout;
    assert!(text.contains("orpo.beta"), "{text}");
    for key in ws.entries("orpo") {
        assert!(text.contains(&key), "{key} missing:\n{text}");
    }
    let json = ws.ok(&["compare", "orpo", "--json"]).stdout;
    let parsed: Comparison = serde_json::from_str(&json).unwrap();
    assert_eq!(
        serde_json::to_value(&parsed).unwrap(),
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        "--json round-trips through serde"
    );
    assert_eq!(parsed.params, vec!["orpo.beta"]);
    let betas: Vec<f64> = parsed
        .rows
        .iter()
        .map(|r| r.params["orpo.beta"].as_f64().unwrap())
        .collect();
    assert_eq!(betas, vec![0.1, 0.2], "the sweep's rows in its order");
    for row in &parsed.rows {
        assert!(row.in_sweep);
        for metric in [
            "eval_accuracy_after",
            "eval_margin_after",
            "eval_loss_after",
        ] {
            assert!(row.number(metric).is_some(), "{metric} missing: {row:?}");
        }
    }

    let html = ws.path("compare.html");
    ws.ok(&["compare", "orpo", "--html", html.to_str().unwrap()]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg"), "curves are drawn");
    assert!(
        page.contains("<h4>loss</h4>"),
        "curves are named as in metrics.jsonl"
    );
    assert!(
        page.contains("one artifact, shared by every row"),
        "sft is shared"
    );
    assert_eq!(page.matches("class=\"view\"").count(), 2);
}
