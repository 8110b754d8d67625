//! pipeline.toml (plus `-s key=value` overrides) into typed, validated config: every error
//! names the file, line and column or the override, and suggests the nearest valid key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use pipe_stages::{ConfigProblem, DynStage, LoadedConfig};
use serde::{Deserialize, Serialize};

use crate::error::{PipeError, Result};
use crate::executor::config::{ExecutorConfig, Resources, StageEngineKeys};
use crate::instances;
use crate::remote::config::CacheConfig;
use crate::wiring::{Member, Wiring, WiringIssue};

/// The engine's top-level tables besides `[project]`: where stages run, the shared cache.
pub(crate) const ENGINE_TABLES: &[&str] = &["executor", "cache"];

/// The engine's own table, `[project]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// A name for humans (reports, `pipe status` header).
    #[serde(default = "default_name")]
    pub name: String,
    /// Where the cache lives, relative to the workspace root.
    #[serde(default = "default_artifacts")]
    pub artifacts: PathBuf,
    /// Seed for every stage; part of every key.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_name() -> String {
    "pipe".to_string()
}
fn default_artifacts() -> PathBuf {
    PathBuf::from("artifacts")
}
fn default_seed() -> u64 {
    42
}

/// One `-s stage.key=value` from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// As the user typed it, for messages.
    pub raw: String,
    pub path: Vec<String>,
    pub value: toml::Value,
    /// The value text as typed: used as a string when the TOML reading does not fit the key.
    pub text: String,
}

impl Override {
    /// Parses `a.b.c=value`; the value is TOML (`0.1`, `true`, `"x"`, `[1, 2]`) or else a bare string.
    pub fn parse(raw: &str) -> Result<Self> {
        let (key, value) = raw.split_once('=').ok_or_else(|| {
            PipeError::Usage(format!(
                "-s {raw}: expected KEY=VALUE, e.g. -s ingest.val_fraction=0.1"
            ))
        })?;
        let path: Vec<String> = key
            .trim()
            .split('.')
            .map(|s| s.trim().to_string())
            .collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(PipeError::Usage(format!(
                "-s {raw}: the key must be TABLE.KEY, e.g. -s ingest.val_fraction=0.1"
            )));
        }
        Ok(Self {
            raw: raw.to_string(),
            path,
            value: parse_value(value.trim()),
            text: value.trim().to_string(),
        })
    }
}

