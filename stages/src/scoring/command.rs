//! The `command` scorer: an external program (an LLM judge, a unit-test runner, anything) that
//! reads every row as JSON Lines on stdin and prints one number per row on stdout.
//!
//! Protocol: one invocation for all rows (a judge that loads a model pays for it once). Each
//! stdin line is `{"id": ..., "prompt": ..., "reference": ..., "candidate": ...}`; stdout must
//! hold exactly one number per input row, in input order (trailing blank lines are ignored).
//! Numbers are mapped from `scale = [low, high]` (default `[0, 1]`) onto [0, 1]; a number
//! outside the scale is an error rather than clamped, since it means the program and the
//! config disagree. stderr is passed through to error messages.
//!
//! The program runs in the workspace root, in its own process group (Unix), so that on
//! timeout the whole group is killed: a shell script's children (`sleep`, `python`) would
//! otherwise keep running and keep our pipes open.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::ScoringError;
use super::ScoreInput;
use crate::contract::ConfigIssue;

/// The `[score.command]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// This scorer's weight in the combined score.
    #[serde(default = "one")]
    pub weight: f64,
    /// The program and its arguments (no shell: use ["sh", "-c", "..."] for one). A relative
    /// program path with a `/` is relative to the workspace root, like every path.
    pub argv: Vec<String>,
    /// Seconds for the whole batch before the program is killed.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// The range of the printed numbers, mapped onto [0, 1].
    #[serde(default = "default_scale")]
    pub scale: [f64; 2],
    /// Files the program reads (its script, its prompt template): their content is part of
    /// the stage's cache key, so editing the judge re-runs scoring.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
}

fn one() -> f64 {
    1.0
}

fn default_timeout() -> f64 {
    600.0
}

fn default_scale() -> [f64; 2] {
    [0.0, 1.0]
}

impl CommandConfig {
    /// Checks keys relative to the `[score]` table (`command.argv`).
    pub fn validate(&self, table: &str) -> Result<(), ConfigIssue> {
        let key = |k: &str| format!("{table}.{k}");
        if self.argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(ConfigIssue::new(
                key("argv"),
                "must name a program, e.g. argv = [\"python3\", \"judge.py\"]",
            ));
        }
        let t = self.timeout_secs;
        if !(t.is_finite() && t > 0.0) {
            return Err(ConfigIssue::new(
                key("timeout_secs"),
                format!("must be a number of seconds > 0, got {t}"),
            ));
        }
        let [low, high] = self.scale;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(ConfigIssue::new(
                key("scale"),
                format!("must be [low, high] with low < high, got [{low}, {high}]"),
            ));
        }
        if let Some(empty) = self.inputs.iter().position(|p| p.as_os_str().is_empty()) {
            return Err(ConfigIssue::new(
                key("inputs"),
                format!(
                    "entry {} is empty; list the files the program reads",
                    empty + 1
                ),
            ));
        }
        Ok(())
    }
}

/// Runs the configured program over a batch of rows.
#[derive(Debug, Clone)]
pub struct CommandScorer {
    argv: Vec<String>,
    workspace: PathBuf,
    timeout: Duration,
    scale: [f64; 2],
    display: String,
}

/// One stdin line; field order is the documented protocol.
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    prompt: &'a str,
    reference: &'a str,
    candidate: &'a str,
}

