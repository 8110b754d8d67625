//! Models named `hf:org/name` live in the local Hugging Face hub cache (the layout
//! `huggingface_hub` and the hf-hub crate share: `models--org--name/{refs,snapshots,blobs}`).
//! A model already in the cache is used as it is, without any network call, so `hf:` specs
//! work offline once downloaded and pipe never keeps its own copy. A model that is missing
//! is downloaded into that same cache through hf-hub, unless `HF_HUB_OFFLINE` is set.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::llm::error::{LlmError, LlmResult};
use crate::llm::io::hf_files::{
    CHAT_TEMPLATE_FILE, CONFIG_FILE, GENERATION_CONFIG_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX,
    TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use crate::llm::io::weights::shard_files;

/// The Hugging Face hub, when `HF_ENDPOINT` names no mirror.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Whether models missing from the cache are downloaded, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAccess {
    /// Only the cache is read ([`HubCache::new`]; for tools and tests).
    CacheOnly,
    /// `HF_HUB_OFFLINE` is set: only the cache is read and the network is never touched.
    Offline,
    /// Missing models are downloaded into the cache.
    Online(HubRemote),
}

/// Where downloads come from and with which credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct HubRemote {
    /// `https://huggingface.co`, or a mirror (`HF_ENDPOINT`), without a trailing `/`.
    pub endpoint: String,
    /// Access token for gated and private repositories (`HF_TOKEN`, or the saved login).
    pub token: Option<String>,
    /// Draw download progress bars on stderr (hidden anyway when it is not a terminal).
    pub progress: bool,
}

impl HubRemote {
    /// Downloads from `endpoint`, without a token or progress bars.
    pub fn new(endpoint: impl Into<String>) -> Self {
        HubRemote {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            progress: false,
        }
    }

    /// What `huggingface_hub` would use: `HF_ENDPOINT`; `HF_TOKEN`, else the token file
    /// (`HF_TOKEN_PATH`, else `$HF_HOME/token`); progress bars unless
    /// `HF_HUB_DISABLE_PROGRESS_BARS` is set.
    pub fn from_env() -> Self {
        Self::from_vars(&env_var)
    }

    fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut remote =
            HubRemote::new(var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()));
        remote.token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hf_home(var).map(|home| home.join("token")))?;
                std::fs::read_to_string(path).ok()
            })
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty());
        remote.progress = !var("HF_HUB_DISABLE_PROGRESS_BARS").is_some_and(|v| truthy(&v));
        remote
    }
}

/// Never prints the token.
impl fmt::Debug for HubRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubRemote")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("progress", &self.progress)
            .finish()
    }
}

/// The root of a Hugging Face hub cache (`~/.cache/huggingface/hub` by default), and
/// whether models missing from it are downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
    access: HubAccess,
}

