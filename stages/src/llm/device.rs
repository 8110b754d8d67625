//! Where the model runs: `device = "auto" | "cpu" | "cuda:N"` as stages and tools accept it,
//! parsed in one place and turned into a candle device. CUDA needs a build with the `cuda`
//! feature; the default build is CPU-only and says so instead of failing obscurely.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{LlmError, LlmResult};

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA GPU when this build has CUDA support and one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
}

/// Set by the engine in a batch job that was given GPUs (`[<stage>.resources] gpus`): there
/// `auto` means the first GPU, and a build or node without one is an error, not a silent CPU run.
pub use crate::contract::GPUS_ENV;

/// The number of GPUs the engine gave this job, if any.
fn job_gpus() -> Option<u32> {
    std::env::var(GPUS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
}

impl DeviceChoice {
    /// Opens the device. `cuda:N` on a build without CUDA, or with no such GPU, is an error
    /// that says what to do; so is `auto` in a job that was given GPUs ([`GPUS_ENV`]).
    pub fn open(self) -> LlmResult<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto if job_gpus().is_some() => {
                let n = job_gpus().unwrap_or(1);
                if !candle_core::utils::cuda_is_available() {
                    return Err(LlmError::Invalid(format!(
                        "device `auto` in a job given {n} GPU(s) ({GPUS_ENV}={n}): this build of pipe has no CUDA support; rebuild with `cargo build --release --features cuda`, or drop `gpus` from the stage's resources"
                    )));
                }
                Device::new_cuda(0).map_err(|e| {
                    LlmError::Invalid(format!(
                        "device `auto` in a job given {n} GPU(s): cuda:0 cannot be opened: {e}"
                    ))
                })
            }
            DeviceChoice::Auto if candle_core::utils::cuda_is_available() => {
                Device::new_cuda(0).or(Ok(Device::Cpu))
            }
            DeviceChoice::Auto => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) if !candle_core::utils::cuda_is_available() => {
                Err(LlmError::Invalid(format!(
                    "device `cuda:{n}`: this build of pipe has no CUDA support; rebuild with `cargo build --release --features cuda` or use `cpu`"
                )))
            }
            DeviceChoice::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                LlmError::Invalid(format!("device `cuda:{n}` cannot be opened: {e}"))
            }),
        }
    }

    /// The concrete device `auto` stands for on this machine (a CUDA GPU when this build has
    /// CUDA and GPU 0 opens, or in a job given GPUs; else the CPU); `cpu` and `cuda:N` are
    /// returned as they are. Keys and `model.json` record this, so the same config on another
    /// machine is another run.
    pub fn resolve(self) -> DeviceChoice {
        self.resolve_given_gpus(job_gpus().is_some())
    }

    /// [`Self::resolve`] for a stage that will run given GPUs (`gpus`), or where it runs now:
    /// what a submitter keys for a job it sends to a GPU node.
    pub fn resolve_given_gpus(self, gpus: bool) -> DeviceChoice {
        match self {
            DeviceChoice::Auto if gpus => DeviceChoice::Cuda(0),
            DeviceChoice::Auto if candle_core::utils::cuda_is_available() => {
                match Device::new_cuda(0) {
                    Ok(_) => DeviceChoice::Cuda(0),
                    Err(_) => DeviceChoice::Cpu,
                }
            }
            DeviceChoice::Auto => DeviceChoice::Cpu,
            concrete => concrete,
        }
    }

    /// Whether this build can run on a CUDA GPU at all.
    pub fn cuda_compiled() -> bool {
        candle_core::utils::cuda_is_available()
    }
}

impl FromStr for DeviceChoice {
    type Err = LlmError;

    fn from_str(s: &str) -> LlmResult<Self> {
        let text = s.trim().to_ascii_lowercase();
        match text.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    LlmError::Invalid(format!(
                        "unknown device `{s}`: use `auto`, `cpu` or `cuda:N` (e.g. `cuda:0`)"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A short name of an opened device for reports (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for (text, want) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), want);
        }
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        assert_eq!(DeviceChoice::Cpu.resolve(), DeviceChoice::Cpu);
        assert_ne!(DeviceChoice::Auto.resolve(), DeviceChoice::Auto);
        if !DeviceChoice::cuda_compiled() {
            assert_eq!(DeviceChoice::Auto.resolve(), DeviceChoice::Cpu);
        }
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("`tpu`") && err.contains("cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_and_auto_open_without_a_gpu_and_cuda_says_what_to_do() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        let auto = DeviceChoice::Auto.open().unwrap();
        assert_eq!(auto.is_cpu(), !DeviceChoice::cuda_compiled());
        if !DeviceChoice::cuda_compiled() {
            let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn round_trips_through_serde() {
        let json = serde_json::to_string(&DeviceChoice::Cuda(2)).unwrap();
        assert_eq!(json, "\"cuda:2\"");
        let back: DeviceChoice = serde_json::from_str(&json).unwrap();
        assert_eq!(back, DeviceChoice::Cuda(2));
    }
}