impl CommandScorer {
    /// The program runs in `workspace`; a relative program path with a `/` is resolved there.
    pub fn new(cfg: &CommandConfig, workspace: &Path) -> Result<Self, ScoringError> {
        cfg.validate("command")
            .map_err(|issue| ScoringError::Config {
                table: "score".into(),
                key: issue.key,
                message: issue.message,
            })?;
        let mut argv = cfg.argv.clone();
        if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
            argv[0] = workspace.join(&argv[0]).to_string_lossy().into_owned();
        }
        Ok(Self {
            display: display_argv(&cfg.argv),
            argv,
            workspace: workspace.to_path_buf(),
            timeout: Duration::from_secs_f64(cfg.timeout_secs),
            scale: cfg.scale,
        })
    }

    /// The command as configured, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// One score in [0, 1] per row, in order. No rows: the program is not run.
    pub fn score(&self, rows: &[ScoreInput<'_>]) -> Result<Vec<f64>, ScoringError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let input = jsonl(rows);
        let output = self.run(input, rows.len())?;
        self.parse(&output, rows)
    }

    /// Runs the program to completion (or to the timeout), returning its stdout.
    fn run(&self, input: Vec<u8>, rows: usize) -> Result<Vec<u8>, ScoringError> {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .current_dir(&self.workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|source| ScoringError::Spawn {
            command: self.display.clone(),
            source,
        })?;
        let mut child = KillOnDrop(child);
        let writer = feed(&mut child.0, input);
        let stdout = drain(child.0.stdout.take());
        let stderr = drain(child.0.stderr.take());
        let status = self.wait(&mut child, rows)?;
        let stdout = join(stdout);
        let stderr = join(stderr);
        let written = writer.map(join_writer).unwrap_or(Ok(()));
        if !status.success() {
            return Err(ScoringError::CommandFailed {
                command: self.display.clone(),
                status: status.to_string(),
                stderr: stderr_tail(&stderr),
            });
        }
        written.map_err(|source| self.io("writing its stdin", source))?;
        stdout.map_err(|source| self.io("reading its stdout", source))
    }

    /// Waits for the child, killing its process group at the deadline.
    fn wait(&self, child: &mut KillOnDrop, rows: usize) -> Result<ExitStatus, ScoringError> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = child
                .0
                .try_wait()
                .map_err(|source| self.io("waiting for it", source))?
            {
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                child.kill();
                return Err(ScoringError::Timeout {
                    command: self.display.clone(),
                    seconds: self.timeout.as_secs_f64(),
                    rows,
                });
            }
            // Short first pauses keep quick programs quick; later ones keep polling cheap.
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Checks the output has one number per row and maps the numbers onto [0, 1].
    fn parse(&self, output: &[u8], rows: &[ScoreInput<'_>]) -> Result<Vec<f64>, ScoringError> {
        let mut lines: Vec<&[u8]> = output.split(|&b| b == b'\n').collect();
        while lines.last().is_some_and(|l| l.trim_ascii().is_empty()) {
            lines.pop();
        }
        let mut scores = Vec::with_capacity(rows.len());
        for (i, (line, row)) in lines.iter().zip(rows).enumerate() {
            scores.push(self.number(line, i + 1, row.id)?);
        }
        if lines.len() != rows.len() {
            let first_missing = rows
                .get(lines.len())
                .map(|row| format!(": row {} (id `{}`) got no score", lines.len() + 1, row.id))
                .unwrap_or_default();
            return Err(ScoringError::LineCount {
                command: self.display.clone(),
                rows: rows.len(),
                lines: lines.len(),
                first_missing,
            });
        }
        Ok(scores)
    }

    /// One output line as a score; `line` is 1-based, as is the row it answers.
    fn number(&self, raw: &[u8], line: usize, id: &str) -> Result<f64, ScoringError> {
        let text = std::str::from_utf8(raw).map_err(|_| ScoringError::NotUtf8 {
            command: self.display.clone(),
            line,
        })?;
        let value = text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| ScoringError::NotANumber {
                command: self.display.clone(),
                line,
                id: id.to_string(),
                text: text.trim_end_matches('\r').to_string(),
            })?;
        let [low, high] = self.scale;
        if !(low..=high).contains(&value) {
            return Err(ScoringError::OutOfScale {
                command: self.display.clone(),
                line,
                id: id.to_string(),
                value,
                low,
                high,
            });
        }
        Ok(((value - low) / (high - low)).clamp(0.0, 1.0))
    }

    fn io(&self, what: &'static str, source: std::io::Error) -> ScoringError {
        ScoringError::CommandIo {
            command: self.display.clone(),
            what,
            source,
        }
    }
}

