//! The real components the cluster tests use, started by the project's scripts: a one-node
//! Slurm cluster (scripts/slurm-up.sh) and a local S3 server (scripts/s3-up.sh). A test skips,
//! with a loud line, only when a script says the component cannot be installed here (exit 77).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs a start script once per test process: `Some(stdout)` when the component is up,
/// `None` when it cannot be installed here; any other failure fails the test.
fn start(name: &str) -> Option<String> {
    let out = Command::new("bash")
        .arg(script(name))
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(77) => {
            eprintln!(
                "!!! SKIPPED: scripts/{name} cannot install or start its component here:\n{stderr}"
            );
            None
        }
        _ => panic!("scripts/{name} failed ({}):\n{stderr}", out.status),
    }
}

/// Whether the local Slurm cluster is up (started if needed).
pub fn slurm() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    *UP.get_or_init(|| start("slurm-up.sh").is_some())
}

/// The local S3 endpoint (started if needed).
pub fn s3() -> Option<String> {
    static UP: OnceLock<Option<String>> = OnceLock::new();
    UP.get_or_init(|| start("s3-up.sh")).clone()
}

/// The environment a pipe process needs to use the local S3 server: credentials in the
/// standard AWS variables, never in pipeline.toml.
pub fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "pipe-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "pipe-test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// Creates a bucket on the local S3 server (moto takes an unsigned PUT).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let out = Command::new("curl")
        .args(["-sS", "-f", "-X", "PUT", &format!("{endpoint}/{bucket}")])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "cannot create bucket {bucket}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}
