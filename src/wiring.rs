//! Which instance reads which: every instance's declared inputs resolved (defaults picked by
//! the stage, in registry order of kinds so a default may look at earlier kinds' choices),
//! checked (the instance exists and is of a kind that can serve), followed into chains, and
//! labelled for the keys by kind, so a key never depends on a table name.

use std::collections::BTreeMap;

use pipe_stages::{ConfigIssue, DynStage, Input, LoadedConfig, Pipeline};

/// One input key of an instance, resolved: for each instance it names, that instance and (for
/// a followed key) what it reads through the same key, top first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    pub key: &'static str,
    pub chains: Vec<Vec<&'static str>>,
    /// The key names other instances than its default (see [`Wiring::reads`]).
    pub custom: bool,
}

/// A bad reference, before it is located in the file: the instance and key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiringIssue {
    pub instance: &'static str,
    /// The input key, or empty for the table itself.
    pub key: String,
    /// Whether the key is written in the table (else the error points at its header).
    pub written: bool,
    pub message: String,
}

/// Every instance's resolved inputs.
#[derive(Debug, Clone, Default)]
pub struct Wiring {
    pub wires: BTreeMap<&'static str, Vec<Wire>>,
}

/// An instance of the pipeline as the wiring sees it.
pub struct Member<'a> {
    pub name: &'static str,
    pub kind: &'static str,
    pub stage: &'a dyn DynStage,
    pub config: &'a LoadedConfig,
}

impl Wiring {
    /// Resolves every member's inputs; `members` are in file order, `kinds` in registry order.
    pub fn resolve(members: &[Member<'_>], kinds: &[&'static str]) -> Result<Self, WiringIssue> {
        let mut pipeline = Pipeline::new(
            members
                .iter()
                .map(|m| (m.name.to_string(), m.kind.to_string()))
                .collect(),
        );
        let mut declared: BTreeMap<&'static str, Vec<Input>> = BTreeMap::new();
        for kind in kinds {
            for m in members.iter().filter(|m| m.kind == *kind) {
                let inputs = m
                    .stage
                    .inputs(m.config, &pipeline)
                    .map_err(|issue| from_issue(m.name, issue))?;
                for input in &inputs {
                    check_input(m, input, &pipeline, members)?;
                    pipeline.record(m.name, input.key, input.instances.clone());
                }
                declared.insert(m.name, inputs);
            }
        }
        check_cycles(members, &declared)?;
        let mut wires = BTreeMap::new();
        for m in members {
            let inputs = declared.remove(m.name).unwrap_or_default();
            let resolved = inputs
                .iter()
                .map(|input| Wire {
                    key: input.key,
                    custom: input.custom,
                    chains: input
                        .instances
                        .iter()
                        .map(|name| {
                            let chain = match input.follow {
                                Some(key) => pipeline.chain(name, key),
                                None => vec![name.clone()],
                            };
                            chain.iter().map(|n| intern_member(members, n)).collect()
                        })
                        .collect(),
                })
                .collect();
            wires.insert(m.name, resolved);
        }
        Ok(Self { wires })
    }