/// The rows as JSON Lines.
fn jsonl(rows: &[ScoreInput<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        let line = Row {
            id: row.id,
            prompt: row.prompt,
            reference: row.reference,
            candidate: row.candidate,
        };
        // Serialising borrowed strings into a Vec cannot fail.
        if serde_json::to_writer(&mut out, &line).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// Writes stdin on its own thread: a program that prints while it reads would otherwise
/// deadlock against us once both pipe buffers fill.
fn feed(child: &mut Child, input: Vec<u8>) -> Option<JoinHandle<std::io::Result<()>>> {
    let mut stdin = child.stdin.take()?;
    Some(std::thread::spawn(move || {
        match stdin.write_all(&input) {
            // A program may legitimately stop reading early (it exited, or needs no input).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
        // Dropping stdin closes the pipe: the program sees end of input.
    }))
}

fn drain<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> Option<JoinHandle<std::io::Result<Vec<u8>>>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut buffer = Vec::new();
        pipe.read_to_end(&mut buffer)?;
        Ok(buffer)
    }))
}

fn join(handle: Option<JoinHandle<std::io::Result<Vec<u8>>>>) -> std::io::Result<Vec<u8>> {
    match handle {
        Some(h) => h
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked"))),
        None => Ok(Vec::new()),
    }
}

fn join_writer(handle: JoinHandle<std::io::Result<()>>) -> std::io::Result<()> {
    handle
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("writer thread panicked")))
}

/// The last lines of stderr, for an error message: enough to see a traceback's end.
fn stderr_tail(stderr: &std::io::Result<Vec<u8>>) -> String {
    const LINES: usize = 15;
    let Ok(bytes) = stderr else {
        return String::new();
    };
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    if lines.is_empty() {
        return "; it wrote nothing to stderr".into();
    }
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    format!("; its stderr ends with:\n  {}", tail.join("\n  "))
}

/// `python3 judge.py "two words"`: the argv as a user would type it.
fn display_argv(argv: &[String]) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) || a.contains('"') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect();
    quoted.join(" ")
}

/// Owns the child: kills its whole process group unless it was reaped, so that no error path
/// (or panic) leaves a judge running.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn kill(&mut self) {
        #[cfg(unix)]
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group the child leads
            // (we spawned it with process_group(0)); it touches no memory of ours.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JUDGE_PY: &str = r#"
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    want = set(row["reference"].split())
    got = set(row["candidate"].split())
    print(10 * len(want & got) / max(1, len(want)))
