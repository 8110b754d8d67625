//! AWS credentials from the standard places: the AWS_* variables (object_store reads them and
//! instance metadata itself) and, when no key is in the environment, the profile `AWS_PROFILE`
//! (else `default`) of ~/.aws/credentials and ~/.aws/config, as the AWS CLI reads them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// An S3 builder configured from the environment, then from the profile for what the
/// environment leaves unset.
pub fn builder() -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    if env("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(section) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| section(&text, &profile))
        {
            for (name, key) in [
                ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
                ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
                ("aws_session_token", AmazonS3ConfigKey::Token),
            ] {
                if let Some(value) = section.get(name) {
                    builder = builder.with_config(key, value);
                }
            }
        }
    }
    // ~/.aws/config names profiles `[profile NAME]`, except `[default]`.
    let config_section = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    if let Some(section) = file("AWS_CONFIG_FILE", "config")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| section(&text, &config_section))
    {
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            if let Some(region) = section.get("region") {
                builder = builder.with_region(region);
            }
        }
        if env("AWS_ENDPOINT_URL").is_none() && env("AWS_ENDPOINT").is_none() {
            if let Some(endpoint) = section.get("endpoint_url") {
                builder = builder.with_endpoint(endpoint);
            }
        }
    }
    builder
}

/// The `key = value` lines of `[name]` in an INI file.
fn section(text: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let mut current: Option<&str> = None;
    let mut found: Option<BTreeMap<String, String>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(header.trim());
            if current == Some(name) {
                found.get_or_insert_with(BTreeMap::new);
            }
            continue;
        }
        if current == Some(name) {
            if let Some((k, v)) = line.split_once('=') {
                found
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_profile_section() {
        let text = "[default]\naws_access_key_id = A\n\n[profile lab]\nregion = eu-west-1\n# c\nendpoint_url=http://x\n";
        assert_eq!(section(text, "default").unwrap()["aws_access_key_id"], "A");
        let lab = section(text, "profile lab").unwrap();
        assert_eq!(lab["region"], "eu-west-1");
        assert_eq!(lab["endpoint_url"], "http://x");
        assert!(section(text, "other").is_none());
    }
}
