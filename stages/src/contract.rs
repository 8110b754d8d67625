//! The contract between the engine and a stage: what a stage declares (kind, version, typed
//! config, the instances it reads, external inputs) and what it gets when it runs (a
//! [`StageContext`]). The engine, not the stage, computes keys, writes manifests and commits.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use crate::inputs::{Input, InputDirs, Link, Pipeline};
use crate::progress::Progress;

/// Any error a stage reports; its `Display` must name the file, row, key or step at fault.
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// The result of a stage's fallible operations.
pub type StageResult<T = ()> = Result<T, StageError>;

/// One stage of the pipeline. Implement it in one file and add one line to [`crate::registry`].
pub trait Stage: Send + Sync + 'static {
    /// The kind: the name of a table that is an instance of it without saying `kind = "…"`.
    const NAME: &'static str;
    /// Bump when the stage's output for the same inputs changes: it invalidates the cache.
    const VERSION: u32;
    /// One line for `pipe dag` and `pipe init`.
    const ABOUT: &'static str;
    /// Commented TOML for `pipe init`, starting with the `[NAME]` header.
    const STARTER: &'static str;
    /// The `[NAME]` table; use `#[serde(deny_unknown_fields)]` and defaults for optional keys.
    type Config: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Files or directories (relative to the workspace root) whose content is part of the key.
    fn external_inputs(_cfg: &Self::Config) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Paths (relative to the workspace root unless absolute) whose content is part of the key
    /// when they name a regular file, and that are left out otherwise: the arguments of a
    /// command that may or may not be files. Directories count only through `external_inputs`.
    fn optional_inputs(_cfg: &Self::Config) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Facts of the machine the stage's output depends on (the device `auto` resolved to), as
    /// `name -> value`: part of the key, so a run elsewhere never reuses this one's outputs.
    /// `gpus`: as on a node that gives the stage GPUs (a batch job with `resources.gpus`),
    /// else as here.
    fn environment(_cfg: &Self::Config, _gpus: bool) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// The instances this one reads, each named by a key of its config (`data = "ingest"`) or
    /// by a default that may depend on what else `pipeline` holds. The engine checks that each
    /// exists and is of a kind that can serve, and makes the graph and the keys from them.
    fn inputs(_cfg: &Self::Config, _pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        Ok(Vec::new())
    }

    /// Checks serde cannot express (a fraction in (0, 1), exclusive options); name the key.
    fn validate(_cfg: &Self::Config) -> Result<(), ConfigIssue> {
        Ok(())
    }

    /// Reads `cx.input(dep)` and the external inputs, writes everything into `cx.out_dir()`.
    fn run(cfg: &Self::Config, cx: &mut StageContext) -> StageResult;

    /// The stage's own part of `pipe show`: a readable view of a committed artifact directory.
    fn show(_dir: &Path, _out: &mut dyn std::io::Write) -> std::io::Result<()> {
        Ok(())
    }
}

/// A semantic config error: `key` is relative to the stage's table (`val_fraction`, `lora.r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Why a stage's table could not be loaded; the engine turns it into a located message.
#[derive(Debug)]
pub enum ConfigProblem {
    /// A syntax, unknown-key, missing-key or type error, with a span into the document.
    Toml(toml::de::Error),
    /// A value of the right type that the stage refuses.
    Invalid(ConfigIssue),
}