impl HubCache {
    /// A cache at an explicit root, read only: nothing is downloaded into it unless
    /// [`HubCache::with_access`] says so.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubCache {
            root: root.into(),
            access: HubAccess::CacheOnly,
        }
    }

    /// The cache `huggingface_hub` would use: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`,
    /// `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`, then `~/.cache/huggingface/hub`;
    /// offline when `HF_HUB_OFFLINE` is set, otherwise downloading as [`HubRemote::from_env`].
    pub fn from_env() -> Self {
        Self::from_vars(&env_var)
    }

    fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Self {
        let path = |name: &str| var(name).map(PathBuf::from);
        let root = path("HF_HUB_CACHE")
            .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
            .or_else(|| hf_home(var).map(|home| home.join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let access = if var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)) {
            HubAccess::Offline
        } else {
            HubAccess::Online(HubRemote::from_vars(var))
        };
        HubCache { root, access }
    }

    /// The same cache with another download policy.
    pub fn with_access(mut self, access: HubAccess) -> Self {
        self.access = access;
        self
    }

    /// True when `HF_HUB_OFFLINE` asks for no network access.
    pub fn offline_from_env() -> bool {
        env_var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v))
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether and from where missing models are downloaded.
    pub fn access(&self) -> &HubAccess {
        &self.access
    }

    /// The cache folder of a model repository (`models--org--name`).
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot directory of `repo` at `revision` (a branch, tag or commit hash), if
    /// it has been downloaded. Never touches the network.
    pub fn snapshot(&self, repo: &str, revision: &str) -> LlmResult<Option<PathBuf>> {
        let repo_dir = self.repo_dir(repo);
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            let ref_file = repo_dir.join("refs").join(revision);
            match std::fs::read_to_string(&ref_file) {
                Ok(text) => text.trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(LlmError::io(ref_file, e)),
            }
        };
        if commit.is_empty() || commit.contains(['/', '\\']) || commit == ".." {
            return Err(LlmError::bad_file(
                repo_dir.join("refs").join(revision),
                "does not hold a commit hash",
            ));
        }
        let snapshot = repo_dir.join("snapshots").join(commit);
        Ok(snapshot.is_dir().then_some(snapshot))
    }

    /// The snapshot directory of `repo` at `revision` that holds `file` or, without a file,
    /// an HF model directory (config.json, tokenizer.json, safetensors weights). A snapshot
    /// that has them is used without any network call. Otherwise, when online, the missing
    /// files are downloaded into the cache first (for a model directory, also the optional
    /// tokenizer_config.json, generation_config.json and chat_template.jinja); offline, the
    /// snapshot is returned as it is, or an error says what is missing and where it goes.
    pub fn fetch(
        &self,
        spec: &str,
        repo: &str,
        revision: &str,
        file: Option<&str>,
    ) -> LlmResult<PathBuf> {
        let cached = self.snapshot(repo, revision)?;
        let missing = cached
            .as_deref()
            .map(|snapshot| missing_files(snapshot, file));
        if let (Some(snapshot), Some([])) = (&cached, missing.as_deref()) {
            return Ok(snapshot.clone());
        }
        let HubAccess::Online(remote) = &self.access else {
            // The loader explains what an incomplete snapshot lacks.
            return cached.ok_or_else(|| self.not_cached(spec, repo, revision, file));
        };
        let download = Download {
            cache: self,
            remote,
            repo,
            revision,
        };
        if let Err(failure) = download.run(file) {
            let partial = cached.as_deref().zip(missing.as_deref());
            return Err(download.explain(spec, file, partial, failure));
        }
        self.snapshot(repo, revision)?
            .ok_or_else(|| LlmError::ModelSpec {
                spec: spec.to_string(),
                message: format!(
                    "downloaded, yet no snapshot for revision `{revision}` under {}",
                    self.repo_dir(repo).display()
                ),
            })
    }

    /// The error for a repository that is not in the cache and is not downloaded, saying
    /// where it was looked for and how to get it there.
    pub fn not_cached(
        &self,
        spec: &str,
        repo: &str,
        revision: &str,
        file: Option<&str>,
    ) -> LlmError {
        let offline = match self.access {
            HubAccess::Offline => " (HF_HUB_OFFLINE is set, so nothing is downloaded)",
            HubAccess::CacheOnly | HubAccess::Online(_) => "",
        };
        LlmError::ModelSpec {
            spec: spec.to_string(),
            message: format!(
                "revision `{revision}` is not in the Hugging Face cache{offline}: looked for {}; {}",
                self.ref_path(repo, revision).display(),
                self.how_to_fetch(repo, revision, file)
            ),
        }
    }

    fn ref_path(&self, repo: &str, revision: &str) -> PathBuf {
        self.repo_dir(repo).join("refs").join(revision)
    }

    fn how_to_fetch(&self, repo: &str, revision: &str, file: Option<&str>) -> String {
        let file = file.map(|f| format!(" {f}")).unwrap_or_default();
        format!(
            "download it with `huggingface-cli download {repo}{file} --revision {revision} --cache-dir {}` \
             (or `hf download ...`; on another machine, then copy that cache folder here), \
             or point HF_HUB_CACHE / HF_HOME at the cache that holds it, \
             or give the model's local directory or .gguf path instead",
            self.root.display()
        )
    }
}

/// The files of a snapshot that `fetch` would have to download: `file`, or those an HF model
/// directory cannot load without. A snapshot holding only GGUF files lacks nothing: the
/// user must name one, and the resolver says which.
fn missing_files(snapshot: &Path, file: Option<&str>) -> Vec<String> {
    let absent = |name: &str| !snapshot.join(name).is_file();
    if let Some(file) = file {
        // A cached subfolder (`hf:org/name:subdir`) is the resolver's to classify.
        return if !snapshot.join(file).exists() {
            vec![file.to_string()]
        } else {
            Vec::new()
        };
    }
    if absent(CONFIG_FILE) && has_gguf_files(snapshot) {
        return Vec::new();
    }
    let mut missing: Vec<String> = [CONFIG_FILE, TOKENIZER_FILE]
        .into_iter()
        .filter(|name| absent(name))
        .map(str::to_string)
        .collect();
    let index = snapshot.join(SAFETENSORS_INDEX);
    if index.is_file() {
        // An unreadable index is the loader's to report, with its path.
        for shard in shard_files(&index, snapshot).unwrap_or_default() {
            if !shard.is_file() {
                missing.extend(shard.file_name().map(|n| n.to_string_lossy().into_owned()));
            }
        }
    } else if absent(SAFETENSORS_FILE) {
        missing.push(SAFETENSORS_FILE.to_string());
    }
    missing
}

