//! The `command` scorer: an external program (an LLM judge, a unit-test runner, anything) that
//! reads every row as JSON Lines on stdin and prints one number per row on stdout.
//!
//! Protocol: one invocation for all rows (a judge that loads a model pays for it once). Each
//! stdin line is `{"id": ..., "prompt": ..., "reference": ..., "candidate": ...}`, with
//! `"history": [{"role", "content"}, ...]` after `prompt` for a multi-turn row; stdout must
//! hold exactly one number per input row, in input order (trailing blank lines are ignored).
//! Numbers are mapped from `scale = [low, high]` (default `[0, 1]`) onto [0, 1]; a number
//! outside the scale is an error rather than clamped, since it means the program and the
//! config disagree. stderr is passed through to error messages.
//!
//! The program runs in the workspace root, in its own process group (Unix), so that on
//! timeout the whole group is killed: a shell script's children (`sleep`, `python`) would
//! otherwise keep running and keep our pipes open.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
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
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    history: &'a [crate::llm::ChatMessage],
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
        let output = self.run(input, rows)?;
        self.parse(&output, rows)
    }

    /// Runs the program and returns its stdout lines. The deadline covers the whole exchange:
    /// writing stdin, reading stdout and waiting. When the program exits, what it left running
    /// in its process group is killed, so a background child holding our pipes cannot stall us.
    fn run(&self, input: Vec<u8>, rows: &[ScoreInput<'_>]) -> Result<Vec<Vec<u8>>, ScoringError> {
        let deadline = Instant::now() + self.timeout;
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
        let mut child = KillOnDrop::new(child);
        let (events, inbox) = mpsc::channel();
        if let Some(stdin) = child.child.stdin.take() {
            feed(stdin, input, events.clone());
        }
        if let Some(stdout) = child.child.stdout.take() {
            collect_lines(stdout, rows.len(), events.clone());
        }
        if let Some(stderr) = child.child.stderr.take() {
            keep_tail(stderr, events);
        }
        let exchange = self.exchange(&mut child, &inbox, deadline, rows.len())?;
        let status = child
            .reap()
            .map_err(|source| self.io("waiting for it", source))?;
        // A bad output had the program killed: that is the error, not the kill's status.
        let exchange = match exchange.stdout {
            Some(Err(problem)) => return Err(self.output_error(problem, rows)),
            _ => exchange,
        };
        if !status.success() {
            return Err(ScoringError::CommandFailed {
                command: self.display.clone(),
                status: status.to_string(),
                stderr: stderr_tail(&exchange.stderr),
            });
        }
        match exchange.stdout {
            Some(Ok(lines)) => {
                exchange
                    .stdin
                    .unwrap_or(Ok(()))
                    .map_err(|source| self.io("writing its stdin", source))?;
                Ok(lines)
            }
            Some(Err(problem)) => Err(self.output_error(problem, rows)),
            None => Err(self.timeout_error(rows.len())),
        }
    }

    /// Waits for the program to exit and its stdout to end, whichever comes last, until the
    /// deadline. A bad output (a line too long, too many lines) ends the exchange at once.
    fn exchange(
        &self,
        child: &mut KillOnDrop,
        inbox: &mpsc::Receiver<Event>,
        deadline: Instant,
        rows: usize,
    ) -> Result<Exchange, ScoringError> {
        let mut exchange = Exchange::default();
        let mut exited = false;
        let mut pause = Duration::from_millis(1);
        loop {
            if !exited {
                exited = child
                    .has_exited()
                    .map_err(|source| self.io("waiting for it", source))?;
                if exited {
                    // Its leftovers (a `( sleep 40 ) &`) would hold our pipes open.
                    child.kill_group();
                }
            }
            let bad_output = matches!(exchange.stdout, Some(Err(_)));
            if bad_output || (exited && exchange.stdout.is_some() && exchange.stderr.is_some()) {
                if bad_output {
                    child.kill_group();
                }
                return Ok(exchange);
            }
            let now = Instant::now();
            if now >= deadline {
                child.kill_group();
                return Err(self.timeout_error(rows));
            }
            // Short first pauses keep quick programs quick; later ones keep polling cheap.
            match inbox.recv_timeout(pause.min(deadline - now)) {
                Ok(event) => exchange.record(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                // Every pipe thread is done; only the exit is left to wait for.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    fn timeout_error(&self, rows: usize) -> ScoringError {
        ScoringError::Timeout {
            command: self.display.clone(),
            seconds: self.timeout.as_secs_f64(),
            rows,
        }
    }

    fn output_error(&self, problem: OutputProblem, rows: &[ScoreInput<'_>]) -> ScoringError {
        match problem {
            OutputProblem::Read(source) => self.io("reading its stdout", source),
            OutputProblem::LineTooLong { line } => ScoringError::LineTooLong {
                command: self.display.clone(),
                line,
                id: rows
                    .get(line - 1)
                    .map_or_else(String::new, |r| r.id.to_string()),
                max: MAX_LINE_BYTES,
            },
            OutputProblem::TooManyLines => ScoringError::TooManyLines {
                command: self.display.clone(),
                rows: rows.len(),
            },
        }
    }

    /// Checks the output has one number per row and maps the numbers onto [0, 1].
    fn parse(&self, output: &[Vec<u8>], rows: &[ScoreInput<'_>]) -> Result<Vec<f64>, ScoringError> {
        let mut lines: Vec<&[u8]> = output.iter().map(Vec::as_slice).collect();
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
            history: row.history,
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

/// The most bytes one output line may hold (a number needs a few dozen): a program that
/// prints something else cannot make us buffer it.
pub const MAX_LINE_BYTES: usize = 4096;
/// Blank lines tolerated after the last score (a print loop's trailing newlines).
const MAX_TRAILING_BLANK_LINES: usize = 64;
/// How much of the end of stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 64 * 1024;

/// What the pipe threads report to the exchange.
enum Event {
    Stdin(std::io::Result<()>),
    Stdout(Result<Vec<Vec<u8>>, OutputProblem>),
    Stderr(Vec<u8>),
}

/// Why stdout was not read to its end.
#[derive(Debug)]
enum OutputProblem {
    Read(std::io::Error),
    /// 1-based.
    LineTooLong {
        line: usize,
    },
    TooManyLines,
}

/// What the exchange has heard so far; `None`: that pipe has not ended yet.
#[derive(Default)]
struct Exchange {
    stdin: Option<std::io::Result<()>>,
    stdout: Option<Result<Vec<Vec<u8>>, OutputProblem>>,
    stderr: Option<Vec<u8>>,
}

impl Exchange {
    fn record(&mut self, event: Event) {
        match event {
            Event::Stdin(r) => self.stdin = Some(r),
            Event::Stdout(r) => self.stdout = Some(r),
            Event::Stderr(tail) => self.stderr = Some(tail),
        }
    }
}

/// Writes stdin on its own thread: a program that prints while it reads would otherwise
/// deadlock against us once both pipe buffers fill. Never joined: killing the program's group
/// ends a blocked write.
fn feed(mut stdin: ChildStdin, input: Vec<u8>, events: Sender<Event>) {
    std::thread::spawn(move || {
        let result = match stdin.write_all(&input) {
            // A program may legitimately stop reading early (it exited, or needs no input).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        };
        // Dropping stdin closes the pipe: the program sees end of input.
        drop(stdin);
        let _ = events.send(Event::Stdin(result));
    });
}

/// Reads stdout line by line on its own thread, keeping at most `rows` lines (plus a few
/// trailing blank ones) of at most [`MAX_LINE_BYTES`] each: memory stays bounded whatever
/// the program prints.
fn collect_lines(stdout: impl Read + Send + 'static, rows: usize, events: Sender<Event>) {
    std::thread::spawn(move || {
        let result = read_lines(stdout, rows);
        let _ = events.send(Event::Stdout(result));
    });
}

fn read_lines(stdout: impl Read, rows: usize) -> Result<Vec<Vec<u8>>, OutputProblem> {
    let mut reader = std::io::BufReader::new(stdout);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    while let Some(line) = read_line_capped(&mut reader, MAX_LINE_BYTES).map_err(|e| match e {
        LineError::Io(e) => OutputProblem::Read(e),
        LineError::TooLong => OutputProblem::LineTooLong {
            line: lines.len() + 1,
        },
    })? {
        let blank = line.trim_ascii().is_empty();
        if (!blank && lines.len() >= rows) || lines.len() >= rows + MAX_TRAILING_BLANK_LINES {
            return Err(OutputProblem::TooManyLines);
        }
        lines.push(line);
    }
    Ok(lines)
}

enum LineError {
    Io(std::io::Error),
    TooLong,
}

/// The next line without its `\n` (`None` at the end), refusing one longer than `cap` bytes
/// before buffering it.
fn read_line_capped(reader: &mut impl BufRead, cap: usize) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], true),
            None => (buf, false),
        };
        if line.len() + chunk.len() > cap {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(found);
        reader.consume(used);
        if found {
            return Ok(Some(line));
        }
    }
}

/// Reads stderr on its own thread, keeping only its last [`STDERR_TAIL_BYTES`].
fn keep_tail(mut stderr: impl Read + Send + 'static, events: Sender<Event>) {
    std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    tail.extend_from_slice(&chunk[..n]);
                    if tail.len() > 2 * STDERR_TAIL_BYTES {
                        tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = events.send(Event::Stderr(tail));
    });
}

/// The last lines of stderr, for an error message: enough to see a traceback's end.
fn stderr_tail(stderr: &Option<Vec<u8>>) -> String {
    const LINES: usize = 15;
    let Some(bytes) = stderr else {
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
struct KillOnDrop {
    child: Child,
    reaped: bool,
}

impl KillOnDrop {
    fn new(child: Child) -> Self {
        Self {
            child,
            reaped: false,
        }
    }

    /// Whether the program has exited, without reaping it: while it is an unreaped zombie its
    /// pid (and so its process group id) cannot be reused, so the group can still be killed.
    fn has_exited(&mut self) -> std::io::Result<bool> {
        #[cfg(unix)]
        {
            let pid = self.child.id() as libc::id_t;
            // SAFETY: `info` is a plain C struct that waitid fills in; zeroed is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid(2) on our own child with WNOWAIT only reports its state.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: si_pid is set by waitid (0 when no child changed state).
            Ok(unsafe { info.si_pid() } != 0)
        }
        #[cfg(not(unix))]
        {
            Ok(self.child.try_wait()?.is_some())
        }
    }

    /// Kills every process of the program's group (the program too, if it still runs).
    fn kill_group(&mut self) {
        if self.reaped {
            return;
        }
        #[cfg(unix)]
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group the child leads
            // (we spawned it with process_group(0)); it touches no memory of ours.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
    }

    /// Waits for the program's exit status (it has exited or was killed).
    fn reap(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(status)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
            let _ = self.child.wait();
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
                history: &[],
                reference: "list directory contents",
                candidate: "list directory contents",
            },
            ScoreInput {
                id: "b",
                prompt: "What does cp do?",
                history: &[],
                reference: "copy files and directories",
                candidate: "copy files",
            },
            ScoreInput {
                id: "c",
                prompt: "Quote \"this\"\nand 한국어",
                history: Box::leak(Box::new([
                    crate::llm::ChatMessage::user("Earlier?"),
                    crate::llm::ChatMessage::assistant("Yes."),
                ])),
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
    fn a_multi_turn_row_sends_its_history_and_a_single_turn_row_none() {
        let text = String::from_utf8(jsonl(&rows())).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines[0].get("history").is_none(), "{text}");
        assert_eq!(lines[2]["history"][1]["content"], "Yes.", "{text}");
        assert_eq!(lines[2]["history"][0]["role"], "user", "{text}");
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
        assert!(
            e.contains("printed more than 3 line(s) for 3 row(s) and was stopped; it must"),
            "{e}"
        );
        // Trailing blank lines are fine.
        let dir = with_script(
            "blank.sh",
            "cat >/dev/null\necho 1; echo 1; echo 1; echo; echo\n",
        );
        assert_eq!(
            scorer(dir.path(), &["sh", "blank.sh"], "")
                .score(&rows())
                .unwrap(),
            [1.0, 1.0, 1.0]
        );
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

    /// Whether `pid` is gone (or a zombie waiting for init to reap it).
    fn process_gone(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        match stat {
            Err(_) => true,
            Ok(text) => text
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    /// Issue 16: a judge leaving `( sleep 40 ) &` behind made score wait 40 s, although
    /// `timeout_secs = 5`: the background child held stdout open. Its leftovers are killed
    /// when it exits, so the scores come back at once.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_background_child_left_behind_is_killed_and_does_not_stall() {
        let dir = with_script(
            "bg.sh",
            "cat >/dev/null\n( sleep 40 ) &\necho $! > bg.pid\necho 1; echo 0.5; echo 0\n",
        );
        let started = Instant::now();
        let s = scorer(dir.path(), &["sh", "bg.sh"], "timeout_secs = 5\n");
        assert_eq!(s.score(&rows()).unwrap(), [1.0, 0.5, 0.0]);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone_by = Instant::now() + Duration::from_secs(5);
        while !process_gone(pid) && Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(process_gone(pid), "the background `sleep` {pid} survived");
    }

    /// The deadline covers the whole exchange, also a program that exits while a child it put
    /// in another session keeps writing to stdout.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_deadline_covers_reading_stdout_too() {
        let dir = with_script(
            "escape.sh",
            "cat >/dev/null\nsetsid sh -c 'echo > escaped; sleep 6; echo 1' &\n\
             while [ ! -f escaped ]; do sleep 0.01; done\necho 1\n",
        );
        let started = Instant::now();
        let e = err(dir.path(), &["sh", "escape.sh"], "timeout_secs = 1\n");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(e.contains("did not finish within 1 s"), "{e}");
    }

    #[test]
    fn an_overlong_line_is_refused_without_reading_it() {
        let dir = with_script(
            "long_line.sh",
            "cat >/dev/null\necho 1\nhead -c 100000 /dev/zero | tr '\\0' '7'\necho\necho 1\n",
        );
        let e = err(dir.path(), &["sh", "long_line.sh"], "");
        assert_eq!(
            e,
            "command scorer `sh long_line.sh`: output line 2 (row id `b`) is longer than 4096 \
             bytes and was not read; print one number per line, like 0.75"
        );
    }

    /// Issue 16: a judge printing 400 MB took pipe to 1.9 GB RSS. Stdout is read line by line
    /// with caps, so the memory of the scoring process stays small. Runs the scorer in a child
    /// copy of this test binary to measure its peak RSS alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_flood_of_output_keeps_memory_bounded() {
        const CHILD: &str = "PIPE_TEST_FLOOD_CHILD";
        const NAME: &str = "scoring::command::tests::a_flood_of_output_keeps_memory_bounded";
        let flood = "cat >/dev/null\nhead -c 400000000 /dev/zero | tr '\\0' '1'\n";
        if std::env::var_os(CHILD).is_some() {
            let dir = with_script("flood.sh", flood);
            let e = err(dir.path(), &["sh", "flood.sh"], "");
            assert!(e.contains("longer than 4096 bytes"), "{e}");
            let dir = with_script("lines.sh", "cat >/dev/null\nyes 1 | head -c 400000000\n");
            let e = err(dir.path(), &["sh", "lines.sh"], "");
            assert!(e.contains("printed more than 3 line(s)"), "{e}");
            // The peak of this process's own memory (a forked parent's pages do not count).
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let peak_kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            assert!(
                peak_kib < 300 * 1024,
                "peak RSS {} MiB while the judge printed 400 MB",
                peak_kib / 1024
            );
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([NAME, "--exact", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}"
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
