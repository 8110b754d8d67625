//! Slurm as a [`BatchSystem`]: `sbatch --wrap` to submit, `scontrol show job` for states (it
//! works without accounting; `sacct` for jobs the controller has already forgotten), `scancel`.

use std::collections::BTreeMap;
use std::process::Command;

use crate::error::{PipeError, Result};

use super::jobs::{shell_line, BatchSystem, JobRequest, JobState};
use super::GPUS_ENV;

/// The Slurm commands on this machine's PATH.
#[derive(Debug, Default)]
pub struct Slurm;

impl Slurm {
    pub fn new() -> Self {
        Self
    }
}

impl BatchSystem for Slurm {
    fn name(&self) -> &'static str {
        "Slurm"
    }

    fn submit_command(&self, job: &JobRequest, after: &[String]) -> Vec<String> {
        let mut argv = vec![
            "sbatch".to_string(),
            "--parsable".to_string(),
            format!("--job-name=pipe-{}", job.stage),
            format!("--chdir={}", job.workdir.display()),
            format!("--output={}", job.log.display()),
            // A resubmitted job appends to the first one's log.
            "--open-mode=append".to_string(),
            // pipe resubmits what a time limit or a lost node killed, once; Slurm must not too.
            "--no-requeue".to_string(),
            "--export=ALL".to_string(),
        ];
        if !after.is_empty() {
            argv.push(format!("--dependency=afterok:{}", after.join(":")));
            argv.push("--kill-on-invalid-dep=yes".to_string());
        }
        argv.extend(job.resources.sbatch_options());
        argv.push(format!("--wrap=exec {}", shell_line(&job.command)));
        argv
    }

    fn submit(&self, job: &JobRequest, after: &[String]) -> Result<String> {
        if let Some(dir) = job.log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PipeError::io(dir, e))?;
        }
        let argv = self.submit_command(job, after);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).env_remove(GPUS_ENV);
        command.envs(job.env.iter().map(|(k, v)| (k, v)));
        let refused = |message: String| PipeError::StageFailed {
            stage: job.stage.clone(),
            message,
        };
        let out = command.output().map_err(|e| {
            refused(format!(
                "cannot run sbatch ({e}): --executor slurm needs the Slurm commands on PATH (a login node)"
            ))
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(refused(format!(
                "sbatch refused its job: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // `--parsable` prints `id` or `id;cluster`.
        let id = stdout.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refused(format!("sbatch printed no job id: {stdout:?}")));
        }
        Ok(id)
    }

    fn poll(&self, ids: &[String]) -> Result<BTreeMap<String, JobState>> {
        let out = Command::new("scontrol")
            .args(["show", "job", "-o"])
            .output()
            .map_err(|e| PipeError::Usage(format!("cannot run scontrol: {e}")))?;
        if !out.status.success() {
            return Err(PipeError::Usage(format!(
                "scontrol show job failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut states = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields = fields(line);
            let Some(id) = fields.get("JobId") else {
                continue;
            };
            if ids.contains(id) {
                states.insert(id.clone(), state_of(&fields));
            }
        }
        let forgotten: Vec<&String> = ids.iter().filter(|id| !states.contains_key(*id)).collect();
        for id in forgotten {
            if let Some(state) = sacct_state(id) {
                states.insert(id.clone(), state);
            }
        }
        Ok(states)
    }

    fn cancel(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let _ = Command::new("scancel").args(ids).output();
    }
}

/// `Key=Value` pairs of one `scontrol show job -o` line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn state_of(fields: &BTreeMap<String, String>) -> JobState {
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    classify(
        &get("JobState"),
        &get("Reason"),
        &get("ExitCode"),
        &get("NodeList"),
    )
}

/// A Slurm state (`scontrol`'s or `sacct`'s) in pipe's terms.
fn classify(state: &str, reason: &str, exit: &str, nodes: &str) -> JobState {
    // sacct writes `CANCELLED by 0`.
    let state = state.split_whitespace().next().unwrap_or("");
    match state {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "SUSPENDED" | "RESIZING"
        | "STOPPED" | "SIGNALING" | "CONFIGURING" => {
            let reason = if state == "PENDING" {
                reason.to_string()
            } else {
                state.to_string()
            };
            JobState::Pending(reason)
        }
        "RUNNING" | "COMPLETING" | "STAGE_OUT" => JobState::Running(nodes.to_string()),
        "COMPLETED" => JobState::Completed,
        "TIMEOUT" => JobState::Interrupted("TIMEOUT: killed at its time limit".into()),
        "NODE_FAIL" => JobState::Interrupted("NODE_FAIL: its node failed".into()),
        "PREEMPTED" => JobState::Interrupted("PREEMPTED".into()),
        "BOOT_FAIL" => JobState::Interrupted("BOOT_FAIL: its node did not boot".into()),
        "FAILED" => JobState::Failed(format!("FAILED ({})", exit_text(exit))),
        "CANCELLED" => JobState::Failed("CANCELLED (scancel, or an administrator)".into()),
        "OUT_OF_MEMORY" => {
            JobState::Failed("OUT_OF_MEMORY: raise `mem` in the stage's resources".into())
        }
        "DEADLINE" => JobState::Failed("DEADLINE: it could not finish before its deadline".into()),
        other => JobState::Failed(format!("{other} ({})", exit_text(exit))),
    }
}

/// `1:0` → "exit code 1", `0:9` → "killed by signal 9".
fn exit_text(exit: &str) -> String {
    match exit.split_once(':') {
        Some((_, signal)) if signal != "0" => format!("killed by signal {signal}"),
        Some((code, _)) => format!("exit code {code}"),
        None if exit.is_empty() => "no exit code".to_string(),
        None => format!("exit code {exit}"),
    }
}

/// The state accounting recorded, for a job the controller has forgotten; none without
/// accounting.
fn sacct_state(id: &str) -> Option<JobState> {
    let out = Command::new("sacct")
        .args(["-n", "-P", "-X", "-j", id, "-o", "State,ExitCode,NodeList"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    let mut parts = line.split('|');
    let state = parts.next()?;
    let exit = parts.next().unwrap_or("");
    let nodes = parts.next().unwrap_or("");
    Some(classify(state, "", exit, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::config::Resources;
    use std::path::PathBuf;

    #[test]
    fn states_and_exit_codes_read_as_pipe_says_them() {
        let line = "JobId=12 JobName=pipe-sft JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=1:0 NodeList=vm";
        assert_eq!(
            state_of(&fields(line)),
            JobState::Failed("FAILED (exit code 1)".into())
        );
        assert_eq!(
            classify("PENDING", "Dependency", "0:0", ""),
            JobState::Pending("Dependency".into())
        );
        assert!(matches!(
            classify("TIMEOUT", "TimeLimit", "0:15", "vm"),
            JobState::Interrupted(_)
        ));
        assert_eq!(exit_text("0:9"), "killed by signal 9");
        assert!(matches!(
            classify("CANCELLED by 0", "", "", ""),
            JobState::Failed(_)
        ));
    }

    #[test]
    fn the_sbatch_line_chains_after_upstream_jobs_with_the_stage_resources() {
        let job = JobRequest {
            stage: "sft".into(),
            key: "0123456789abcdef".into(),
            workdir: PathBuf::from("/ws"),
            log: PathBuf::from("/ws/artifacts/.logs/sft/0123456789abcdef.log"),
            command: ["/bin/pipe", "run", "--only", "sft"]
                .map(String::from)
                .to_vec(),
            env: vec![],
            resources: Resources {
                gpus: Some(1),
                time: Some("2:00:00".into()),
                ..Default::default()
            },
        };
        let line = shell_line(&Slurm.submit_command(&job, &["41".into(), "42".into()]));
        assert_eq!(
            line,
            "sbatch --parsable --job-name=pipe-sft --chdir=/ws \
             --output=/ws/artifacts/.logs/sft/0123456789abcdef.log --open-mode=append \
             --no-requeue --export=ALL --dependency=afterok:41:42 --kill-on-invalid-dep=yes \
             --time=2:00:00 --gres=gpu:1 '--wrap=exec /bin/pipe run --only sft'"
        );
    }
}