fn has_gguf_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".gguf"))
    })
}

/// One download of a repository's files into the cache.
struct Download<'a> {
    cache: &'a HubCache,
    remote: &'a HubRemote,
    repo: &'a str,
    revision: &'a str,
}

/// Why a download failed.
enum Failure {
    /// The hub (or the network on the way) answered with an error at `step`.
    Api { step: Step, error: ApiError },
    /// The revision exists but lacks a file pipe needs; `ggufs` are the GGUF files it has.
    Missing {
        file: String,
        commit: String,
        ggufs: Vec<String>,
    },
    /// Anything else (a local I/O error, an unreadable shard index, an odd answer).
    Local(LlmError),
}

/// What a download was doing when it failed.
enum Step {
    Client,
    Info,
    File(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Client => write!(f, "the HTTP client"),
            Step::Info => write!(f, "the repository's file list"),
            Step::File(name) => write!(f, "`{name}`"),
        }
    }
}

impl From<LlmError> for Failure {
    fn from(error: LlmError) -> Self {
        Failure::Local(error)
    }
}

impl Download<'_> {
    /// Resolves the revision to a commit once, then downloads every file at that commit, so
    /// a branch that moves meanwhile cannot mix two versions in one snapshot.
    fn run(&self, file: Option<&str>) -> Result<(), Failure> {
        let root =
            std::path::absolute(&self.cache.root).map_err(|e| LlmError::io(&self.cache.root, e))?;
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(root.clone()))
            .with_endpoint(self.remote.endpoint.clone())
            .with_token(self.remote.token.clone())
            .with_progress(self.remote.progress)
            .with_retries(2)
            .with_user_agent("pipe", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|error| Failure::Api {
                step: Step::Client,
                error,
            })?;
        let repo_at = |revision: &str| {
            Repo::with_revision(self.repo.to_string(), RepoType::Model, revision.to_string())
        };
        let info = api
            .repo(repo_at(self.revision))
            .info()
            .map_err(|error| Failure::Api {
                step: Step::Info,
                error,
            })?;
        if !is_commit_hash(&info.sha) {
            return Err(LlmError::Invalid(format!(
                "{} answered `{}` as the commit of `{}`, not a commit hash",
                self.remote.endpoint, info.sha, self.revision
            ))
            .into());
        }
        let commit = info.sha;
        let files = Files {
            repo: api.repo(repo_at(&commit)),
            listing: info.siblings.into_iter().map(|s| s.rfilename).collect(),
            snapshot: root
                .join(format!("models--{}", self.repo.replace('/', "--")))
                .join("snapshots")
                .join(&commit),
            commit: commit.clone(),
        };
        // hf-hub records a ref named after the commit it downloads; huggingface_hub writes
        // refs only for branch and tag names, so drop the one this download adds.
        let commit_ref = self.cache.ref_path(self.repo, &commit);
        let had_commit_ref = commit_ref.exists();
        let fetched = files.fetch_all(file);
        if !had_commit_ref {
            let _ = std::fs::remove_file(&commit_ref);
        }
        fetched?;
        if self.revision != commit {
            hf_hub::Cache::new(root)
                .repo(repo_at(self.revision))
                .create_ref(&commit)
                .map_err(|e| LlmError::io(self.cache.ref_path(self.repo, self.revision), e))?;
        }
        Ok(())
    }

    /// The error for a failed download: what went wrong, what is missing, where it belongs.
    fn explain(
        &self,
        spec: &str,
        file: Option<&str>,
        partial: Option<(&Path, &[String])>,
        failure: Failure,
    ) -> LlmError {
        let (repo, revision, endpoint) = (self.repo, self.revision, &self.remote.endpoint);
        let message = match failure {
            Failure::Local(error) => return error,
            Failure::Missing {
                file: missing,
                commit,
                ggufs,
            } => {
                let found = format!(
                    "`{repo}` at revision `{revision}` (commit {commit}) on {endpoint} has no `{missing}`"
                );
                if !ggufs.is_empty() {
                    let names: Vec<String> = ggufs
                        .iter()
                        .map(|g| format!("`hf:{repo}@{revision}:{g}`"))
                        .collect();
                    format!(
                        "{found}; it holds GGUF files, name one: {}",
                        names.join(", ")
                    )
                } else if file.is_none() {
                    format!(
                        "{found}: pipe reads HF model directories with {CONFIG_FILE}, {TOKENIZER_FILE} and \
                         {SAFETENSORS_FILE} (or {SAFETENSORS_INDEX} and its shards), or GGUF files"
                    )
                } else {
                    format!("{found}, and no GGUF files")
                }
            }
            Failure::Api { step, error } => match http_status(&error) {
                Some((code @ (401 | 403), hub_says)) => {
                    let token = match self.remote.token {
                        None => {
                            "no token was sent: accept the model's terms at {page} \
                                 and set HF_TOKEN (or run `huggingface-cli login`)"
                        }
                        Some(_) => {
                            "the token sent (HF_TOKEN or the saved login) has no access: \
                                    accept the model's terms at {page} with that account"
                        }
                    }
                    .replace("{page}", &format!("{endpoint}/{repo}"));
                    format!(
                        "{endpoint} refused access to `{repo}` (HTTP {code} fetching {step}{hub_says}): \
                         the repository is gated or private, or does not exist; {token}; \
                         nothing for it in the cache at {}",
                        self.cache.repo_dir(repo).display()
                    )
                }
                Some((404, hub_says)) => {
                    let absent = match &step {
                        Step::File(name) => {
                            format!("no `{name}` in `{repo}` at revision `{revision}`")
                        }
                        Step::Client | Step::Info => {
                            format!("no revision `{revision}` of `{repo}`")
                        }
                    };
                    format!(
                        "{endpoint} has {absent} (HTTP 404{hub_says}): check the repository id \
                         and the revision; nothing for it in the cache at {}",
                        self.cache.repo_dir(repo).display()
                    )
                }
                _ => {
                    let cached = match partial {
                        Some((snapshot, missing)) => format!(
                            "the cached snapshot {} lacks {}",
                            snapshot.display(),
                            missing.join(", ")
                        ),
                        None => format!(
                            "revision `{revision}` is not in the Hugging Face cache (looked for {})",
                            self.cache.ref_path(repo, revision).display()
                        ),
                    };
                    format!(
                        "{cached}, and downloading it from {endpoint} failed while fetching {step}: {error}; \
                         {} (set HF_HUB_OFFLINE=1 to never try the network, or HF_ENDPOINT for a mirror)",
                        self.cache.how_to_fetch(repo, revision, file)
                    )
                }
            },
        };
        LlmError::ModelSpec {
            spec: spec.to_string(),
            message,
        }
    }
}