/// A stage's typed config plus what the engine needs from it without knowing its type.
pub struct LoadedConfig {
    /// Every key with defaults filled in, as JSON (objects are key-sorted): hashed into the key.
    pub canonical: serde_json::Value,
    /// External files or directories, relative to the workspace root unless absolute.
    pub external_inputs: Vec<PathBuf>,
    /// Paths hashed into the key only when they name a file ([`Stage::optional_inputs`]).
    pub optional_inputs: Vec<PathBuf>,
    /// [`Stage::environment`]: machine facts hashed into the key, as here.
    pub environment: BTreeMap<String, String>,
    /// The same facts for a batch job given GPUs: what its submitter keys.
    pub environment_on_gpus: BTreeMap<String, String>,
    typed: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for LoadedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedConfig")
            .field("canonical", &self.canonical)
            .field("external_inputs", &self.external_inputs)
            .field("optional_inputs", &self.optional_inputs)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// The object-safe face of a [`Stage`], as the engine sees it.
pub trait DynStage: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn about(&self) -> &'static str;
    fn starter(&self) -> &'static str;
    /// Loads the table `table` (an instance of this kind) from the whole pipeline.toml text
    /// (absent table = empty table).
    fn load_config(&self, document: &str, table: &str) -> Result<LoadedConfig, ConfigProblem>;
    /// [`Stage::inputs`] of a config this stage loaded.
    fn inputs(&self, cfg: &LoadedConfig, pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue>;
    fn run(&self, cfg: &LoadedConfig, cx: &mut StageContext) -> StageResult;
    fn show(&self, dir: &Path, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

/// Wraps a [`Stage`] type for the registry.
pub fn erase<S: Stage>() -> Box<dyn DynStage> {
    Box::new(Erased::<S>(PhantomData))
}

struct Erased<S>(PhantomData<fn() -> S>);

impl<S: Stage> DynStage for Erased<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn about(&self) -> &'static str {
        S::ABOUT
    }
    fn starter(&self) -> &'static str {
        S::STARTER
    }

    fn load_config(&self, document: &str, table: &str) -> Result<LoadedConfig, ConfigProblem> {
        let cfg: S::Config = pick_stage_table(document, table).map_err(ConfigProblem::Toml)?;
        S::validate(&cfg).map_err(ConfigProblem::Invalid)?;
        let canonical = serde_json::to_value(&cfg).map_err(|e| {
            ConfigProblem::Invalid(ConfigIssue::new(
                "",
                format!("cannot serialise config: {e}"),
            ))
        })?;
        Ok(LoadedConfig {
            canonical,
            external_inputs: S::external_inputs(&cfg),
            optional_inputs: S::optional_inputs(&cfg),
            environment: S::environment(&cfg, false),
            environment_on_gpus: S::environment(&cfg, true),
            typed: Box::new(cfg),
        })
    }

    fn inputs(&self, cfg: &LoadedConfig, pipeline: &Pipeline) -> Result<Vec<Input>, ConfigIssue> {
        match cfg.typed.downcast_ref::<S::Config>() {
            Some(typed) => S::inputs(typed, pipeline),
            None => Err(ConfigIssue::new("", "config of another stage passed in")),
        }
    }

    fn run(&self, cfg: &LoadedConfig, cx: &mut StageContext) -> StageResult {
        let typed = cfg
            .typed
            .downcast_ref::<S::Config>()
            .ok_or_else(|| format!("stage {}: config of another stage passed in", S::NAME))?;
        S::run(typed, cx)
    }

    fn show(&self, dir: &Path, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        S::show(dir, out)
    }
}

/// Deserialises the table `name` out of a whole TOML document, so that error spans point into
/// the user's file. A missing table deserialises as an empty one (defaults, or "missing field").
pub fn pick_table<C: DeserializeOwned>(document: &str, name: &str) -> Result<C, toml::de::Error> {
    pick(document, name, &[])
}

/// The environment variable the engine sets, in a batch job given GPUs, to their number; the
/// model stages read `device = "auto"` as the first GPU there (the key, made from "auto", does
/// not change).
pub const GPUS_ENV: &str = "PIPE_GPUS";

/// Keys of a stage's table that belong to the engine, not to the stage: where and how it runs
/// (`[sft.resources]`). They are removed before the stage's own (strict) config sees its
/// table, so they are never unknown keys and never part of the stage's key.
pub const ENGINE_KEYS: &[&str] = &["resources"];

/// [`pick_table`] for a stage's table: the [`ENGINE_KEYS`] are left out, every other key keeps
/// its span in the document.
pub fn pick_stage_table<C: DeserializeOwned>(
    document: &str,
    name: &str,
) -> Result<C, toml::de::Error> {
    pick(document, name, ENGINE_KEYS)
}