fn parse_value(text: &str) -> toml::Value {
    let doc = format!("v = {text}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// The whole validated pipeline: project settings, the config of every stage instance it
/// contains, their kinds and which reads which.
#[derive(Debug)]
pub struct PipelineConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// The workspace root: the directory holding the file; config paths are relative to it.
    pub root: PathBuf,
    pub project: ProjectConfig,
    /// The instances (one per table), by name.
    pub stages: BTreeMap<&'static str, LoadedConfig>,
    /// Instance name -> its kind (a registered stage's name).
    pub kinds: BTreeMap<&'static str, &'static str>,
    /// Every instance's resolved inputs.
    pub wiring: Wiring,
    /// `[executor]`.
    pub executor: ExecutorConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[<stage>.resources]` of the stages that set them (the stages never see them).
    pub resources: BTreeMap<&'static str, Resources>,
}

impl PipelineConfig {
    /// The artifact store directory.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join(&self.project.artifacts)
    }

    /// Reads and validates `path`, then applies `overrides` one by one (each validated, so an
    /// error names the override that caused it).
    pub fn load(
        path: &Path,
        overrides: &[Override],
        registry: &[Box<dyn DynStage>],
    ) -> Result<Self> {
        refuse_non_regular(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PipeError::Config(format!(
                "{}: no such file; run `pipe init` to write a starter pipeline, or pass --config FILE",
                path.display()
            )),
            _ => PipeError::io(path, e),
        })?;
        let root = workspace_root(path);
        let origin = Origin::File(path.to_path_buf());
        let mut loaded = parse_document(&text, &origin, registry)?;
        if !overrides.is_empty() {
            let mut table: toml::Table = toml::from_str(&text)
                .map_err(|e| PipeError::Config(render_toml_error(&text, &origin, &e, None)))?;
            for ov in overrides {
                loaded = apply_and_check(&mut table, ov, registry)?;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            root,
            project: loaded.project,
            stages: loaded.stages,
            kinds: loaded.kinds,
            wiring: loaded.wiring,
            executor: loaded.executor,
            cache: loaded.cache,
            resources: loaded.resources,
        })
    }
}

/// Applies one override and re-validates. `-s upper.suffix=1` means the string "1" when the
/// key wants a string, so a value that parsed as another TOML type is retried as text.
fn apply_and_check(
    table: &mut toml::Table,
    ov: &Override,
    registry: &[Box<dyn DynStage>],
) -> Result<Parsed> {
    let origin = Origin::Override(ov.raw.clone());
    let before = table.clone();
    apply_override(table, ov, registry)?;
    let first = parse_table(table, &origin, registry);
    if first.is_ok() || ov.value.is_str() {
        return first;
    }
    let mut as_text = before;
    let text_ov = Override {
        value: toml::Value::String(ov.text.clone()),
        ..ov.clone()
    };
    apply_override(&mut as_text, &text_ov, registry)?;
    match parse_table(&as_text, &origin, registry) {
        Ok(parsed) => {
            *table = as_text;
            Ok(parsed)
        }
        Err(_) => first,
    }
}

fn parse_table(
    table: &toml::Table,
    origin: &Origin,
    registry: &[Box<dyn DynStage>],
) -> Result<Parsed> {
    let text = toml::to_string(table)
        .map_err(|e| PipeError::Config(format!("{}: cannot apply: {e}", origin.describe())))?;
    parse_document(&text, origin, registry)
}

fn workspace_root(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// Where a document came from, for messages.
#[derive(Debug, Clone)]
enum Origin {
    File(PathBuf),
    Override(String),
}

/// A document read and checked: what [`PipelineConfig`] holds besides its paths.
#[derive(Debug)]
struct Parsed {
    project: ProjectConfig,
    stages: BTreeMap<&'static str, LoadedConfig>,
    kinds: BTreeMap<&'static str, &'static str>,
    wiring: Wiring,
    executor: ExecutorConfig,
    cache: CacheConfig,
    resources: BTreeMap<&'static str, Resources>,
}

fn parse_document(text: &str, origin: &Origin, registry: &[Box<dyn DynStage>]) -> Result<Parsed> {
    let doc = toml::de::DeTable::parse(text)
        .map_err(|e| PipeError::Config(render_toml_error(text, origin, &e, None)))?;
    let tables = instances::find(text, doc.get_ref(), registry)
        .map_err(|e| PipeError::Config(render_at(text, origin, e.span, &e.message, &e.hint)))?;
    // The stages never see `kind = "…"`: it is blanked out, keeping every other span.
    let stage_text = instances::blank_kind_keys(text, &tables);
    let project = pipe_stages::contract::pick_table::<ProjectConfig>(text, "project")
        .map_err(|e| PipeError::Config(render_toml_error(text, origin, &e, Some("project"))))?;
    let mut stages = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let mut resources = BTreeMap::new();
    for table in &tables {
        let cfg = table
            .stage
            .load_config(&stage_text, table.name)
            .map_err(|p| PipeError::Config(render_problem(text, origin, &doc, table.name, p)))?;
        stages.insert(table.name, cfg);
        kinds.insert(table.name, table.stage.name());
        if let Some(r) = stage_resources(&stage_text, origin, &doc, table.name)? {
            resources.insert(table.name, r);
        }
    }
    let members: Vec<Member> = tables
        .iter()
        .map(|t| Member {
            name: t.name,
            kind: t.stage.name(),
            stage: t.stage,
            config: &stages[t.name],
        })
        .collect();
    let kind_order: Vec<&'static str> = registry.iter().map(|s| s.name()).collect();
    let wiring = Wiring::resolve(&members, &kind_order)
        .map_err(|issue| PipeError::Config(render_wiring(text, origin, &doc, &issue)))?;
    strip_references(&mut stages, &wiring);
    let (executor, cache) = engine_tables(text, origin, &doc)?;
    Ok(Parsed {
        project,
        stages,
        kinds,
        wiring,
        executor,
        cache,
        resources,
    })
}

/// `[executor]` and `[cache]`, checked like a stage's table.
fn engine_tables(
    text: &str,
    origin: &Origin,
    doc: &toml::Spanned<toml::de::DeTable<'_>>,
) -> Result<(ExecutorConfig, CacheConfig)> {
    let executor = pipe_stages::contract::pick_table::<ExecutorConfig>(text, "executor")
        .map_err(|e| PipeError::Config(render_toml_error(text, origin, &e, Some("executor"))))?;
    let invalid = |key: &str, message: &str| {
        let span = key_span(doc, key).unwrap_or(0..0);
        PipeError::Config(render_at(
            text,
            origin,
            span,
            &format!("invalid `{key}`: {message}"),
            "",
        ))
    };
    executor
        .slurm
        .check()
        .map_err(|(key, message)| invalid(&format!("executor.slurm.{key}"), &message))?;
    let cache = pipe_stages::contract::pick_table::<CacheConfig>(text, "cache")
        .map_err(|e| PipeError::Config(render_toml_error(text, origin, &e, Some("cache"))))?;
    cache
        .check()
        .map_err(|message| invalid("cache.remote", &message))?;
    Ok((executor, cache))
}

/// A stage's `[<stage>.resources]`, if it has one.
fn stage_resources(
    text: &str,
    origin: &Origin,
    doc: &toml::Spanned<toml::de::DeTable<'_>>,
    stage: &str,
) -> Result<Option<Resources>> {
    let keys = pipe_stages::contract::pick_table::<StageEngineKeys>(text, stage)
        .map_err(|e| PipeError::Config(render_toml_error(text, origin, &e, Some(stage))))?;
    let Some(resources) = keys.resources else {
        return Ok(None);
    };
    resources.check().map_err(|(key, message)| {
        let full = format!("{stage}.resources.{key}");
        let span = key_span(doc, &full).unwrap_or(0..0);
        PipeError::Config(render_at(
            text,
            origin,
            span,
            &format!("invalid `{full}`: {message}"),
            "",
        ))
    })?;
    Ok(Some(resources))
}

/// Input keys name instances: they are replaced in the key by the upstream keys they pick
/// (labelled by kind), so renaming a table changes no key.
fn strip_references(stages: &mut BTreeMap<&'static str, LoadedConfig>, wiring: &Wiring) {
    for (name, wires) in &wiring.wires {
        if let Some(serde_json::Value::Object(map)) = stages.get_mut(name).map(|c| &mut c.canonical)
        {
            for wire in wires {
                map.remove(wire.key);
            }
        }
    }
}

/// A bad reference located: at its key when written, else at the instance's table header.
fn render_wiring(
    text: &str,
    origin: &Origin,
    doc: &toml::Spanned<toml::de::DeTable<'_>>,
    issue: &WiringIssue,
) -> String {
    let written = (issue.written && !issue.key.is_empty())
        .then(|| value_span(doc, &format!("{}.{}", issue.instance, issue.key)))
        .flatten();
    let span = written
        .or_else(|| key_span(doc, issue.instance))
        .unwrap_or(0..0);
    let msg = format!("[{}] {}", issue.instance, issue.message);
    render_at(text, origin, span, &msg, "")
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Override(raw) => format!("-s {raw}"),
        }
    }
}

fn apply_override(
    table: &mut toml::Table,
    ov: &Override,
    registry: &[Box<dyn DynStage>],
) -> Result<()> {
    let head = ov.path[0].as_str();
    if head != "project"
        && !ENGINE_TABLES.contains(&head)
        && !registry.iter().any(|s| s.name() == head)
        && !table.contains_key(head)
    {
        let mut valid = vec!["project"];
        valid.extend(ENGINE_TABLES);
        valid.extend(table.keys().map(String::as_str).filter(|k| *k != "project"));
        valid.extend(
            registry
                .iter()
                .map(|s| s.name())
                .filter(|k| !table.contains_key(*k)),
        );
        return Err(PipeError::Config(format!(
            "-s {}: unknown table `{head}`; {}",
            ov.raw,
            hint_for(head, &valid, "tables")
        )));
    }
    let mut cursor = table;
    for (depth, part) in ov.path[..ov.path.len() - 1].iter().enumerate() {
        let entry = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| {
            PipeError::Config(format!(
                "-s {}: `{}` is a value, not a table",
                ov.raw,
                ov.path[..=depth].join(".")
            ))
        })?;
    }
    cursor.insert(ov.path[ov.path.len() - 1].clone(), ov.value.clone());
    Ok(())
}

fn render_problem(
    text: &str,
    origin: &Origin,
    doc: &toml::Spanned<toml::de::DeTable<'_>>,
    stage: &str,
    problem: ConfigProblem,
) -> String {
    match problem {
        ConfigProblem::Toml(e) => render_toml_error(text, origin, &e, Some(stage)),
        ConfigProblem::Invalid(issue) => {
            let full_key = if issue.key.is_empty() {
                stage.to_string()
            } else {
                format!("{stage}.{}", issue.key)
            };
            let span = key_span(doc, &full_key).unwrap_or(0..0);
            let msg = format!("invalid `{full_key}`: {}", issue.message);
            render_at(text, origin, span, &msg, "")
        }
    }
}

/// Turns toml/serde's messages into ours: key names in our terms, nearest valid key as a hint.
fn render_toml_error(
    text: &str,
    origin: &Origin,
    err: &toml::de::Error,
    table: Option<&str>,
) -> String {
    let raw = err.message().trim().to_string();
    let span = err.span().unwrap_or(0..0);
    let table_txt = table.map(|t| format!(" in [{t}]")).unwrap_or_default();
    if let Some((field, expected)) = parse_unknown_field(&raw) {
        let msg = format!("unknown key `{field}`{table_txt}");
        let hint = hint_for(
            &field,
            &expected.iter().map(String::as_str).collect::<Vec<_>>(),
            "keys",
        );
        return render_at(text, origin, span, &msg, &hint);
    }
    if let Some(field) = between(&raw, "missing field `", "`") {
        let msg = format!("missing required key `{field}`{table_txt}");
        return render_at(text, origin, span, &msg, "");
    }
    if raw.starts_with("invalid type") || raw.starts_with("invalid value") {
        let key = key_at(text, &span)
            .map(|k| format!(" for `{k}`"))
            .unwrap_or_default();
        let msg = format!("wrong type{key}: {raw}");
        return render_at(text, origin, span, &msg, "");
    }
    if raw.starts_with("unknown variant") {
        let key = key_at(text, &span)
            .map(|k| format!(" for `{k}`"))
            .unwrap_or_default();
        let msg = format!("invalid value{key}: {raw}");
        return render_at(text, origin, span, &msg, "");
    }
    render_at(text, origin, span, &raw, "")
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", or "there are no fields").
fn parse_unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let field = between(msg, "unknown field `", "`")?;
    let rest = msg.split_once("expected").map(|(_, r)| r).unwrap_or("");
    let expected = rest
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect();
    Some((field, expected))
}

fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let (_, rest) = s.split_once(start)?;
    let (inner, _) = rest.split_once(end)?;
    Some(inner.to_string())
}

/// `--config /dev/null` (or a directory, a FIFO) is no pipeline: its parent would become the
/// workspace, with `artifacts/` created under `/dev`.
fn refuse_non_regular(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(PipeError::Config(format!(
            "{}: not a regular file; pass the pipeline.toml of a workspace with --config FILE",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// "did you mean `x`?" plus the full list, so a typo never needs the README.
pub(crate) fn hint_for(word: &str, valid: &[&str], what: &str) -> String {
    if valid.is_empty() {
        return format!("this table takes no {what}");
    }
    let nearest = nearest(word, valid);
    let list = valid.join(", ");
    match nearest {
        Some(n) => format!("did you mean `{n}`? valid {what}: {list}"),
        None => format!("valid {what}: {list}"),
    }
}

/// The closest candidate by edit distance, if close enough to be a plausible typo.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The dotted key path whose key or value contains `span`, from a fresh spanned parse.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_key(doc.get_ref(), span, &mut path).then(|| path.join("."))
}

fn find_key(table: &toml::de::DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    let inside = |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        // A table's own span may cover only its header, so always look inside tables.
        let found = match value.get_ref().as_table() {
            Some(inner) => find_key(inner, span, path) || inside(&key.span()),
            None => inside(&key.span()) || inside(&value.span()),
        };
        if found {
            return true;
        }
        path.pop();
    }
    false
}

/// The span of a dotted key (`ingest.val_fraction`), for errors found after parsing.
fn key_span(doc: &toml::Spanned<toml::de::DeTable<'_>>, dotted: &str) -> Option<Range<usize>> {
    let mut table = doc.get_ref();
    let mut span = None;
    for part in dotted.split('.') {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        span = Some(key.span());
        match value.get_ref().as_table() {
            Some(inner) => table = inner,
            None => break,
        }
    }
    span
}

/// The span of a dotted key's value (a reference points at the name it gives).
fn value_span(doc: &toml::Spanned<toml::de::DeTable<'_>>, dotted: &str) -> Option<Range<usize>> {
    let mut table = doc.get_ref();
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part)?;
        if i + 1 == parts.len() {
            return Some(value.span());
        }
        table = value.get_ref().as_table()?;
    }
    None
}

/// `file:line:col: message`, the source line with a caret, and an optional hint.
fn render_at(text: &str, origin: &Origin, span: Range<usize>, msg: &str, hint: &str) -> String {
    let mut out = match origin {
        Origin::Override(raw) => format!("-s {raw}: {msg}"),
        Origin::File(path) => {
            let (line, col) = line_col(text, span.start);
            let mut s = format!("{}:{line}:{col}: {msg}", path.display());
            if let Some(src) = text.lines().nth(line - 1) {
                let width = span
                    .len()
                    .clamp(1, src.len().saturating_sub(col - 1).max(1));
                s.push_str(&format!(
                    "\n{line:>5} | {src}\n      | {}{}",
                    " ".repeat(col - 1),
                    "^".repeat(width)
                ));
            }
            s
        }
    };
    if !hint.is_empty() {
        out.push_str(&format!("\n  help: {hint}"));
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values_parse_as_toml_or_string() {
        let ov = Override::parse("ingest.val_fraction=0.1").unwrap();
        assert_eq!(ov.path, vec!["ingest", "val_fraction"]);
        assert_eq!(ov.value, toml::Value::Float(0.1));
        let ov = Override::parse("ingest.path=data/x.csv").unwrap();
        assert_eq!(ov.value, toml::Value::String("data/x.csv".into()));
        assert!(Override::parse("novalue").is_err());
        assert!(Override::parse("x=1").is_err());
    }

    #[test]
    fn nearest_finds_typos_only() {
        let valid = ["val_fraction", "path", "seed"];
        assert_eq!(nearest("val_fractoin", &valid), Some("val_fraction"));
        assert_eq!(nearest("pth", &valid), Some("path"));
        assert_eq!(nearest("completely_else", &valid), None);
    }

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\n[t]\nkey = 2\n";
        let off = text.find("key").unwrap();
        assert_eq!(line_col(text, off), (3, 1));
        assert_eq!(line_col(text, 0), (1, 1));
    }

    #[test]
    fn key_at_finds_the_value_owner() {
        let text = "[project]\nseed = \"x\"\n";
        let span = text.find("\"x\"").unwrap();
        assert_eq!(
            key_at(text, &(span..span + 3)).as_deref(),
            Some("project.seed")
        );
    }

    #[test]
    fn project_errors_are_located_and_hinted() {
        let text = "[project]\nseeed = 3\n";
        let err = parse_document(text, &Origin::File("p.toml".into()), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("p.toml:2:1: unknown key `seeed` in [project]"),
            "{msg}"
        );
        assert!(msg.contains("did you mean `seed`?"), "{msg}");
    }

    #[test]
    fn unknown_table_is_refused_with_suggestion() {
        let text = "[projet]\nseed = 3\n";
        let err = parse_document(text, &Origin::File("p.toml".into()), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("p.toml:1:2: unknown table `[projet]`"),
            "{msg}"
        );
        assert!(msg.contains("did you mean `project`?"), "{msg}");
    }

    /// Issue 16: the hint ran into the table name ("`sfft`did you mean").
    #[test]
    fn unknown_override_table_hint_is_separated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, "[project]\nseed = 3\n").unwrap();
        let ov = Override::parse("projct.seed=4").unwrap();
        let msg = PipelineConfig::load(&path, &[ov], &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("unknown table `projct`; did you mean `project`?"),
            "{msg}"
        );
    }

    /// Issue 16: `--config /dev/null` made `/dev` the workspace and created its lock there.
    #[test]
    fn a_config_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for path in [Path::new("/dev/null"), dir.path()] {
            let msg = PipelineConfig::load(path, &[], &[])
                .unwrap_err()
                .to_string();
            assert!(msg.contains("not a regular file"), "{msg}");
        }
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = "[project]\nseed = \"abc\"\n";
        let err = parse_document(text, &Origin::File("p.toml".into()), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("p.toml:2:8: wrong type for `project.seed`"),
            "{msg}"
        );
    }
}
