//! `pipe` with a registry of small test stages instead of the real ones, so the integration
//! tests can exercise the DAG, caching, locking and crash handling through a real process.
//! Only the registry differs from the `pipe` binary.

use std::path::{Path, PathBuf};

use pipe_stages::{erase, ConfigIssue, Input, Pipeline, Stage, StageContext, StageResult};
use serde::{Deserialize, Serialize};

fn main() -> std::process::ExitCode {
    let stages = vec![
        erase::<Source>(),
        erase::<Upper>(),
        erase::<Count>(),
        erase::<Side>(),
        erase::<Sleep>(),
    ];
    pipe::main_with(stages, Vec::new())
}

fn read(path: &Path) -> StageResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn write(cx: &StageContext, name: &str, text: &str) -> StageResult {
    let path = cx.out_dir().join(name);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// Copies an external file: the root of the test DAG.
struct Source;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceConfig {
    path: PathBuf,
    #[serde(default)]
    repeat: u32,
}

impl Stage for Source {
    const NAME: &'static str = "source";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "copies an external file";
    const STARTER: &'static str = "[source]\npath = \"input.txt\"\n";
    type Config = SourceConfig;

    fn external_inputs(cfg: &SourceConfig) -> Vec<PathBuf> {
        vec![cfg.path.clone()]
    }

    fn validate(cfg: &SourceConfig) -> Result<(), ConfigIssue> {
        if cfg.repeat > 100 {
            return Err(ConfigIssue::new("repeat", "must be at most 100"));
        }
        Ok(())
    }

    fn run(cfg: &SourceConfig, cx: &mut StageContext) -> StageResult {
        let text = read(&cx.resolve(&cfg.path))?;
        let text = text.repeat(cfg.repeat.max(1) as usize);
        cx.set_metric("bytes", text.len());
        write(cx, "data.txt", &text)
    }
}

/// Upper-cases its input (a source, or another upper) and appends a suffix.
struct Upper;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpperConfig {
    #[serde(default)]
    suffix: String,
    /// The instance it reads (default `source`).
    #[serde(default)]
    source: Option<String>,
}

impl Stage for Upper {
    const NAME: &'static str = "upper";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "upper-cases source";
    const STARTER: &'static str = "[upper]\n";
    type Config = UpperConfig;

    fn inputs(cfg: &UpperConfig, _p: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(vec![Input::one(
            "source",
            cfg.source.as_deref(),
            "source",
            &["source", "upper"],
        )])
    }

    fn run(cfg: &UpperConfig, cx: &mut StageContext) -> StageResult {
        let text = read(&cx.input("source")?.join("data.txt"))?;
        write(cx, "data.txt", &(text.to_uppercase() + &cfg.suffix))
    }
}

/// Counts the characters of `upper` into a JSONL row.
struct Count;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CountConfig {
    /// The upper instance it counts (default `upper`).
    #[serde(default)]
    upper: Option<String>,
}

impl Stage for Count {
    const NAME: &'static str = "count";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "counts upper's characters";
    const STARTER: &'static str = "[count]\n";
    type Config = CountConfig;

    fn inputs(cfg: &CountConfig, _p: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(vec![Input::one(
            "upper",
            cfg.upper.as_deref(),
            "upper",
            &["upper"],
        )])
    }

    fn run(_cfg: &CountConfig, cx: &mut StageContext) -> StageResult {
        let text = read(&cx.input("upper")?.join("data.txt"))?;
        write(
            cx,
            "count.jsonl",
            &format!("{{\"chars\": {}}}\n", text.chars().count()),
        )
    }
}

/// Reverses `source`: a second branch of the DAG.
struct Side;

impl Stage for Side {
    const NAME: &'static str = "side";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "reverses source";
    const STARTER: &'static str = "[side]\n";
    type Config = Empty;

    fn inputs(_cfg: &Empty, _p: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(vec![Input::one("source", None, "source", &["source"])])
    }

    fn run(_cfg: &Empty, cx: &mut StageContext) -> StageResult {
        let text = read(&cx.input("source")?.join("data.txt"))?;
        write(cx, "data.txt", &text.chars().rev().collect::<String>())
    }
}

/// Sleeps (to be killed or to hold the lock), fails or panics on request.
struct Sleep;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepConfig {
    seconds: f64,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    panic: bool,
    /// `pipe show sleep` panics on this artifact (a bug outside any stage run).
    #[serde(default)]
    show_panics: bool,
}

impl Stage for Sleep {
    const NAME: &'static str = "sleep";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "sleeps";
    const STARTER: &'static str = "[sleep]\nseconds = 1.0\n";
    type Config = SleepConfig;

    fn run(cfg: &SleepConfig, cx: &mut StageContext) -> StageResult {
        write(cx, "started.txt", "started")?;
        std::fs::write(cx.workspace().join("sleep.started"), "1")?;
        std::thread::sleep(std::time::Duration::from_secs_f64(cfg.seconds));
        if cfg.panic {
            panic!("sleep was asked to panic");
        }
        if cfg.fail {
            return Err("sleep was asked to fail (row 3, column `x`)".into());
        }
        if cfg.show_panics {
            write(cx, "show-panics.txt", "1")?;
        }
        write(cx, "done.txt", "done")
    }

    fn show(dir: &Path, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if dir.join("show-panics.txt").exists() {
            panic!("sleep's show was asked to panic");
        }
        let done = std::fs::read_to_string(dir.join("done.txt"))?;
        writeln!(out, "  {done}")
    }
}
