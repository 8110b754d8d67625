//! Stages as batch jobs, for any batch system: each stage that must run becomes one job
//! running `pipe run --only NAME` in the same workspace, submitted in plan order after the
//! jobs of its upstream stages (so independent branches run side by side). The submitter
//! shows every state change, shows a failed job's log tail, cancels what it submitted on
//! Ctrl-C, and resubmits once a job that a time limit or a lost node killed (it resumes from
//! its checkpoint, as a local re-run does).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{PipeError, Result};
use crate::report::Reporter;
use crate::runner::{Action, Outcome, Plan, Step, Workspace};

use super::config::Resources;
use super::signals::Interrupts;
use super::{Executor, JobInvocation, GPUS_ENV, JOB_KEY_ENV, JOB_TOKEN_ENV};

/// What a batch system must do for pipe: submit, report states, cancel.
pub trait BatchSystem {
    /// Its name in messages ("Slurm").
    fn name(&self) -> &'static str;
    /// The exact command line that submits `job` to start after the jobs `after`.
    fn submit_command(&self, job: &JobRequest, after: &[String]) -> Vec<String>;
    /// Submits `job`; returns its id.
    fn submit(&self, job: &JobRequest, after: &[String]) -> Result<String>;
    /// The state of each job in `ids` that the system still knows.
    fn poll(&self, ids: &[String]) -> Result<BTreeMap<String, JobState>>;
    /// Cancels jobs; already finished ones are ignored.
    fn cancel(&self, ids: &[String]);
}

/// One stage as a job.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub stage: String,
    pub key: String,
    /// The workspace root: the job starts there.
    pub workdir: PathBuf,
    /// Where the job's stdout and stderr go: `artifacts/.logs/<stage>/<key>.log`.
    pub log: PathBuf,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Variables set for the job (besides the submitter's environment).
    pub env: Vec<(String, String)>,
    pub resources: Resources,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting, with the system's reason (`Dependency`, `Resources`, `Priority`).
    Pending(String),
    /// Running on these nodes.
    Running(String),
    Completed,
    /// Killed by something a second try gets past: a time limit, a lost node, a preemption.
    Interrupted(String),
    /// Ended otherwise: a non-zero exit, a cancellation, out of memory.
    Failed(String),
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobState::Pending(reason) if reason.is_empty() || reason == "None" => {
                write!(f, "PENDING")
            }
            JobState::Pending(reason) => write!(f, "PENDING ({reason})"),
            JobState::Running(nodes) => write!(f, "RUNNING on {nodes}"),
            JobState::Completed => write!(f, "COMPLETED"),
            JobState::Interrupted(why) | JobState::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// How often the submitter asks for states.
const POLL: Duration = Duration::from_millis(500);
/// Polls that may fail in a row (a busy controller) before the run gives up.
const POLL_FAILURES: u32 = 20;
/// Tries per job when a time limit or a lost node kills it.
const TRIES: u32 = 2;
/// Lines of a failed job's log shown.
const LOG_TAIL: usize = 20;

/// The executor over a batch system.
pub struct Batch<S> {
    system: S,
    invocation: JobInvocation,
    /// The submitter's lock token its jobs show (none in a dry run).
    token: Option<String>,
}

impl<S: BatchSystem> Batch<S> {
    pub fn new(system: S, invocation: JobInvocation, token: Option<String>) -> Self {
        Self {
            system,
            invocation,
            token,
        }
    }

    /// The job of one stage: `pipe run --only NAME --force` under the submitter's config and
    /// `overrides`, so it computes the key the submitter planned (and checks it does).
    pub fn request(&self, ws: &Workspace, step: &Step, overrides: &[String]) -> JobRequest {
        let resources = ws
            .config
            .resources
            .get(step.stage)
            .cloned()
            .unwrap_or_default()
            .over(&ws.config.executor.slurm);
        // Jobs log verbosely: their log is read after the fact, when nobody can ask for more.
        let mut command = vec![
            self.invocation.program.display().to_string(),
            "-v".to_string(),
            "--config".to_string(),
            self.invocation.config.display().to_string(),
        ];
        for ov in overrides {
            command.push("-s".to_string());
            command.push(ov.clone());
        }
        command.extend(
            [
                "run",
                "--only",
                step.stage,
                "--force",
                "--executor",
                "local",
            ]
            .map(String::from),
        );
        let mut env = vec![(JOB_KEY_ENV.to_string(), step.key.clone())];
        if let Some(token) = &self.token {
            env.push((JOB_TOKEN_ENV.to_string(), token.clone()));
        }
        if resources.gpu_count() > 0 {
            env.push((GPUS_ENV.to_string(), resources.gpu_count().to_string()));
        }
        JobRequest {
            stage: step.stage.to_string(),
            key: step.key.clone(),
            workdir: ws.config.root.clone(),
            log: log_path(ws.store.root(), step.stage, &step.key),
            command,
            env,
            resources,
        }
    }
}

/// `artifacts/.logs/<stage>/<key>.log`.
pub fn log_path(artifacts: &Path, stage: &str, key: &str) -> PathBuf {
    artifacts
        .join(".logs")
        .join(stage)
        .join(format!("{key}.log"))
}

/// One plan of a batch run with the overrides its jobs get: the run's own, or one sweep
/// variant's.
pub struct PlanRun<'a> {
    pub ws: &'a Workspace<'a>,
    pub plan: &'a Plan,
    pub overrides: &'a [String],
}