    /// The distinct instances `instance` reads, directly or along a chain, in input order.
    pub fn upstream(&self, instance: &str) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for wire in self.wires.get(instance).into_iter().flatten() {
            for name in wire.chains.iter().flatten() {
                if !out.contains(name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// What `instance`'s keys that differ from their defaults read, by the labels of
    /// [`Wiring::labels`]: `models -> [model, merge]`. The upstream keys alone cannot tell
    /// `models = ["model", "merge"]` from `["model", "sft", "merge"]` (sft is on merge's
    /// chain either way); the default wiring is implied by the kind, so it adds nothing and
    /// the keys of a pipeline that names no input stay as they were.
    pub fn reads(
        &self,
        instance: &str,
        kind_of: impl Fn(&str) -> &'static str,
    ) -> BTreeMap<String, Vec<String>> {
        let labels = self.labels(instance, kind_of);
        let label_of = |name: &str| {
            labels
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(l, _)| l.clone())
                .unwrap_or_default()
        };
        self.wires
            .get(instance)
            .into_iter()
            .flatten()
            .filter(|w| w.custom)
            .map(|w| {
                let tops = w
                    .chains
                    .iter()
                    .filter_map(|c| c.first())
                    .map(|n| label_of(n));
                (w.key.to_string(), tops.collect())
            })
            .collect()
    }

    /// The labels of `instance`'s upstreams in its key: the upstream's kind, with `#2`, `#3`…
    /// for the second and later of a kind. They are the stage names keys used before there
    /// were instances, so the keys of a pipeline that names no instance are unchanged.
    pub fn labels(
        &self,
        instance: &str,
        kind_of: impl Fn(&str) -> &'static str,
    ) -> Vec<(String, &'static str)> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        self.upstream(instance)
            .into_iter()
            .map(|name| {
                let kind = kind_of(name);
                let n = seen.entry(kind).or_insert(0);
                *n += 1;
                let label = if *n == 1 {
                    kind.to_string()
                } else {
                    format!("{kind}#{n}")
                };
                (label, name)
            })
            .collect()
    }
}

fn intern_member(members: &[Member<'_>], name: &str) -> &'static str {
    members
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.name)
        .unwrap_or("?")
}

fn from_issue(instance: &'static str, issue: ConfigIssue) -> WiringIssue {
    WiringIssue {
        instance,
        written: !issue.key.is_empty(),
        key: issue.key,
        message: issue.message,
    }
}

/// Each named instance must exist and be of a kind that can serve.
fn check_input(
    m: &Member<'_>,
    input: &Input,
    pipeline: &Pipeline,
    members: &[Member<'_>],
) -> Result<(), WiringIssue> {
    let fits: Vec<&str> = members
        .iter()
        .filter(|o| input.kinds.contains(&o.kind) && o.name != m.name)
        .map(|o| o.name)
        .collect();
    let fit_list = if fits.is_empty() {
        format!(
            "the pipeline has no instance of kind {}; add one (a table `[{}]` with no keys takes every default)",
            input.kinds.join(" or "),
            input.kinds[0]
        )
    } else {
        format!("instances that fit: {}", fits.join(", "))
    };
    let how = if input.written { "" } else { " (by default)" };
    let issue = |message: String| WiringIssue {
        instance: m.name,
        key: input.key.to_string(),
        written: input.written,
        message,
    };
    if input.instances.is_empty() {
        return Err(issue(format!(
            "`{}` names no instance; {fit_list}",
            input.key
        )));
    }
    for name in &input.instances {
        match pipeline.kind_of(name) {
            None => {
                return Err(issue(format!(
                    "`{}` reads `{name}`{how}, but the pipeline has no instance `{name}`; {fit_list}",
                    input.key
                )))
            }
            Some(kind) if !input.kinds.contains(&kind) => {
                return Err(issue(format!(
                    "`{}` reads `{name}`{how}, an instance of kind `{kind}`, which cannot serve as `{}` of a {} (it takes {}); {fit_list}",
                    input.key,
                    input.key,
                    m.kind,
                    input.kinds.join(", ")
                )))
            }
            Some(_) if *name == m.name => {
                return Err(issue(format!(
                    "`{}` reads `{name}`, the instance itself",
                    input.key
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Refuses a cycle, naming it: `a -> b -> a` read as "a reads b, b reads a".
fn check_cycles(
    members: &[Member<'_>],
    declared: &BTreeMap<&'static str, Vec<Input>>,
) -> Result<(), WiringIssue> {
    let reads = |name: &str| -> Vec<(&'static str, String)> {
        declared
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|i| i.instances.iter().map(move |n| (i.key, n.clone())))
            .collect()
    };
    // Depth-first search with the path on a stack; members in file order, so the cycle is
    // reported from the first instance of it in the file.
    for start in members {
        let mut path: Vec<(&'static str, &'static str)> = vec![(start.name, "")];
        if let Some(cycle) = find_cycle(start.name, &reads, members, &mut path) {
            // Located at the key through which the cycle's first instance reads the next.
            let (first, key) = (cycle[0].0, cycle[1].1);
            let names: Vec<&str> = cycle.iter().map(|(n, _)| *n).collect();
            let written = declared
                .get(first)
                .and_then(|inputs| inputs.iter().find(|i| i.key == key))
                .is_some_and(|i| i.written);
            return Err(WiringIssue {
                instance: first,
                key: key.to_string(),
                written,
                message: format!(
                    "the instances form a cycle: {} (each reads the next)",
                    names.join(" -> ")
                ),
            });
        }
    }
    Ok(())
}

/// `path` holds (instance, the key its predecessor read it through); returns the cycle as
/// such pairs starting and ending at the same instance.
fn find_cycle(
    at: &'static str,
    reads: &impl Fn(&str) -> Vec<(&'static str, String)>,
    members: &[Member<'_>],
    path: &mut Vec<(&'static str, &'static str)>,
) -> Option<Vec<(&'static str, &'static str)>> {
    for (key, next) in reads(at) {
        let Some(next) = members.iter().find(|m| m.name == next).map(|m| m.name) else {
            continue;
        };
        if let Some(pos) = path.iter().position(|(n, _)| *n == next) {
            let mut cycle: Vec<_> = path[pos..].to_vec();
            cycle.push((next, key));
            return Some(cycle);
        }
        path.push((next, key));
        if let Some(c) = find_cycle(next, reads, members, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}