/// The files of one commit of a repository, downloaded on demand.
struct Files {
    repo: ApiRepo,
    /// Every file of the commit, as the hub listed them.
    listing: BTreeSet<String>,
    snapshot: PathBuf,
    commit: String,
}

impl Files {
    /// `file`, or an HF model directory: the required files are checked against the listing
    /// before anything is downloaded, and the weights come last.
    fn fetch_all(&self, file: Option<&str>) -> Result<(), Failure> {
        if let Some(file) = file {
            self.require(file)?;
            return self.get(file, true).map(drop);
        }
        self.require(CONFIG_FILE)?;
        self.require(TOKENIZER_FILE)?;
        if !self.listing.contains(SAFETENSORS_INDEX) {
            self.require(SAFETENSORS_FILE)?;
        }
        self.get(CONFIG_FILE, true)?;
        self.get(TOKENIZER_FILE, true)?;
        for optional in [
            TOKENIZER_CONFIG_FILE,
            GENERATION_CONFIG_FILE,
            CHAT_TEMPLATE_FILE,
        ] {
            self.get(optional, false)?;
        }
        match self.get(SAFETENSORS_INDEX, false)? {
            Some(index) => {
                let shards = shard_files(&index, Path::new(""))?;
                for shard in &shards {
                    self.require(&shard.to_string_lossy())?;
                }
                for shard in &shards {
                    self.get(&shard.to_string_lossy(), true)?;
                }
            }
            None => {
                self.get(SAFETENSORS_FILE, true)?;
            }
        }
        Ok(())
    }