/// What a batch run of several plans came to.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub outcome: Outcome,
    /// (stage, key) of every job that failed, or was skipped after an upstream failed → why.
    pub failed: BTreeMap<(String, String), String>,
    /// The first failure, as a single run reports it.
    pub first_failure: Option<PipeError>,
}

/// A submitted stage.
struct Tracked {
    stage: &'static str,
    request: JobRequest,
    /// The tracked jobs it waits for (always earlier in the list).
    needs: Vec<usize>,
    id: String,
    tries: u32,
    /// The last state shown.
    shown: Option<JobState>,
    submitted: Instant,
    done: bool,
}

impl<S: BatchSystem> Executor for Batch<S> {
    fn execute(
        &self,
        ws: &Workspace,
        plan: &Plan,
        reporter: &dyn Reporter,
        dry_run: bool,
    ) -> Result<Outcome> {
        let run = PlanRun {
            ws,
            plan,
            overrides: &self.invocation.overrides,
        };
        let batch = self.execute_plans(&[run], reporter, dry_run)?;
        match batch.first_failure {
            Some(e) => Err(e),
            None => Ok(batch.outcome),
        }
    }
}

impl<S: BatchSystem> Batch<S> {
    /// Submits the jobs of every plan at once (a sweep's variants), one job per distinct
    /// (stage, key): a stage two plans share is built once and both wait for it. A failed
    /// job skips only what depends on it; the other jobs run on. Errors only when the batch
    /// system cannot be reached or the run is interrupted.
    pub fn execute_plans(
        &self,
        plans: &[PlanRun<'_>],
        reporter: &dyn Reporter,
        dry_run: bool,
    ) -> Result<BatchOutcome> {
        let Some(first) = plans.first() else {
            return Ok(BatchOutcome::default());
        };
        let started = Instant::now();
        let mut run = Run {
            batch: self,
            ws: first.ws,
            reporter,
            jobs: Vec::new(),
            by_key: BTreeMap::new(),
            announced: BTreeSet::new(),
            outcome: BatchOutcome::default(),
            first_start: None,
        };
        let interrupts = Interrupts::install();
        let mut submitted = Ok(());
        for plan in plans {
            submitted = run.submit_all(plan, dry_run);
            if submitted.is_err() {
                break;
            }
        }
        let result = match submitted {
            Ok(()) if dry_run => Ok(()),
            Ok(()) => run.watch(&interrupts),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            run.cancel_active();
            return Err(e);
        }
        reporter.summary(
            &run.outcome.outcome.counts(),
            started.elapsed().as_secs_f64(),
        );
        Ok(run.outcome)
    }
}

/// The state of one batch run.
struct Run<'a, S> {
    batch: &'a Batch<S>,
    /// The first plan's workspace: every plan shares its store and graph.
    ws: &'a Workspace<'a>,
    reporter: &'a dyn Reporter,
    jobs: Vec<Tracked>,
    /// (stage, key) -> its job in `jobs`.
    by_key: BTreeMap<(String, String), usize>,
    /// (stage, key) of the cached, reused and pulled stages already announced.
    announced: BTreeSet<(String, String)>,
    outcome: BatchOutcome,
    /// When the first job was seen running (the submit-to-start latency).
    first_start: Option<Instant>,
}

