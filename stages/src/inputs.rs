//! Declared inputs: the instances a stage instance reads, as its config names them
//! ([`Input`]), what a stage may ask of the rest of the pipeline to pick its defaults
//! ([`Pipeline`]), and what a running stage gets for each ([`Link`] chains).

use std::path::{Path, PathBuf};

/// One instance (or, for a list key, several) that a stage instance reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The config key that names it (`data`, `model`, `pairs`, `models`); errors point at it
    /// and the running stage asks for it by this name.
    pub key: &'static str,
    /// The instances named, in order (one for a plain key).
    pub instances: Vec<String>,
    /// Whether the key is written in the table (else the names are its default).
    pub written: bool,
    /// Whether the names differ from the default: the engine then hashes which upstream
    /// serves this key into the instance's key (the default wiring is implied by the kind).
    pub custom: bool,
    /// The kinds that can serve.
    pub kinds: &'static [&'static str],
    /// Also read what each named instance reads through this key of its own, and so on down
    /// (a model is a stack: an adapter stage's model is its input model plus its adapter).
    pub follow: Option<&'static str>,
}

impl Input {
    /// A key naming one instance: `written` when the config has it, else `default`.
    pub fn one(
        key: &'static str,
        written: Option<&str>,
        default: &str,
        kinds: &'static [&'static str],
    ) -> Self {
        Self {
            key,
            instances: vec![written.unwrap_or(default).to_string()],
            written: written.is_some(),
            custom: written.is_some_and(|w| w != default),
            kinds,
            follow: None,
        }
    }

    /// A key naming several instances.
    pub fn many(
        key: &'static str,
        written: Option<&[String]>,
        default: Vec<String>,
        kinds: &'static [&'static str],
    ) -> Self {
        Self {
            key,
            custom: written.is_some_and(|w| w != default.as_slice()),
            instances: written.map(<[String]>::to_vec).unwrap_or(default),
            written: written.is_some(),
            kinds,
            follow: None,
        }
    }

    /// Follows the named instances' own input `key`, and theirs, down (see [`Input::follow`]).
    pub fn following(mut self, key: &'static str) -> Self {
        self.follow = Some(key);
        self
    }
}

/// What a stage may know of the rest of the pipeline when it picks its defaults: the
/// instances (in file order) with their kinds, and the inputs of those resolved before it
/// (every kind earlier in the registry).
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    instances: Vec<(String, String)>,
    reads: Vec<(String, &'static str, Vec<String>)>,
}

impl Pipeline {
    /// The instances as `(name, kind)`, in file order.
    pub fn new(instances: Vec<(String, String)>) -> Self {
        Self {
            instances,
            reads: Vec::new(),
        }
    }

    /// Records that `instance` reads `names` through `key` (the engine, once resolved).
    pub fn record(&mut self, instance: &str, key: &'static str, names: Vec<String>) {
        self.reads.push((instance.to_string(), key, names));
    }

    /// Whether an instance of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.instances.iter().any(|(n, _)| n == name)
    }

    /// The kind of the instance `name`.
    pub fn kind_of(&self, name: &str) -> Option<&str> {
        self.instances
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
    }

    /// The instances of any of `kinds`, in file order.
    pub fn of_kinds(&self, kinds: &[&str]) -> Vec<&str> {
        self.instances
            .iter()
            .filter(|(_, k)| kinds.contains(&k.as_str()))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// What `instance` reads through `key`, if it was resolved before the asking stage.
    pub fn reads(&self, instance: &str, key: &str) -> Option<&[String]> {
        self.reads
            .iter()
            .find(|(i, k, _)| i == instance && *k == key)
            .map(|(_, _, names)| names.as_slice())
    }

    /// `instance`, then what it reads through `key`, and so on down (stops at a repeat).
    pub fn chain(&self, instance: &str, key: &str) -> Vec<String> {
        let mut out = vec![instance.to_string()];
        while let Some([next]) = self.reads(out.last().map_or("", String::as_str), key) {
            if out.contains(next) {
                break;
            }
            out.push(next.clone());
        }
        out
    }

    /// The default name of a key that reads the one instance of `kinds` that no other of them
    /// reads through `key` (the top of a stack): `None` when there is none or several.
    pub fn single_top(&self, kinds: &[&str], key: &str) -> Result<Option<String>, Vec<String>> {
        let members = self.of_kinds(kinds);
        let tops: Vec<String> = members
            .iter()
            .filter(|m| {
                !members.iter().any(|o| {
                    self.reads(o, key)
                        .is_some_and(|r| r.iter().any(|n| n == *m))
                })
            })
            .map(|m| m.to_string())
            .collect();
        match tops.len() {
            0 => Ok(None),
            1 => Ok(tops.into_iter().next()),
            _ => Err(tops),
        }
    }
}

/// One upstream instance as a running stage sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The instance's table name.
    pub instance: String,
    /// Its kind.
    pub kind: String,
    /// Its committed artifact directory.
    pub dir: PathBuf,
}

impl Link {
    pub fn new(instance: &str, kind: &str, dir: &Path) -> Self {
        Self {
            instance: instance.to_string(),
            kind: kind.to_string(),
            dir: dir.to_path_buf(),
        }
    }
}

/// What one input key gives a running stage: for each instance it names, that instance and
/// (for a followed key) what it reads in turn, top first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDirs {
    pub key: String,
    pub chains: Vec<Vec<Link>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let mut p = Pipeline::new(
            [
                ("model", "model"),
                ("sft", "sft"),
                ("orpo", "orpo"),
                ("sft_hi", "sft"),
            ]
            .iter()
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect(),
        );
        p.record("sft", "model", vec!["model".into()]);
        p.record("sft_hi", "model", vec!["model".into()]);
        p.record("orpo", "model", vec!["sft".into()]);
        p
    }

    #[test]
    fn chains_follow_a_key_down_to_the_base() {
        let p = pipeline();
        assert_eq!(p.chain("orpo", "model"), vec!["orpo", "sft", "model"]);
        assert_eq!(p.chain("model", "model"), vec!["model"]);
        assert_eq!(p.of_kinds(&["sft"]), vec!["sft", "sft_hi"]);
    }

    #[test]
    fn the_top_of_a_stack_is_unique_or_reported() {
        let p = pipeline();
        let tops = p.single_top(&["sft", "orpo"], "model").unwrap_err();
        assert_eq!(tops, vec!["orpo", "sft_hi"]);
        let mut q = pipeline();
        q.record("orpo2", "model", vec!["sft_hi".into()]);
        assert_eq!(
            q.single_top(&["sft"], "model"),
            Err(vec!["sft".to_string(), "sft_hi".to_string()])
        );
        assert_eq!(
            pipeline().single_top(&["orpo"], "model"),
            Ok(Some("orpo".to_string()))
        );
    }
}