fn pick<C: DeserializeOwned>(
    document: &str,
    name: &str,
    strip: &'static [&'static str],
) -> Result<C, toml::de::Error> {
    let de = toml::de::Deserializer::parse(document)?;
    let picked = PickSeed::<C> {
        name,
        strip,
        _c: PhantomData,
    }
    .deserialize(de)?;
    match picked {
        Some(cfg) => Ok(cfg),
        None => {
            let empty = toml::de::Deserializer::parse("")?;
            C::deserialize(empty)
        }
    }
}

struct PickSeed<'n, C> {
    name: &'n str,
    strip: &'static [&'static str],
    _c: PhantomData<fn() -> C>,
}

impl<'de, C: DeserializeOwned> DeserializeSeed<'de> for PickSeed<'_, C> {
    type Value = Option<C>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, C: DeserializeOwned> Visitor<'de> for PickSeed<'_, C> {
    type Value = Option<C>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a TOML document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.name {
                found = Some(map.next_value_seed(Strip::<C> {
                    keys: self.strip,
                    _c: PhantomData,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Deserialises `C` from a table without the keys in `keys`.
struct Strip<C> {
    keys: &'static [&'static str],
    _c: PhantomData<fn() -> C>,
}

impl<'de, C: DeserializeOwned> DeserializeSeed<'de> for Strip<C> {
    type Value = C;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<C, D::Error> {
        if self.keys.is_empty() {
            return C::deserialize(d);
        }
        C::deserialize(Stripping {
            inner: d,
            keys: self.keys,
        })
    }
}

/// A deserializer whose maps and structs skip the entries named in `keys`; everything else,
/// spans of errors included, is the inner deserializer's.
struct Stripping<D> {
    inner: D,
    keys: &'static [&'static str],
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Stripping<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let keys = self.keys;
        self.inner.deserialize_map(StripVisitor { visitor, keys })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let keys = self.keys;
        self.inner
            .deserialize_struct(name, fields, StripVisitor { visitor, keys })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct enum identifier
        ignored_any
    }
}

struct StripVisitor<V> {
    visitor: V,
    keys: &'static [&'static str],
}

impl<'de, V: Visitor<'de>> Visitor<'de> for StripVisitor<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.visitor.expecting(f)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(StripMap {
            inner: map,
            keys: self.keys,
        })
    }
}

struct StripMap<A> {
    inner: A,
    keys: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StripMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let mut seed = Some(seed);
        loop {
            let key = self.inner.next_key_seed(KeySeed {
                seed: &mut seed,
                keys: self.keys,
            })?;
            match key {
                None => return Ok(None),
                Some(Some(value)) => return Ok(Some(value)),
                // An engine key: skip its value and look at the next entry.
                Some(None) => {
                    self.inner.next_value::<IgnoredAny>()?;
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

/// Reads a key as text: `None` for a stripped key, else the caller's key seed run on it (inside
/// the inner map's key handling, so an unknown key's error keeps the key's span).
struct KeySeed<'s, K> {
    seed: &'s mut Option<K>,
    keys: &'static [&'static str],
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, K> {
    type Value = Option<K::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        use serde::de::Error;
        let key = String::deserialize(d)?;
        if self.keys.contains(&key.as_str()) {
            return Ok(None);
        }
        let seed = self
            .seed
            .take()
            .ok_or_else(|| D::Error::custom("a map key was read twice"))?;
        seed.deserialize(serde::de::value::StringDeserializer::<D::Error>::new(key))
            .map(Some)
    }
}

/// What a running stage can see and where it writes. Built by the engine.
pub struct StageContext<'a> {
    workspace: PathBuf,
    out_dir: PathBuf,
    partial_dir: PathBuf,
    inputs: Vec<InputDirs>,
    seed: u64,
    progress: &'a dyn Progress,
    metrics: serde_json::Map<String, serde_json::Value>,
}

impl<'a> StageContext<'a> {
    /// `inputs`: for each input key, the upstream instances it names with their artifacts.
    pub fn new(
        workspace: PathBuf,
        out_dir: PathBuf,
        partial_dir: PathBuf,
        inputs: Vec<InputDirs>,
        seed: u64,
        progress: &'a dyn Progress,
    ) -> Self {
        Self {
            workspace,
            out_dir,
            partial_dir,
            inputs,
            seed,
            progress,
            metrics: serde_json::Map::new(),
        }
    }

