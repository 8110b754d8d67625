//! The engine's tables for executors: `[executor]` (which one, and `[executor.slurm]`, the
//! default resources of every job) and each stage's `[<stage>.resources]`, which the stage
//! itself never sees (`pipe_stages::contract::ENGINE_KEYS`) and which are not part of its key.

use serde::{Deserialize, Serialize};

/// Where `pipe run` executes the stages it must run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// In this process, one stage after another.
    #[default]
    Local,
    /// One Slurm batch job per stage, chained by `--dependency=afterok`.
    Slurm,
}

impl ExecutorKind {
    /// Parses `--executor`'s value.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "local" => Some(Self::Local),
            "slurm" => Some(Self::Slurm),
            _ => None,
        }
    }
}

/// `[executor]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    #[serde(default)]
    pub kind: ExecutorKind,
    /// `[executor.slurm]`: the resources of every job, unless a stage sets its own.
    #[serde(default)]
    pub slurm: Resources,
}

/// What a stage's job asks the batch system for: `[<stage>.resources]` or `[executor.slurm]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `--partition`.
    pub partition: Option<String>,
    /// GPUs on one node: `--gres=gpu:N`; the job's `device = "auto"` then means the first GPU.
    pub gpus: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--mem`, as Slurm writes it: "16G", "4000M".
    pub mem: Option<String>,
    /// `--time`, as Slurm writes it: "2:00:00", "1-00:00:00", "30" (minutes).
    pub time: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// More `sbatch` options, verbatim: ["--qos=high", "--constraint=a100"].
    #[serde(default)]
    pub extra: Vec<String>,
}

/// `sbatch` options pipe sets itself for every job: an `extra` entry may not set them.
const RESERVED: &[&str] = &[
    "--parsable",
    "--job-name",
    "-J",
    "--chdir",
    "-D",
    "--output",
    "-o",
    "--error",
    "-e",
    "--open-mode",
    "--dependency",
    "-d",
    "--wrap",
    "--export",
    "--requeue",
    "--no-requeue",
    "--kill-on-invalid-dep",
];

impl Resources {
    /// `self` (a stage's) over `defaults` (`[executor.slurm]`): each set key wins, `extra`
    /// options add up (defaults first).
    pub fn over(&self, defaults: &Resources) -> Resources {
        let mut extra = defaults.extra.clone();
        extra.extend(self.extra.iter().cloned());
        Resources {
            partition: self
                .partition
                .clone()
                .or_else(|| defaults.partition.clone()),
            gpus: self.gpus.or(defaults.gpus),
            cpus: self.cpus.or(defaults.cpus),
            mem: self.mem.clone().or_else(|| defaults.mem.clone()),
            time: self.time.clone().or_else(|| defaults.time.clone()),
            account: self.account.clone().or_else(|| defaults.account.clone()),
            extra,
        }
    }

    /// The number of GPUs asked for (0 when none).
    pub fn gpu_count(&self) -> u32 {
        self.gpus.unwrap_or(0)
    }

    /// Checks serde cannot express: `(key, message)` relative to the resources table.
    pub fn check(&self) -> Result<(), (String, String)> {
        let empty = |key: &str, v: &Option<String>| match v {
            Some(s) if s.trim().is_empty() => {
                Err((key.to_string(), "is empty; remove the key".to_string()))
            }
            _ => Ok(()),
        };
        empty("partition", &self.partition)?;
        empty("mem", &self.mem)?;
        empty("time", &self.time)?;
        empty("account", &self.account)?;
        if self.cpus == Some(0) {
            return Err(("cpus".into(), "must be at least 1".into()));
        }
        for option in &self.extra {
            if !option.starts_with('-') {
                return Err((
                    "extra".into(),
                    format!(
                        "`{option}` is not an sbatch option; write options such as \"--qos=high\""
                    ),
                ));
            }
            let name = option.split('=').next().unwrap_or(option);
            if RESERVED.contains(&name) {
                return Err((
                    "extra".into(),
                    format!("`{option}`: pipe sets {name} itself for every job; remove it"),
                ));
            }
        }
        Ok(())
    }

    /// The `sbatch` options these resources turn into, in a fixed order.
    pub fn sbatch_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.partition {
            out.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.account {
            out.push(format!("--account={a}"));
        }
        if let Some(c) = self.cpus {
            out.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &self.mem {
            out.push(format!("--mem={m}"));
        }
        if let Some(t) = &self.time {
            out.push(format!("--time={t}"));
        }
        if self.gpu_count() > 0 {
            out.push(format!("--gres=gpu:{}", self.gpu_count()));
        }
        out.extend(self.extra.iter().cloned());
        out
    }
}

/// The part of a stage's table the engine reads: `resources`, other keys ignored (the stage's
/// own config checks those).
#[derive(Debug, Default, Deserialize)]
pub struct StageEngineKeys {
    #[serde(default)]
    pub resources: Option<Resources>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_overrides_the_defaults_and_extras_add_up() {
        let defaults = Resources {
            partition: Some("cpu".into()),
            time: Some("1:00:00".into()),
            extra: vec!["--qos=low".into()],
            ..Default::default()
        };
        let sft = Resources {
            partition: Some("gpu".into()),
            gpus: Some(2),
            mem: Some("32G".into()),
            extra: vec!["--constraint=a100".into()],
            ..Default::default()
        };
        let merged = sft.over(&defaults);
        assert_eq!(
            merged.sbatch_options(),
            [
                "--partition=gpu",
                "--mem=32G",
                "--time=1:00:00",
                "--gres=gpu:2",
                "--qos=low",
                "--constraint=a100"
            ]
        );
    }

    #[test]
    fn extra_options_pipe_sets_itself_are_refused() {
        let r = Resources {
            extra: vec!["--dependency=afterok:1".into()],
            ..Default::default()
        };
        let (key, msg) = r.check().unwrap_err();
        assert_eq!(key, "extra");
        assert!(msg.contains("pipe sets --dependency itself"), "{msg}");
        let r = Resources {
            extra: vec!["qos=high".into()],
            ..Default::default()
        };
        assert!(r.check().unwrap_err().1.contains("not an sbatch option"));
    }
}
