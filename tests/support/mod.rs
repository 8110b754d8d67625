//! Test support: a temp workspace and a way to run a pipe binary in it and read what it did.

#![allow(dead_code)]

pub mod components;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `pipe` binary with the real stages.
pub fn pipe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pipe"))
}

/// The `pipe_testkit` example: the same CLI over small test stages (built by `cargo test`).
pub fn testkit_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir
        .join("examples")
        .join(format!("pipe_testkit{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo test` (it builds the examples)",
        bin.display()
    );
    bin
}

/// A temporary workspace directory with a pipeline.toml.
pub struct Ws {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
}

/// What one invocation printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stage names that ran (lines `NAME running ...`).
    pub fn ran(&self) -> Vec<String> {
        self.stages_with("running")
    }

    pub fn cached(&self) -> Vec<String> {
        self.stages_with("cached")
    }

    pub fn reused(&self) -> Vec<String> {
        self.stages_with("reused")
    }

    fn stages_with(&self, word: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .stdout
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let stage = parts.next()?;
                (parts.next()? == word).then(|| stage.to_string())
            })
            .collect();
        out.sort();
        out
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Ws {
    pub fn new(bin: PathBuf, pipeline: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pipeline.toml"), pipeline).expect("write pipeline");
        Self { dir, bin }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, content).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).current_dir(self.dir.path());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = self.command(args).output().expect("spawn pipe");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "pipe {args:?} failed:\n{}", r.all());
        r
    }

    /// Committed entries (directories with a manifest) of a stage.
    pub fn entries(&self, stage: &str) -> Vec<String> {
        let dir = self.path("artifacts").join(stage);
        let Ok(read) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = read
            .flatten()
            .filter(|e| e.path().join("manifest.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A small Q&A CSV (12 Unix tools, a templated answer each) for the tiny-model workspaces.
pub fn tools_csv() -> String {
    let tools = [
        "ls", "cat", "grep", "sed", "awk", "cp", "mv", "rm", "tar", "ssh", "df", "du",
    ];
    let mut text = String::from("question,answer\n");
    for (i, t) in tools.iter().enumerate() {
        text.push_str(&format!("What does {t} do?,{t} is tool number {i}.\n"));
    }
    text
}

/// The tiny demo chain up to score (the tiny model, [`tools_csv`], seed 3): what the
/// integration tests of the later stages build on, each adding its own tail.
pub const TINY_TO_SCORE: &str = r#"
[project]
name = "tiny"
seed = 3

[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"
val_fraction = 0.25

[model]
path = "tiny"

[sft]
max_steps = 2
batch_size = 4
max_seq_len = 128
samples = 0

[sft.lora]
r = 4
alpha = 8

[generate]
split = "train"
limit = 6
candidates = 2
max_new_tokens = 8
batch_size = 4

[score]
min_margin = 0.0
"#;

/// [`TINY_TO_SCORE`] followed by `tail` (a preference stage and what follows it).
pub fn tiny_chain(tail: &str) -> String {
    format!("{TINY_TO_SCORE}{tail}")
}

/// The real `pipe` binary in a workspace with `pipeline`, a tiny generated model at `tiny/`
/// and [`tools_csv`] at `data/qa.csv`.
pub fn tiny_workspace(pipeline: &str) -> Ws {
    let ws = Ws::new(pipe_bin(), pipeline);
    pipe_stages::testkit::write_tiny_model(&ws.path("tiny"), 1).expect("tiny model");
    ws.write("data/qa.csv", tools_csv());
    ws
}