    /// The committed artifact directory of the one instance the input `key` names.
    pub fn input(&self, key: &str) -> StageResult<&Path> {
        Ok(&self.top(key)?.dir)
    }

    /// The one instance the input `key` names (its name, kind and artifact).
    pub fn top(&self, key: &str) -> StageResult<&Link> {
        self.chain(key)?
            .first()
            .ok_or_else(|| format!("input `{key}` names no instance").into())
    }

    /// The one instance the input `key` names, then what it reads through that key, and so on.
    pub fn chain(&self, key: &str) -> StageResult<&[Link]> {
        match self.chains(key) {
            [one] => Ok(one),
            [] => Err(format!("the stage reads no input `{key}`").into()),
            _ => Err(format!("input `{key}` names several instances where one is read").into()),
        }
    }

    /// Every instance the input `key` names, each with its chain (empty when none).
    pub fn chains(&self, key: &str) -> &[Vec<Link>] {
        self.inputs
            .iter()
            .find(|i| i.key == key)
            .map(|i| i.chains.as_slice())
            .unwrap_or(&[])
    }

    /// Whether the input `key` names any instance.
    pub fn has_input(&self, key: &str) -> bool {
        !self.chains(key).is_empty()
    }

    /// The (empty, existing) directory that becomes the committed artifact on success.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// A per-key directory that survives a crash, for checkpoints; created on first use.
    pub fn partial_dir(&self) -> std::io::Result<&Path> {
        std::fs::create_dir_all(&self.partial_dir)?;
        Ok(&self.partial_dir)
    }

    /// The directory holding pipeline.toml; relative paths in configs are relative to it.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// A config path resolved against the workspace root.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.workspace.join(path)
        }
    }

    /// The project seed (`[project] seed`), part of every key.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn progress(&self) -> &dyn Progress {
        self.progress
    }

    /// A headline number recorded in the manifest (`pipe show` prints them).
    pub fn set_metric(&mut self, key: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.metrics.insert(key.to_string(), value);
    }

    pub fn metrics(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        path: String,
        #[serde(default = "half")]
        frac: f64,
    }
    fn half() -> f64 {
        0.5
    }

    #[test]
    fn picks_only_its_table_and_fills_defaults() {
        let doc = "[other]\nx = 1\n[mine]\npath = \"a.csv\"\n";
        let cfg: Cfg = pick_table(doc, "mine").unwrap();
        assert_eq!(
            cfg,
            Cfg {
                path: "a.csv".into(),
                frac: 0.5
            }
        );
    }

    #[test]
    fn unknown_key_error_points_into_the_document() {
        let doc = "[mine]\npath = \"a.csv\"\nfracc = 0.1\n";
        let err = pick_table::<Cfg>(doc, "mine").unwrap_err();
        assert!(err.message().contains("unknown field `fracc`"), "{err}");
        let span = err.span().expect("span");
        assert_eq!(&doc[span], "fracc");
    }

    #[test]
    fn a_stage_table_leaves_the_engine_keys_out_and_keeps_spans() {
        let doc = "[mine]\npath = \"a.csv\"\n\n[mine.resources]\ngpus = 1\n";
        assert!(
            pick_table::<Cfg>(doc, "mine").is_err(),
            "strict without stripping"
        );
        let cfg: Cfg = pick_stage_table(doc, "mine").unwrap();
        assert_eq!(cfg.path, "a.csv");
        let doc = "[mine]\nresources = { gpus = 2 }\npath = \"a.csv\"\nfracc = 0.1\n";
        let err = pick_stage_table::<Cfg>(doc, "mine").unwrap_err();
        assert!(err.message().contains("unknown field `fracc`"), "{err}");
        assert_eq!(&doc[err.span().expect("span")], "fracc");
    }

    #[test]
    fn absent_table_reports_missing_required_key() {
        let err = pick_table::<Cfg>("[other]\n", "mine").unwrap_err();
        assert!(err.message().contains("missing field `path`"), "{err}");
    }
}