    fn require(&self, name: &str) -> Result<(), Failure> {
        if self.listing.contains(name) || self.snapshot.join(name).is_file() {
            return Ok(());
        }
        Err(Failure::Missing {
            file: name.to_string(),
            commit: self.commit.clone(),
            ggufs: self
                .listing
                .iter()
                .filter(|f| f.ends_with(".gguf"))
                .cloned()
                .collect(),
        })
    }

    /// The cached path of `name`, downloading it if needed; `None` for an optional file
    /// the commit does not have (not listed, or a 404). Any other error is a failure.
    fn get(&self, name: &str, required: bool) -> Result<Option<PathBuf>, Failure> {
        let local = self.snapshot.join(name);
        if local.is_file() {
            return Ok(Some(local));
        }
        if !required && !self.listing.contains(name) {
            return Ok(None);
        }
        match self.repo.download(name) {
            Ok(path) => Ok(Some(path)),
            Err(error) if !required && http_status(&error).is_some_and(|(c, _)| c == 404) => {
                Ok(None)
            }
            Err(error) => Err(Failure::Api {
                step: Step::File(name.to_string()),
                error,
            }),
        }
    }
}

/// The HTTP status of a failed request, with the hub's own explanation (`X-Error-Message`)
/// formatted to follow it; `None` for network and local errors.
fn http_status(error: &ApiError) -> Option<(u16, String)> {
    match error {
        ApiError::RequestError(error) => match error.as_ref() {
            ureq::Error::Status(code, response) => {
                let says = response
                    .header("x-error-message")
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                Some((*code, says))
            }
            ureq::Error::Transport(_) => None,
        },
        ApiError::TooManyRetries(inner) => http_status(inner),
        _ => None,
    }
}

/// `HF_HOME`, `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`.
fn hf_home(var: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    var("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache").join("huggingface")))
}

