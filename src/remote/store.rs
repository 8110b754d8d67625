//! One shared cache as an `object_store` (S3, GCS, Azure, a directory): artifacts under
//! `<prefix>/<stage>/<key>/`, the files first and `manifest.json` last, so a key counts
//! remotely only once all of it is there. Downloads are streamed to disk and checked file by
//! file against the manifest's size and blake3 digest; uploads of large files are multipart.

use std::io::{Read, Write};
use std::path::{Component, Path as FsPath};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, PutPayload, RetryConfig, WriteMultipart};

use crate::store::{Entry, Manifest, Store, MANIFEST};

/// Files above this size are uploaded in parts of this size (S3's minimum part is 5 MiB).
const PART: usize = 8 << 20;
/// How many parts of one file are in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Read buffer for uploads.
const CHUNK: usize = 1 << 20;

/// Why the shared cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Not reachable, or credentials refused: the run goes on locally.
    #[error("{url}: {message}")]
    Unavailable { url: String, message: String },
    /// What it holds for a key does not match its manifest: refused.
    #[error("{url}: the artifact {stage}/{key} is refused: {message}")]
    Refused {
        url: String,
        stage: String,
        key: String,
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{0}")]
    Local(String),
}

/// What a transfer moved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transfer {
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// An open shared cache.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// Opens `url` (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///path`) with
    /// credentials from the environment (AWS_*, GOOGLE_*, AZURE_* variables, instance
    /// metadata; AWS profiles through `AWS_PROFILE` and ~/.aws).
    pub fn open(url: &str) -> Result<Self, RemoteError> {
        let unavailable = |message: String| RemoteError::Unavailable {
            url: url.to_string(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| unavailable(format!("not a URL: {e}")))?;
        let prefix = Path::from(parsed.path().trim_matches('/'));
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| unavailable("a file:// remote needs an absolute path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| unavailable(e.to_string()))?;
                return Ok(Self {
                    url: url.to_string(),
                    store: Arc::new(local),
                    prefix: Path::default(),
                    runtime: runtime().map_err(unavailable)?,
                });
            }
            "s3" => Arc::new(
                timeouts(super::aws_profile::builder(), |b, k, v| {
                    b.with_config(object_store::aws::AmazonS3ConfigKey::Client(k), v)
                })
                .with_url(url)
                .with_retry(retry())
                .build()
                .map_err(|e| unavailable(e.to_string()))?,
            ),
            "gs" => Arc::new(
                timeouts(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env(),
                    |b, k, v| b.with_config(object_store::gcp::GoogleConfigKey::Client(k), v),
                )
                .with_url(url)
                .with_retry(retry())
                .build()
                .map_err(|e| unavailable(e.to_string()))?,
            ),
            "az" => Arc::new(
                timeouts(
                    object_store::azure::MicrosoftAzureBuilder::from_env(),
                    |b, k, v| b.with_config(object_store::azure::AzureConfigKey::Client(k), v),
                )
                .with_url(url)
                .with_retry(retry())
                .build()
                .map_err(|e| unavailable(e.to_string()))?,
            ),
            other => return Err(unavailable(format!("unknown scheme `{other}`"))),
        };
        Ok(Self {
            url: url.to_string(),
            store,
            prefix,
            runtime: runtime().map_err(unavailable)?,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object(&self, stage: &str, key: &str, rel: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in [stage, key].into_iter().chain(rel.split('/')) {
            path = path.child(part);
        }
        path
    }

    fn unavailable(&self, e: impl std::error::Error) -> RemoteError {
        RemoteError::Unavailable {
            url: self.url.clone(),
            message: chain(&e),
        }
    }

    fn refused(&self, stage: &str, key: &str, message: String) -> RemoteError {
        RemoteError::Refused {
            url: self.url.clone(),
            stage: stage.to_string(),
            key: key.to_string(),
            message,
        }
    }

    /// The manifest the cache holds for `stage`/`key`, if it holds one.
    pub fn manifest(&self, stage: &str, key: &str) -> Result<Option<Manifest>, RemoteError> {
        let path = self.object(stage, key, MANIFEST);
        let bytes = self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(got) => got.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let Some(bytes) = bytes.map_err(|e| self.unavailable(e))? else {
            return Ok(None);
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| self.refused(stage, key, format!("unreadable manifest ({e})")))?;
        if manifest.stage != stage || manifest.key != key {
            return Err(self.refused(
                stage,
                key,
                format!("its manifest describes {}/{}", manifest.stage, manifest.key),
            ));
        }
        for output in &manifest.outputs {
            if !is_plain_relative(&output.path) || output.path == MANIFEST {
                return Err(self.refused(
                    stage,
                    key,
                    format!("its manifest lists the unsafe path `{}`", output.path),
                ));
            }
        }
        Ok(Some(manifest))
    }

    /// Uploads a committed entry: every output, then its manifest. Does nothing when the
    /// cache already has the key (`None`).
    pub fn push(&self, entry: &Entry) -> Result<Option<Transfer>, RemoteError> {
        let (stage, key) = (&entry.manifest.stage, &entry.manifest.key);
        if self.manifest(stage, key)?.is_some() {
            return Ok(None);
        }
        let clock = std::time::Instant::now();
        let mut moved = Transfer::default();
        for output in &entry.manifest.outputs {
            let local = entry.dir.join(&output.path);
            self.upload(&local, &self.object(stage, key, &output.path))?;
            moved.files += 1;
            moved.bytes += output.size;
        }
        let manifest = entry.dir.join(MANIFEST);
        self.upload(&manifest, &self.object(stage, key, MANIFEST))?;
        moved.seconds = clock.elapsed().as_secs_f64();
        Ok(Some(moved))
    }

    fn upload(&self, local: &FsPath, object: &Path) -> Result<(), RemoteError> {
        let local_err = |e: std::io::Error| RemoteError::Local(format!("{}: {e}", local.display()));
        let mut file = std::fs::File::open(local).map_err(local_err)?;
        let size = file.metadata().map_err(local_err)?.len();
        self.runtime.block_on(async {
            if size as usize <= PART {
                let mut bytes = Vec::with_capacity(size as usize);
                file.read_to_end(&mut bytes).map_err(local_err)?;
                self.store
                    .put(object, PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.unavailable(e))?;
                return Ok(());
            }
            let upload = self
                .store
                .put_multipart(object)
                .await
                .map_err(|e| self.unavailable(e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf).map_err(local_err)?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(|e| self.unavailable(e))?;
            Ok(())
        })
    }

    /// Downloads `stage`/`key` into the local store, checking every file against the remote
    /// manifest first; `None` when the cache does not have the key.
    pub fn pull(
        &self,
        store: &Store,
        stage: &str,
        key: &str,
    ) -> Result<Option<(Entry, Transfer)>, RemoteError> {
        let Some(manifest) = self.manifest(stage, key)? else {
            return Ok(None);
        };
        let clock = std::time::Instant::now();
        let scratch = store
            .scratch()
            .map_err(|e| RemoteError::Local(e.to_string()))?;
        let mut moved = Transfer::default();
        for output in &manifest.outputs {
            let local = scratch.dir().join(&output.path);
            let object = self.object(stage, key, &output.path);
            let (size, digest) = self.download(stage, key, &object, &local)?;
            if size != output.size {
                return Err(self.refused(
                    stage,
                    key,
                    format!(
                        "{} has {size} bytes, its manifest says {}",
                        output.path, output.size
                    ),
                ));
            }
            if digest != output.blake3 {
                return Err(self.refused(
                    stage,
                    key,
                    format!(
                        "{} does not match its blake3 digest in the manifest",
                        output.path
                    ),
                ));
            }
            moved.files += 1;
            moved.bytes += size;
        }
        let entry = store
            .commit(scratch, manifest)
            .map_err(|e| RemoteError::Local(e.to_string()))?;
        moved.seconds = clock.elapsed().as_secs_f64();
        Ok(Some((entry, moved)))
    }

    /// Streams one object to `local`, hashing on the way: (size, blake3).
    fn download(
        &self,
        stage: &str,
        key: &str,
        object: &Path,
        local: &FsPath,
    ) -> Result<(u64, String), RemoteError> {
        let local_err = |e: std::io::Error| RemoteError::Local(format!("{}: {e}", local.display()));
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(local_err)?;
        }
        let mut file = std::fs::File::create(local).map_err(local_err)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        self.runtime.block_on(async {
            let got = self.store.get(object).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => self.refused(
                    stage,
                    key,
                    format!("{object} is listed in its manifest but missing"),
                ),
                other => self.unavailable(other),
            })?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.unavailable(e))?;
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(local_err)?;
                size += chunk.len() as u64;
            }
            Ok::<(), RemoteError>(())
        })?;
        Ok((size, hasher.finalize().to_hex().to_string()))
    }
}

/// An error with its sources: object_store's own message hides the cause (a refused
/// connection, a TLS or credentials problem) in its source chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(&format!(": {more}"));
        }
        source = s.source();
    }
    text
}

/// A path of plain names below the entry directory (no `..`, not absolute).
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && FsPath::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))
}

/// A short connect timeout (an unreachable cache must not hold a run up) and a generous
/// transfer time (gigabytes), set key by key so the client settings the environment gave
/// (`AWS_ALLOW_HTTP`, proxies) stay.
fn timeouts<B>(builder: B, set: impl Fn(B, ClientConfigKey, &str) -> B) -> B {
    let builder = set(builder, ClientConfigKey::ConnectTimeout, "5s");
    set(builder, ClientConfigKey::Timeout, "1h")
}

fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        ..RetryConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_must_stay_inside_the_entry() {
        assert!(is_plain_relative("adapter/adapter_model.safetensors"));
        assert!(!is_plain_relative("../../etc/passwd"));
        assert!(!is_plain_relative("/etc/passwd"));
        assert!(!is_plain_relative(""));
    }
}
