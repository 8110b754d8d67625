//! `[cache]`: the shared artifact cache a workspace pulls from and pushes to. Only where it is;
//! credentials come from the standard places (AWS_*, GOOGLE_*, AZURE_* variables, AWS
//! profiles, instance metadata), never from pipeline.toml.

use serde::{Deserialize, Serialize};

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or `file:///path`.
    pub remote: Option<String>,
    /// Upload every artifact a run commits (`false`: only `pipe push` uploads).
    #[serde(default = "yes")]
    pub push: bool,
    /// Look stale stages up remotely and download instead of running (`false`: only `pipe pull`).
    #[serde(default = "yes")]
    pub pull: bool,
}

fn yes() -> bool {
    true
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            remote: None,
            push: true,
            pull: true,
        }
    }
}

/// The schemes `[cache] remote` accepts.
pub const SCHEMES: &[&str] = &["s3", "gs", "az", "file"];

impl CacheConfig {
    /// A remote URL with a scheme pipe does not know: the message for `cache.remote`.
    pub fn check(&self) -> Result<(), String> {
        let Some(url) = &self.remote else {
            return Ok(());
        };
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !SCHEMES.contains(&scheme) {
            return Err(format!(
                "`{url}` is not a remote pipe knows: use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///absolute/path"
            ));
        }
        if url
            .split_once("://")
            .map(|(_, rest)| rest.trim_matches('/').is_empty())
            == Some(true)
        {
            return Err(format!("`{url}` names no bucket or directory"));
        }
        Ok(())
    }
}