/// A non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use candle_core::Device;

    use super::*;
    use crate::llm::io::export::{ExportDtype, HfExport};
    use crate::llm::io::loader::load_resolved;
    use crate::llm::io::spec::{ModelFormat, ModelSpec};
    use crate::llm::model::config::Architecture;
    use crate::llm::testing::{random_weights, tiny_config, tiny_tokenizer};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A local stand-in for the hub's HTTP API (what hf-hub's sync client calls): the
    /// revision info with its file list, and `resolve/<commit>/<file>` with the headers
    /// hf-hub reads (ETag, X-Repo-Commit, Content-Range). No network involved.
    struct FakeHub {
        endpoint: String,
        /// `path authorization` of every request, in order.
        requests: Arc<Mutex<Vec<String>>>,
    }

    struct Served {
        repo: String,
        files: HashMap<String, Vec<u8>>,
        /// Listed by the info endpoint, but answering 404.
        listed_only: Vec<String>,
        /// File downloads answer 401 like a gated repository.
        gated: bool,
    }

    impl FakeHub {
        fn start(served: Served) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&requests);
            // The thread ends with the test process.
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = answer(stream, &served, &log);
                }
            });
            FakeHub { endpoint, requests }
        }

        fn remote(&self) -> HubRemote {
            HubRemote::new(format!("{}/", self.endpoint))
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn answer(stream: TcpStream, served: &Served, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut range, mut auth) = (None, String::from("-"));
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((&header, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_string()),
                "authorization" => auth = value.trim().to_string(),
                _ => {}
            }
        }
        log.lock().unwrap().push(format!("{path} {auth}"));
        let repo = &served.repo;
        let mut out = stream;
        let respond =
            |out: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
                let mut head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                out.write_all(head.as_bytes())?;
                out.write_all(body)
            };
        if path == format!("/api/models/{repo}/revision/main") {
            let siblings: Vec<_> = served
                .files
                .keys()
                .chain(&served.listed_only)
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
            return respond(&mut out, "200 OK", &[], body.as_bytes());
        }
        let not_found = |out: &mut TcpStream, what: &str| {
            let headers = [("X-Error-Message", format!("{what} not found"))];
            respond(out, "404 Not Found", &headers, b"not found")
        };
        let Some(name) = path.strip_prefix(&format!("/{repo}/resolve/{COMMIT}/")) else {
            return not_found(&mut out, "Repository");
        };
        if served.gated {
            let message = format!("Access to model {repo} is restricted.");
            let headers = [
                ("X-Error-Code", "GatedRepo".into()),
                ("X-Error-Message", message),
            ];
            return respond(&mut out, "401 Unauthorized", &headers, b"gated");
        }
        let Some(content) = served.files.get(name) else {
            return not_found(&mut out, "Entry");
        };
        let start: usize = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let end = range
            .as_deref()
            .and_then(|r| r.rsplit('-').next())
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(content.len() - 1)
            .min(content.len() - 1);
        let headers = [
            ("ETag", format!("\"{}\"", blake3::hash(content).to_hex())),
            ("X-Repo-Commit", COMMIT.to_string()),
            (
                "Content-Range",
                format!("bytes {start}-{end}/{}", content.len()),
            ),
        ];
        respond(
            &mut out,
            "206 Partial Content",
            &headers,
            &content[start..=end],
        )
    }

    fn online(root: &Path, remote: HubRemote) -> HubCache {
        HubCache::new(root).with_access(HubAccess::Online(remote))
    }

    fn resolve_err(spec: &str, cache: &HubCache) -> String {
        ModelSpec::parse(spec)
            .unwrap()
            .resolve_with_cache(Path::new("."), cache)
            .unwrap_err()
            .to_string()
    }

    /// A tiny model exported as an HF directory, as the hub would serve its files.
    fn tiny_model_files() -> HashMap<String, Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(Architecture::Llama, 272, true);
        HfExport {
            config: &config,
            weights: &random_weights(&config, 3),
            tokenizer: &tiny_tokenizer(),
            chat_template: None,
            dtype: ExportDtype::F32,
        }
        .write(dir.path())
        .unwrap();
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    #[test]
    fn resolves_branches_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::new(dir.path());
        let repo_dir = dir.path().join("models--org--name");
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::create_dir_all(repo_dir.join("snapshots").join(COMMIT)).unwrap();
        std::fs::write(repo_dir.join("refs/main"), format!("{COMMIT}\n")).unwrap();
        let expected = repo_dir.join("snapshots").join(COMMIT);
        assert_eq!(
            cache.snapshot("org/name", "main").unwrap(),
            Some(expected.clone())
        );
        assert_eq!(cache.snapshot("org/name", COMMIT).unwrap(), Some(expected));
        assert_eq!(cache.snapshot("org/name", "v2").unwrap(), None);
        assert_eq!(cache.snapshot("org/other", "main").unwrap(), None);
        let message = cache
            .not_cached("hf:org/other", "org/other", "main", None)
            .to_string();
        assert!(message.contains("models--org--other"), "{message}");
        assert!(
            message.contains("huggingface-cli download org/other --revision main --cache-dir"),
            "{message}"
        );
    }

    /// A missing model is downloaded into the cache at one commit (optional files skipped
    /// when the hub lacks them, files the loader does not read never fetched), the branch
    /// ref is written as huggingface_hub writes it, the model loads, and the next
    /// resolution makes no request at all.
    #[test]
    fn downloads_a_missing_model_into_the_cache() {
        let mut files = tiny_model_files();
        assert!(files.contains_key(SAFETENSORS_FILE) && files.contains_key(CONFIG_FILE));
        files.insert("README.md".into(), b"# tiny".to_vec());
        let hub = FakeHub::start(Served {
            repo: "TinyOrg/tiny".into(),
            files,
            listed_only: vec![CHAT_TEMPLATE_FILE.into()],
            gated: false,
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = online(dir.path(), hub.remote());
        let spec = ModelSpec::parse("hf:TinyOrg/tiny").unwrap();
        let resolved = spec.resolve_with_cache(Path::new("."), &cache).unwrap();
        let repo_dir = dir.path().join("models--TinyOrg--tiny");
        let snapshot = std::path::absolute(repo_dir.join("snapshots").join(COMMIT)).unwrap();
        assert_eq!(resolved.format, ModelFormat::HfDir);
        assert_eq!(std::path::absolute(&resolved.path).unwrap(), snapshot);
        assert_eq!(
            std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
            COMMIT
        );
        assert!(!repo_dir.join("refs").join(COMMIT).exists());
        assert!(std::fs::symlink_metadata(snapshot.join(SAFETENSORS_FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        let requests = hub.requests();
        assert!(requests.iter().all(|r| r.ends_with(" -")), "{requests:?}");
        assert!(
            requests.iter().any(|r| r.contains(CHAT_TEMPLATE_FILE)),
            "{requests:?}"
        );
        assert!(
            !requests.iter().any(|r| r.contains("README")),
            "{requests:?}"
        );
        let model = load_resolved(&spec, resolved, &Device::Cpu).unwrap();
        assert_eq!(model.source.name, "TinyOrg/tiny");
        assert_eq!(model.config.vocab_size, 272);

        let count = requests.len();
        let again = spec.resolve_with_cache(Path::new("."), &cache).unwrap();
        assert_eq!(std::path::absolute(&again.path).unwrap(), snapshot);
        let pinned = ModelSpec::parse(&format!("hf:TinyOrg/tiny@{COMMIT}")).unwrap();
        assert!(pinned.resolve_with_cache(Path::new("."), &cache).is_ok());
        assert_eq!(
            hub.requests().len(),
            count,
            "a cached model needs no request"
        );
    }

    #[test]
    fn downloads_sharded_weights_and_single_gguf_files() {
        let index = serde_json::json!({ "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors",
        }});
        let files: HashMap<String, Vec<u8>> = [
            (CONFIG_FILE, b"{}".to_vec()),
            (TOKENIZER_FILE, b"{}".to_vec()),
            (SAFETENSORS_INDEX, index.to_string().into_bytes()),
            ("model-00001-of-00002.safetensors", b"one".to_vec()),
            ("model-00002-of-00002.safetensors", b"two".to_vec()),
            ("sub/m-Q4.gguf", b"GGUF-ish".to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let hub = FakeHub::start(Served {
            repo: "org/mixed".into(),
            files,
            listed_only: Vec::new(),
            gated: false,
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = online(dir.path(), hub.remote());
        let gguf = ModelSpec::parse("hf:org/mixed:sub/m-Q4.gguf")
            .unwrap()
            .resolve_with_cache(Path::new("."), &cache)
            .unwrap();
        assert_eq!(gguf.format, ModelFormat::Gguf);
        assert_eq!(std::fs::read(&gguf.path).unwrap(), b"GGUF-ish");
        let snapshot = dir.path().join("models--org--mixed/snapshots").join(COMMIT);
        assert!(!snapshot.join(CONFIG_FILE).exists(), "only the named file");

        let resolved = ModelSpec::parse("hf:org/mixed")
            .unwrap()
            .resolve_with_cache(Path::new("."), &cache)
            .unwrap();
        assert_eq!(resolved.format, ModelFormat::HfDir);
        for shard in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ] {
            assert!(snapshot.join(shard).is_file(), "{shard}");
        }
        assert!(!snapshot.join(SAFETENSORS_FILE).exists());
    }

    #[test]
    fn repositories_without_what_pipe_reads_are_explained_before_downloading() {
        let hub = FakeHub::start(Served {
            repo: "org/gguf-only".into(),
            files: [("m-Q8_0.gguf".to_string(), b"GGUF".to_vec())].into(),
            listed_only: Vec::new(),
            gated: false,
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = online(dir.path(), hub.remote());
        let err = resolve_err("hf:org/gguf-only", &cache);
        assert!(
            err.contains("has no `config.json`")
                && err.contains("`hf:org/gguf-only@main:m-Q8_0.gguf`"),
            "{err}"
        );
        let err = resolve_err("hf:org/gguf-only:other.gguf", &cache);
        assert!(
            err.contains("has no `other.gguf`") && err.contains("m-Q8_0.gguf"),
            "{err}"
        );
        let requests = hub.requests();
        assert!(
            requests.iter().all(|r| r.starts_with("/api/")),
            "{requests:?}"
        );
        let err = resolve_err("hf:org/absent", &cache);
        assert!(
            err.contains("HTTP 404")
                && err.contains("Repository not found")
                && err.contains("org/absent"),
            "{err}"
        );
    }

    #[test]
    fn gated_repositories_ask_for_a_token_and_get_it() {
        let hub = FakeHub::start(Served {
            repo: "org/gated".into(),
            files: tiny_model_files(),
            listed_only: Vec::new(),
            gated: true,
        });
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_err("hf:org/gated", &online(dir.path(), hub.remote()));
        assert!(
            err.contains("HTTP 401")
                && err.contains("is restricted")
                && err.contains("set HF_TOKEN"),
            "{err}"
        );
        let mut remote = hub.remote();
        remote.token = Some("hf_secret".into());
        assert!(!format!("{remote:?}").contains("hf_secret"));
        let err = resolve_err("hf:org/gated", &online(dir.path(), remote));
        assert!(err.contains("the token sent"), "{err}");
        assert!(
            hub.requests()
                .iter()
                .any(|r| r.ends_with("Bearer hf_secret")),
            "{:?}",
            hub.requests()
        );
        assert!(!dir.path().join("models--org--gated/refs/main").exists());
    }

    /// A hub that cannot be reached: the error names the repository, the cache folder it
    /// belongs in and the network error, and a cached model still resolves.
    #[test]
    fn unreachable_hub_says_what_is_missing_and_where_it_goes() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = online(dir.path(), HubRemote::new(format!("http://{closed}")));
        let err = resolve_err("hf:org/name@v1", &cache);
        for needle in [
            "hf:org/name@v1",
            "not in the Hugging Face cache",
            &dir.path()
                .join("models--org--name/refs/v1")
                .display()
                .to_string(),
            &format!("downloading it from http://{closed} failed"),
            "huggingface-cli download org/name --revision v1",
            "HF_HUB_OFFLINE",
        ] {
            assert!(err.contains(needle), "`{needle}` missing from: {err}");
        }
        assert!(err.to_lowercase().contains("connect"), "{err}");

        // A snapshot lacking the weights is completed from the hub; unreachable, say so.
        let snapshot = dir.path().join("models--org--name/snapshots").join(COMMIT);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(dir.path().join("models--org--name/refs")).unwrap();
        std::fs::write(dir.path().join("models--org--name/refs/main"), COMMIT).unwrap();
        std::fs::write(snapshot.join(CONFIG_FILE), "{}").unwrap();
        std::fs::write(snapshot.join(TOKENIZER_FILE), "{}").unwrap();
        let err = resolve_err("hf:org/name", &cache);
        assert!(err.contains("lacks model.safetensors"), "{err}");
        std::fs::write(snapshot.join(SAFETENSORS_FILE), "").unwrap();
        let resolved = ModelSpec::parse("hf:org/name")
            .unwrap()
            .resolve_with_cache(Path::new("."), &cache)
            .unwrap();
        assert_eq!(resolved.path, snapshot);
        std::fs::create_dir_all(snapshot.join("sub")).unwrap();
        std::fs::write(snapshot.join("sub").join(CONFIG_FILE), "{}").unwrap();
        let resolved = ModelSpec::parse("hf:org/name:sub")
            .unwrap()
            .resolve_with_cache(Path::new("."), &cache)
            .unwrap();
        assert_eq!(resolved.path, snapshot.join("sub"));
    }

    #[test]
    fn offline_never_touches_the_network() {
        let hub = FakeHub::start(Served {
            repo: "TinyOrg/tiny".into(),
            files: tiny_model_files(),
            listed_only: Vec::new(),
            gated: false,
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::new(dir.path()).with_access(HubAccess::Offline);
        let err = resolve_err("hf:TinyOrg/tiny", &cache);
        assert!(
            err.contains("HF_HUB_OFFLINE is set") && err.contains("models--TinyOrg--tiny"),
            "{err}"
        );
        let err = resolve_err("hf:TinyOrg/tiny", &HubCache::new(dir.path()));
        assert!(err.contains("not in the Hugging Face cache"), "{err}");
        assert!(hub.requests().is_empty());
    }

    #[test]
    fn settings_come_from_the_environment_as_huggingface_hub_reads_it() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("token"), "hf_saved\n").unwrap();
        let home_str = home.path().display().to_string();
        let vars = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| map.get(name).cloned()
        };

        let cache = HubCache::from_vars(&vars(&[("HF_HOME", &home_str)]));
        assert_eq!(cache.root(), home.path().join("hub"));
        let HubAccess::Online(remote) = cache.access() else {
            panic!("online by default: {cache:?}");
        };
        assert_eq!(remote.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(remote.token.as_deref(), Some("hf_saved"));
        assert!(remote.progress);

        let cache = HubCache::from_vars(&vars(&[
            ("HF_HOME", &home_str),
            ("HF_HUB_CACHE", "/elsewhere/hub"),
            ("HF_ENDPOINT", "https://mirror.example/"),
            ("HF_TOKEN", "hf_env"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ]));
        assert_eq!(cache.root(), Path::new("/elsewhere/hub"));
        let HubAccess::Online(remote) = cache.access() else {
            panic!("online: {cache:?}");
        };
        assert_eq!(remote.endpoint, "https://mirror.example");
        assert_eq!(remote.token.as_deref(), Some("hf_env"));
        assert!(!remote.progress);

        let cache = HubCache::from_vars(&vars(&[("HOME", "/home/u"), ("HF_HUB_OFFLINE", "true")]));
        assert_eq!(cache.root(), Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(cache.access(), &HubAccess::Offline);
    }
}
