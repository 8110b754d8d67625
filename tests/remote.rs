//! The shared artifact cache with real stores: a local S3 server (scripts/s3-up.sh) and a
//! `file://` directory. Workspace A runs the tiny chain with `[cache] remote` set and uploads
//! every artifact it commits; a fresh workspace B with the same pipeline.toml, data and model
//! runs nothing and pulls every stage, and `pipe show` works there. A corrupted remote file is
//! refused by name and its stage re-runs; an unreachable cache degrades to a local run.

mod support;

use std::path::Path;
use std::sync::LazyLock;

use support::components::{self, create_bucket, s3_env, unique};
use support::{strs, tiny_chain, tiny_workspace, Ws};

static CHAIN: LazyLock<String> = LazyLock::new(|| {
    tiny_chain(
        r#"

[orpo]
max_steps = 3
batch_size = 2
max_seq_len = 128

[orpo.lora]
r = 4
alpha = 8
"#,
    )
});

const ALL: [&str; 6] = ["generate", "ingest", "model", "orpo", "score", "sft"];

fn pipeline(remote: &str) -> String {
    format!("{}\n[cache]\nremote = {remote:?}\n", *CHAIN)
}

/// A second workspace with the same pipeline.toml, data and model as `a`.
fn twin(a: &Ws) -> Ws {
    let pipeline = std::fs::read_to_string(a.path("pipeline.toml")).unwrap();
    let b = Ws::new(a.bin.clone(), &pipeline);
    copy_dir(&a.path("tiny"), &b.path("tiny"));
    copy_dir(&a.path("data"), &b.path("data"));
    b
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn run_with(ws: &Ws, env: &[(&'static str, String)], args: &[&str]) -> support::Run {
    let out = ws.command(args).envs(env.iter().cloned()).output().unwrap();
    support::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn pulled(run: &support::Run) -> Vec<String> {
    let mut out: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let stage = words.next()?;
            (words.next()? == "pulled").then(|| stage.to_string())
        })
        .collect();
    out.sort();
    out
}

/// A runs and pushes; B runs nothing, pulls everything, and shows it.
fn share_through(remote: &str, env: &[(&'static str, String)]) {
    let a = tiny_workspace(&pipeline(remote));
    let first = run_with(&a, env, &["run"]);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(first.ran(), strs(&ALL), "{}", first.all());
    assert_eq!(
        first.stdout.matches("   pushed ").count(),
        ALL.len(),
        "every commit is uploaded:\n{}",
        first.all()
    );

    let b = twin(&a);
    let second = run_with(&b, env, &["run"]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert!(second.ran().is_empty(), "{}", second.all());
    assert_eq!(pulled(&second), strs(&ALL), "{}", second.all());
    assert!(
        second.stdout.contains("0 ran, 6 pulled, 0 cached"),
        "{}",
        second.all()
    );
    for stage in ALL {
        assert_eq!(a.entries(stage), b.entries(stage), "{stage}: same key");
    }
    let show = run_with(&b, env, &["show", "orpo"]);
    assert_eq!(show.code, 0, "{}", show.all());
    assert!(show.stdout.contains("adapter"), "{}", show.stdout);
    let status = run_with(&b, env, &["status", "--verify"]);
    assert_eq!(status.code, 0, "{}", status.all());
    assert!(!status.stdout.contains("corrupt"), "{}", status.stdout);
    let third = run_with(&b, env, &["run"]);
    assert!(third.stdout.contains("0 ran, 6 cached"), "{}", third.all());
}

#[test]
fn a_fresh_workspace_pulls_every_stage_from_s3() {
    let Some(endpoint) = components::s3() else {
        eprintln!("!!! SKIPPED: no local S3 server");
        return;
    };
    let bucket = unique("pipe-share").to_lowercase();
    create_bucket(&endpoint, &bucket);
    share_through(&format!("s3://{bucket}/team/cache"), &s3_env(&endpoint));
}

#[test]
fn a_fresh_workspace_pulls_every_stage_from_a_shared_directory() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().join("pipe-cache").display());
    share_through(&url, &[]);
}

#[test]
fn a_corrupted_remote_file_is_refused_by_name_and_its_stage_runs_again() {
    let shared = tempfile::tempdir().unwrap();
    let cache = shared.path().join("pipe-cache");
    let a = tiny_workspace(&pipeline(&format!("file://{}", cache.display())));
    a.ok(&["run", "--to", "sft"]);
    let key = &a.entries("sft")[0];
    // Same size, other bytes: only the digest can tell.
    let file = cache
        .join("sft")
        .join(key)
        .join("adapter/adapter_model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();

    let b = twin(&a);
    let run = b.ok(&["run", "--to", "sft"]);
    let out = run.all();
    assert!(
        out.contains(&format!(
            "the artifact sft/{key} is refused: adapter/adapter_model.safetensors does not match its blake3 digest"
        )),
        "{out}"
    );
    assert!(out.contains("running `sft` locally"), "{out}");
    assert_eq!(run.ran(), strs(&["sft"]), "{out}");
    assert_eq!(pulled(&run), strs(&["ingest", "model"]), "{out}");
    assert!(out.contains("1 ran, 2 pulled, 0 cached"), "{out}");
    assert_eq!(b.entries("sft"), a.entries("sft"));
}

#[test]
fn an_unreachable_remote_is_a_warning_and_the_run_goes_on_locally() {
    let ws = tiny_workspace(&pipeline("s3://pipe-nowhere/cache"));
    // Nothing listens on port 9 of this machine.
    let env = s3_env("http://127.0.0.1:9");
    let started = std::time::Instant::now();
    let run = run_with(&ws, &env, &["run", "--to", "sft"]);
    let out = run.all();
    assert_eq!(run.code, 0, "{out}");
    assert_eq!(run.ran(), strs(&["ingest", "model", "sft"]), "{out}");
    assert_eq!(
        out.matches("warning: the shared cache is unavailable, running locally")
            .count(),
        1,
        "one warning:\n{out}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "an unreachable cache must not hold the run up: {:?}",
        started.elapsed()
    );

    // `pipe pull` asked for by hand is an error, not a warning (generate never ran here).
    let pull = run_with(&ws, &env, &["pull", "generate"]);
    assert_eq!(pull.code, 1, "{}", pull.all());
    assert!(
        pull.stderr.contains("127.0.0.1:9") || pull.stderr.contains("pipe-nowhere"),
        "{}",
        pull.all()
    );
}

#[test]
fn push_and_pull_by_hand_move_the_named_stages() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().join("c").display());
    let text = pipeline(&url).replace("[cache]\n", "[cache]\npush = false\npull = false\n");
    let a = tiny_workspace(&text);
    let run = a.ok(&["run", "--to", "sft"]);
    assert!(!run.stdout.contains("pushed"), "{}", run.all());
    let push = a.ok(&["push", "ingest", "sft"]);
    assert!(push.stdout.contains("ingest     pushed"), "{}", push.all());
    assert!(push.stdout.contains("sft        pushed"), "{}", push.all());
    let again = a.ok(&["push", "sft"]);
    assert!(
        again.stdout.contains("sft        present"),
        "{}",
        again.all()
    );

    let b = twin(&a);
    let pull = b.ok(&["pull", "sft", "model"]);
    assert!(pull.stdout.contains("sft        pulled"), "{}", pull.all());
    assert!(pull.stdout.contains("model      missing"), "{}", pull.all());
    assert_eq!(b.entries("sft"), a.entries("sft"));
    let bad = b.run(&["pull", "nosuch"]);
    assert_eq!(bad.code, 2, "{}", bad.all());
}
