//! Stage instances through a real process, on the testkit's small stages: several instances
//! of a kind, each under its own name everywhere (artifacts, selection, overrides, show,
//! dag), keys that hash kinds not table names, and every bad reference as a located error.

mod support;

use support::{strs, testkit_bin, Ws};

/// Two upper instances on one source, each counted.
const TWO: &str = r#"
[source]
path = "input.txt"

[upper]
suffix = "!"

[shout]
kind = "upper"
suffix = "!!!"

[count]

[count_shout]
kind = "count"
upper = "shout"
"#;

fn two() -> Ws {
    let ws = Ws::new(testkit_bin(), TWO);
    ws.write("input.txt", "hello");
    ws
}

fn count_of(ws: &Ws, instance: &str) -> String {
    let entries = ws.entries(instance);
    std::fs::read_to_string(
        ws.path(&format!("artifacts/{instance}"))
            .join(&entries[0])
            .join("count.jsonl"),
    )
    .unwrap()
    .trim()
    .to_string()
}

#[test]
fn instances_run_under_their_own_names() {
    let ws = two();
    let r = ws.ok(&["run"]);
    assert_eq!(
        r.ran(),
        strs(&["count", "count_shout", "shout", "source", "upper"])
    );
    assert_eq!(count_of(&ws, "count"), "{\"chars\": 6}");
    assert_eq!(count_of(&ws, "count_shout"), "{\"chars\": 8}");

    // `-s NAME.key=value` changes that instance and what reads it, nothing else.
    let r = ws.ok(&["run", "-s", "shout.suffix=?"]);
    assert_eq!(r.ran(), strs(&["count_shout", "shout"]), "{}", r.all());
    assert_eq!(count_of(&ws, "count_shout").len(), "{\"chars\": 6}".len());

    // --from / --only / show / status / dag name instances.
    let r = ws.ok(&["run", "--from", "shout"]);
    assert_eq!(r.ran(), strs(&["count_shout", "shout"]), "{}", r.all());
    let r = ws.ok(&["run", "--only", "count_shout", "--force"]);
    assert_eq!(r.ran(), strs(&["count_shout"]), "{}", r.all());
    let show = ws.ok(&["show", "count_shout"]);
    assert!(show.stdout.contains("count.jsonl"), "{}", show.stdout);
    let status = ws.ok(&["status"]);
    assert!(status.stdout.contains("shout"), "{}", status.stdout);
    let mermaid = ws.ok(&["dag", "--mermaid"]).stdout;
    assert!(mermaid.contains("shout --> count_shout"), "{mermaid}");
    assert!(mermaid.contains("source --> shout"), "{mermaid}");
    assert!(!mermaid.contains("upper --> count_shout"), "{mermaid}");
}

/// A key hashes the kind, the config and the upstream keys: renaming tables keeps every key
/// (and every artifact is found again under the new name's directory only after it runs, so
/// the check is on the keys `status` computes).
#[test]
fn keys_do_not_depend_on_table_names() {
    let ws = two();
    ws.ok(&["run"]);
    let key_of = |ws: &Ws, instance: &str| ws.entries(instance)[0].clone();
    let shout_key = key_of(&ws, "shout");
    let count_shout_key = key_of(&ws, "count_shout");

    let renamed = TWO
        .replace("[shout]", "[loud]")
        .replace("upper = \"shout\"", "upper = \"loud\"")
        .replace("[count_shout]", "[tally]");
    let other = Ws::new(testkit_bin(), &renamed);
    other.write("input.txt", "hello");
    other.ok(&["run"]);
    assert_eq!(key_of(&other, "loud"), shout_key);
    assert_eq!(key_of(&other, "tally"), count_shout_key);
    // The instance named after its kind and the one that says `kind` hash alike too.
    assert_eq!(key_of(&ws, "upper"), key_of(&other, "upper"));
}

/// An explicit default names the same upstream as the default: same key.
#[test]
fn writing_the_default_input_changes_no_key() {
    let ws = two();
    ws.ok(&["run"]);
    let explicit = TWO.replace("[count]\n", "[count]\nupper = \"upper\"\n");
    ws.write("pipeline.toml", explicit);
    let r = ws.ok(&["run"]);
    assert!(r.ran().is_empty(), "{}", r.all());
}

fn error_of(pipeline: &str) -> String {
    let ws = Ws::new(testkit_bin(), pipeline);
    ws.write("input.txt", "hello");
    let r = ws.run(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    r.stderr
}

#[test]
fn a_missing_instance_is_located_and_lists_what_fits() {
    let err = error_of(&TWO.replace("upper = \"shout\"", "upper = \"shot\""));
    assert!(
        err.contains("pipeline.toml:16:9: [count_shout] `upper` reads `shot`, but the pipeline has no instance `shot`; instances that fit: upper, shout"),
        "{err}"
    );
}

#[test]
fn a_wrong_kind_is_located_and_lists_what_fits() {
    let err = error_of(&TWO.replace("upper = \"shout\"", "upper = \"source\""));
    assert!(
        err.contains("pipeline.toml:16:9: [count_shout] `upper` reads `source`, an instance of kind `source`, which cannot serve as `upper` of a count"),
        "{err}"
    );
    assert!(err.contains("instances that fit: upper, shout"), "{err}");
}

#[test]
fn a_cycle_is_named() {
    let err = error_of(
        "[a]\nkind = \"upper\"\nsource = \"b\"\n\n[b]\nkind = \"upper\"\nsource = \"a\"\n",
    );
    assert!(
        err.contains("pipeline.toml:3:10: [a] the instances form a cycle: a -> b -> a"),
        "{err}"
    );
}

#[test]
fn two_instances_writing_the_same_directory_are_refused() {
    let err = error_of(
        "[source]\npath = \"input.txt\"\n\n[Source]\nkind = \"source\"\npath = \"input.txt\"\n",
    );
    assert!(
        err.contains("pipeline.toml:4:2: [Source] and [source] would both write artifacts/source/"),
        "{err}"
    );
}

#[test]
fn kinds_are_checked_where_written() {
    let err = error_of("[x]\nkind = \"uper\"\n");
    assert!(
        err.contains("pipeline.toml:2:8: [x] unknown kind `uper`"),
        "{err}"
    );
    assert!(err.contains("did you mean `upper`?"), "{err}");
    let err = error_of("[source]\npath = \"input.txt\"\n[upper]\nkind = \"count\"\n");
    assert!(
        err.contains("[upper] is named after the kind `upper` but says kind = \"count\""),
        "{err}"
    );
    let err = error_of("[thing]\npath = \"input.txt\"\n");
    assert!(err.contains("unknown table `[thing]`"), "{err}");
    assert!(err.contains("kind = "), "{err}");
    let err = error_of("[a]\nkind = \"source\"\npath = \"input.txt\"\nrepet = 1\n");
    assert!(
        err.contains("pipeline.toml:4:1: unknown key `repet` in [a]"),
        "{err}"
    );
}