"#;

    fn rows() -> Vec<ScoreInput<'static>> {
        vec![
            ScoreInput {
                id: "a",
                prompt: "What does ls do?",
                reference: "list directory contents",
                candidate: "list directory contents",
            },
            ScoreInput {
                id: "b",
                prompt: "What does cp do?",
                reference: "copy files and directories",
                candidate: "copy files",
            },
            ScoreInput {
                id: "c",
                prompt: "Quote \"this\"\nand 한국어",
                reference: "x",
                candidate: "y",
            },
        ]
    }

    fn scorer(dir: &Path, argv: &[&str], extra: &str) -> CommandScorer {
        let argv: Vec<String> = argv.iter().map(|s| format!("{s:?}")).collect();
        let text = format!("argv = [{}]\n{extra}", argv.join(", "));
        let cfg: CommandConfig = toml::from_str(&text).unwrap();
        CommandScorer::new(&cfg, dir).unwrap()
    }

    fn with_script(name: &str, body: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), body).unwrap();
        dir
    }

    fn err(dir: &Path, argv: &[&str], extra: &str) -> String {
        scorer(dir, argv, extra)
            .score(&rows())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn python_judge_scores_every_row_in_one_run() {
        let dir = with_script("judge.py", JUDGE_PY);
        let s = scorer(dir.path(), &["python3", "judge.py"], "scale = [0, 10]\n");
        let scores = s.score(&rows()).unwrap();
        assert_eq!(scores, [1.0, 0.5, 0.0]);
    }

    #[test]
    fn shell_script_reads_jsonl_and_may_print_integers() {
        // Counts its input lines first: proves all rows arrive in one invocation.
        let dir = with_script(
            "judge.sh",
            "n=$(wc -l)\ni=0\nwhile [ $i -lt $n ]; do echo \"$n\"; i=$((i+1)); done\n",
        );
        let s = scorer(dir.path(), &["sh", "judge.sh"], "scale = [0, 4]\n");
        assert_eq!(s.score(&rows()).unwrap(), [0.75, 0.75, 0.75]);
    }

    #[test]
    fn the_program_is_not_run_without_rows() {
        let dir = tempfile::tempdir().unwrap();
        let s = scorer(dir.path(), &["definitely-not-a-program-xyz"], "");
        assert_eq!(s.score(&[]).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn non_zero_exit_names_the_command_and_shows_stderr() {
        let dir = with_script(
            "fail.sh",
            "cat >/dev/null\necho 'judge: model missing' >&2\nexit 3\n",
        );
        let e = err(dir.path(), &["sh", "fail.sh"], "");
        assert_eq!(
            e,
            "command scorer `sh fail.sh` failed (exit status: 3); its stderr ends with:\n  judge: model missing"
        );
    }

    #[test]
    fn wrong_line_count_names_the_first_row_without_a_score() {
        let dir = with_script("short.sh", "cat >/dev/null\necho 1\necho 0\n");
        let e = err(dir.path(), &["sh", "short.sh"], "");
        assert_eq!(
            e,
            "command scorer `sh short.sh` printed 2 line(s) for 3 row(s): row 3 (id `c`) got no score; \
             it must print exactly one number per input row, in input order"
        );
        let dir = with_script(
            "long.sh",
            "cat >/dev/null\nfor i in 1 2 3 4; do echo 1; done\necho\n",
        );
        let e = err(dir.path(), &["sh", "long.sh"], "");
        assert!(e.contains("printed 4 line(s) for 3 row(s); it must"), "{e}");
    }

    #[test]
    fn non_number_names_the_line_and_row_id() {
        let dir = with_script(
            "bad.py",
            "import sys\nsys.stdin.read()\nprint(0.5)\nprint('good')\nprint(1)\n",
        );
        let e = err(dir.path(), &["python3", "bad.py"], "");
        assert_eq!(
            e,
            "command scorer `python3 bad.py`: output line 2 (row id `b`) is \"good\", not a number; \
             print one number per line, like 0.75"
        );
        let dir = with_script("nan.sh", "cat >/dev/null\necho 1; echo nan; echo 1\n");
        let e = err(dir.path(), &["sh", "nan.sh"], "");
        assert!(
            e.contains("output line 2 (row id `b`) is \"nan\", not a number"),
            "{e}"
        );
    }

    #[test]
    fn numbers_outside_the_scale_are_refused() {
        let dir = with_script("big.sh", "cat >/dev/null\necho 1; echo 7; echo 0\n");
        let e = err(dir.path(), &["sh", "big.sh"], "");
        assert!(
            e.contains("output line 2 (row id `b`) is 7, outside `scale` [0, 1]"),
            "{e}"
        );
    }

    #[test]
    fn timeout_kills_the_program_and_its_children() {
        let dir = with_script("slow.sh", "cat >/dev/null\nsleep 30\necho 1\n");
        let started = Instant::now();
        let e = err(dir.path(), &["sh", "slow.sh"], "timeout_secs = 0.5\n");
        // Had `sleep` survived, reading its inherited stdout would have blocked for 30 s.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            e,
            "command scorer `sh slow.sh` did not finish within 0.5 s on 3 row(s) and was killed; \
             make it faster or raise `timeout_secs` in [score.command]"
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = err(dir.path(), &["./no-such-judge", "--fast"], "");
        assert!(
            e.starts_with("command scorer `./no-such-judge --fast`: cannot start it:"),
            "{e}"
        );
    }

    #[test]
    fn a_program_that_ignores_stdin_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let s = scorer(dir.path(), &["sh", "-c", "echo 1; echo 1; echo 0.25"], "");
        assert_eq!(s.score(&rows()).unwrap(), [1.0, 1.0, 0.25]);
        assert_eq!(s.display(), "sh -c \"echo 1; echo 1; echo 0.25\"");
    }

    #[test]
    fn config_values_are_checked() {
        let cases = [
            ("argv = []", "command.argv"),
            ("argv = ['x']\ntimeout_secs = 0", "command.timeout_secs"),
            ("argv = ['x']\nscale = [1, 1]", "command.scale"),
            ("argv = ['x']\ninputs = ['']", "command.inputs"),
        ];
        for (text, key) in cases {
            let cfg: CommandConfig = toml::from_str(text).unwrap();
            assert_eq!(cfg.validate("command").unwrap_err().key, key, "{text}");
        }
    }
}