impl<S: BatchSystem> Run<'_, S> {
    fn submit_all(&mut self, run: &PlanRun<'_>, dry_run: bool) -> Result<()> {
        let mut keys: BTreeMap<&str, &str> = BTreeMap::new();
        for step in &run.plan.steps {
            keys.insert(step.stage, &step.key);
            let id = (step.stage.to_string(), step.key.clone());
            let Action::Run(why) = &step.action else {
                if self.announced.insert(id) {
                    self.announce(step);
                }
                continue;
            };
            if self.by_key.contains_key(&id) {
                continue; // an earlier plan of this run builds it
            }
            let needs = self.needs(step.stage, &keys);
            let request = self.batch.request(run.ws, step, run.overrides);
            let (job_id, done) = if dry_run {
                self.reporter.would_run(step.stage, &step.key, why);
                let after: Vec<String> = needs
                    .iter()
                    .map(|&i| format!("<job of {}>", self.jobs[i].stage))
                    .collect();
                let line = self.batch.system.submit_command(&request, &after);
                self.reporter.note(step.stage, &shell_line(&line));
                self.outcome.outcome.ran.push(step.stage.to_string());
                (String::new(), true)
            } else {
                self.reporter.started(step.stage, &step.key, why);
                let after = self.pending_ids(&needs);
                let job_id = self.batch.system.submit(&request, &after)?;
                self.reporter
                    .job(step.stage, &step.key, &job_id, "submitted");
                (job_id, false)
            };
            self.by_key.insert(id, self.jobs.len());
            self.jobs.push(Tracked {
                stage: step.stage,
                request,
                needs,
                id: job_id,
                tries: u32::from(!dry_run),
                shown: None,
                submitted: Instant::now(),
                done,
            });
        }
        Ok(())
    }

    /// Reports a stage that needs no job.
    fn announce(&mut self, step: &Step) {
        let out = &mut self.outcome.outcome;
        match &step.action {
            Action::Cached(_) => {
                self.reporter.cached(step.stage, &step.key);
                out.cached.push(step.stage.to_string());
            }
            Action::Reuse { stale, .. } => {
                self.reporter.reused(step.stage, &step.key, stale);
                out.reused.push(step.stage.to_string());
            }
            Action::Pulled(_) => out.pulled.push(step.stage.to_string()),
            Action::Run(_) => {}
        }
    }

    /// The tracked jobs of `stage`'s direct upstreams, at the keys this plan gave them, in
    /// submission order.
    fn needs(&self, stage: &str, keys: &BTreeMap<&str, &str>) -> Vec<usize> {
        let mut needs: Vec<usize> = self
            .ws
            .dag
            .deps(stage)
            .into_iter()
            .filter_map(|dep| {
                let key = keys.get(dep)?;
                self.by_key
                    .get(&(dep.to_string(), key.to_string()))
                    .copied()
            })
            .collect();
        needs.sort_unstable();
        needs
    }

    /// The ids of the jobs among `needs` that have not completed: a new job waits for them.
    fn pending_ids(&self, needs: &[usize]) -> Vec<String> {
        needs
            .iter()
            .filter(|&&i| !self.jobs[i].done)
            .map(|&i| self.jobs[i].id.clone())
            .collect()
    }

    /// The jobs that wait for job `i`, directly or through others (later in the list).
    fn downstream(&self, i: usize) -> Vec<usize> {
        let mut reached = vec![false; self.jobs.len()];
        reached[i] = true;
        let mut out = Vec::new();
        for j in i + 1..self.jobs.len() {
            if self.jobs[j].needs.iter().any(|&n| reached[n]) {
                reached[j] = true;
                out.push(j);
            }
        }
        out
    }

    fn watch(&mut self, interrupts: &Interrupts) -> Result<()> {
        let mut failed_polls = 0;
        loop {
            if let Some(signal) = interrupts.raised() {
                let cancelled = self.cancel_active();
                return Err(PipeError::Interrupted(format!(
                    "interrupted ({signal}): cancelled {} job(s) {}",
                    self.batch.system.name(),
                    if cancelled.is_empty() {
                        "(none were left)".to_string()
                    } else {
                        cancelled.join(", ")
                    }
                )));
            }
            let active: Vec<String> = self
                .jobs
                .iter()
                .filter(|j| !j.done)
                .map(|j| j.id.clone())
                .collect();
            if active.is_empty() {
                return Ok(());
            }
            let states = match self.batch.system.poll(&active) {
                Ok(states) => {
                    failed_polls = 0;
                    states
                }
                Err(e) if failed_polls < POLL_FAILURES => {
                    failed_polls += 1;
                    self.reporter
                        .warning(&format!("cannot read job states (will retry): {e}"));
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for i in 0..self.jobs.len() {
                // Jobs resubmitted during this pass have ids the poll did not ask about.
                if self.jobs[i].done || !active.contains(&self.jobs[i].id) {
                    continue;
                }
                match states.get(&self.jobs[i].id) {
                    Some(state) => self.step(i, state.clone())?,
                    None => self.vanished(i)?,
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// Acts on one job's state.
    fn step(&mut self, i: usize, state: JobState) -> Result<()> {
        self.show(i, &state);
        match state {
            JobState::Pending(_) | JobState::Running(_) => Ok(()),
            JobState::Completed => {
                self.completed(i);
                Ok(())
            }
            JobState::Interrupted(why) if self.jobs[i].tries < TRIES => self.resubmit(i, &why),
            JobState::Interrupted(why) => {
                self.fail(i, &format!("{why} (already resubmitted once)"));
                Ok(())
            }
            JobState::Failed(why) => {
                self.fail(i, &why);
                Ok(())
            }
        }
    }

    /// A job the system no longer knows (finished long ago, no accounting): the store says
    /// whether it committed.
    fn vanished(&mut self, i: usize) -> Result<()> {
        let job = &self.jobs[i];
        if job.submitted.elapsed() < Duration::from_secs(5) {
            return Ok(()); // not visible yet
        }
        if self.ws.store.lookup(job.stage, &job.request.key).is_some() {
            self.completed(i);
        } else {
            let name = self.batch.system.name();
            self.fail(
                i,
                &format!("is no longer known to {name} and committed nothing"),
            );
        }
        Ok(())
    }

    fn show(&mut self, i: usize, state: &JobState) {
        if self.jobs[i].shown.as_ref() == Some(state) {
            return;
        }
        let job = &self.jobs[i];
        let mut text = state.to_string();
        if matches!(state, JobState::Running(_)) && self.first_start.is_none() {
            self.first_start = Some(Instant::now());
            text.push_str(&format!(
                " ({:.2}s after submission)",
                job.submitted.elapsed().as_secs_f64()
            ));
        }
        self.reporter
            .job(job.stage, &job.request.key, &job.id, &text);
        self.jobs[i].shown = Some(state.clone());
    }

    fn completed(&mut self, i: usize) {
        let (stage, key) = (self.jobs[i].stage, self.jobs[i].request.key.clone());
        match self.ws.store.lookup(stage, &key) {
            Some(entry) => {
                self.jobs[i].done = true;
                self.reporter
                    .finished(stage, &key, entry.manifest.duration_s);
                self.outcome.outcome.ran.push(stage.to_string());
            }
            None => self.fail(
                i,
                &format!("completed but committed no artifact for key {key}"),
            ),
        }
    }

    /// Submits job `i` again, and every job downstream of it that has not completed (they
    /// waited for the old id).
    fn resubmit(&mut self, i: usize, why: &str) -> Result<()> {
        let stage = self.jobs[i].stage;
        let mut again = vec![i];
        again.extend(
            self.downstream(i)
                .into_iter()
                .filter(|&j| !self.jobs[j].done),
        );
        let old: Vec<String> = again.iter().map(|&j| self.jobs[j].id.clone()).collect();
        self.batch.system.cancel(&old);
        for &j in &again {
            let after = self.pending_ids(&self.jobs[j].needs);
            let request = self.jobs[j].request.clone();
            let id = self.batch.system.submit(&request, &after)?;
            let note = if j == i {
                format!("{why}: resubmitted as job {id}; it resumes from its checkpoint")
            } else {
                format!("resubmitted as job {id}, after the new job of `{stage}`")
            };
            self.reporter
                .job(self.jobs[j].stage, &request.key, &self.jobs[j].id, &note);
            let job = &mut self.jobs[j];
            job.id = id;
            job.shown = None;
            job.submitted = Instant::now();
            if j == i {
                job.tries += 1;
            }
        }
        Ok(())
    }

    /// Reports job `i` failed with its log's tail, and cancels what waited for it.
    fn fail(&mut self, i: usize, why: &str) {
        self.jobs[i].done = true;
        let job = &self.jobs[i];
        let (stage, log, key) = (job.stage, job.request.log.clone(), job.request.key.clone());
        let message = format!(
            "{} job {} {why}; its log {}:\n{}",
            self.batch.system.name(),
            job.id,
            log.display(),
            log_tail(&log, LOG_TAIL)
        );
        self.reporter.failed(stage, &message);
        let failed = &mut self.outcome.failed;
        failed.insert((stage.to_string(), key), message.clone());
        if self.outcome.first_failure.is_none() {
            self.outcome.first_failure = Some(PipeError::StageFailed {
                stage: stage.to_string(),
                message,
            });
        }
        let waiting: Vec<usize> = self
            .downstream(i)
            .into_iter()
            .filter(|&j| !self.jobs[j].done)
            .collect();
        let ids: Vec<String> = waiting.iter().map(|&j| self.jobs[j].id.clone()).collect();
        self.batch.system.cancel(&ids);
        for j in waiting {
            self.jobs[j].done = true;
            self.reporter.skipped(self.jobs[j].stage, stage);
            let key = (
                self.jobs[j].stage.to_string(),
                self.jobs[j].request.key.clone(),
            );
            let why = format!("skipped: `{stage}` failed");
            self.outcome.failed.insert(key, why);
        }
    }

    /// Cancels every job not yet finished; returns their ids.
    fn cancel_active(&mut self) -> Vec<String> {
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| !j.done && !j.id.is_empty())
            .map(|j| j.id.clone())
            .collect();
        self.batch.system.cancel(&ids);
        for job in &mut self.jobs {
            job.done = true;
        }
        ids
    }
}

/// The last `n` lines of a log, indented; or why there are none.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(n)..];
            if tail.is_empty() {
                "    (the log is empty)".to_string()
            } else {
                tail.iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("    (no log: {e})"),
    }
}

/// A command line as a shell would take it back: words quoted where needed.
pub fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as one shell word: unchanged when it is plain, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_round_trip_through_sh() {
        let words: Vec<String> = ["echo", "plain", "with space", "it's", "a=b", "$HOME"]
            .map(String::from)
            .to_vec();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(shell_line(&words))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "plain with space it's a=b $HOME\n"
        );
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&log, 2), "    3\n    4");
        assert!(log_tail(&dir.path().join("none.log"), 2).contains("no log"));
    }
}
