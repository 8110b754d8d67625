//! The stage graph (petgraph): topological order, ancestors/descendants for --from/--to/--only,
//! and the text, Graphviz and Mermaid renderings of `pipe dag`.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use crate::config::nearest;
use crate::error::{PipeError, Result};

/// The DAG of the stages present in a pipeline; edges point from a dependency to its user.
#[derive(Debug)]
pub struct Dag {
    graph: DiGraph<&'static str, ()>,
    index: BTreeMap<&'static str, NodeIndex>,
    order: Vec<&'static str>,
}

impl Dag {
    /// Builds the graph from (instance, the instances it reads) pairs; every one read must
    /// itself be a node.
    pub fn new(stages: &[(&'static str, Vec<&'static str>)]) -> Result<Self> {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for (name, _) in stages {
            index.insert(*name, graph.add_node(*name));
        }
        for (name, deps) in stages {
            for dep in deps.iter() {
                let from = *index.get(*dep).ok_or_else(|| {
                    PipeError::Config(format!(
                        "stage `{name}` reads `{dep}`, which is not in the pipeline"
                    ))
                })?;
                graph.add_edge(from, index[name], ());
            }
        }
        let order = toposort(&graph, None)
            .map_err(|c| {
                PipeError::Config(format!(
                    "the stages form a cycle through `{}`",
                    graph[c.node_id()]
                ))
            })?
            .into_iter()
            .map(|i| graph[i])
            .collect();
        Ok(Self {
            graph,
            index,
            order,
        })
    }

    /// Stages in an order where every stage comes after its dependencies.
    pub fn order(&self) -> &[&'static str] {
        &self.order
    }

    pub fn contains(&self, stage: &str) -> bool {
        self.index.contains_key(stage)
    }

    /// A stage name the user typed, checked, with a suggestion when unknown.
    pub fn resolve(&self, stage: &str, flag: &str) -> Result<&'static str> {
        if let Some((name, _)) = self.index.get_key_value(stage) {
            return Ok(name);
        }
        let names: Vec<&str> = self.order.clone();
        let hint = match nearest(stage, &names) {
            Some(n) => format!("did you mean `{n}`? "),
            None => String::new(),
        };
        Err(PipeError::Usage(format!(
            "{flag} {stage}: no such stage in this pipeline; {hint}stages: {}",
            names.join(", ")
        )))
    }

    /// Direct dependencies of a stage.
    pub fn deps(&self, stage: &str) -> Vec<&'static str> {
        let mut deps: Vec<_> = self
            .graph
            .neighbors_directed(self.index[stage], petgraph::Direction::Incoming)
            .map(|i| self.graph[i])
            .collect();
        deps.sort();
        deps
    }

    /// The stage and everything downstream of it.
    pub fn descendants(&self, stage: &str) -> BTreeSet<&'static str> {
        let mut out = BTreeSet::new();
        let mut dfs = Dfs::new(&self.graph, self.index[stage]);
        while let Some(n) = dfs.next(&self.graph) {
            out.insert(self.graph[n]);
        }
        out
    }

    /// The stage and everything upstream of it.
    pub fn ancestors(&self, stage: &str) -> BTreeSet<&'static str> {
        let reversed = Reversed(&self.graph);
        let mut out = BTreeSet::new();
        let mut dfs = Dfs::new(reversed, self.index[stage]);
        while let Some(n) = dfs.next(reversed) {
            out.insert(self.graph[n]);
        }
        out
    }

    /// Graphviz dot.
    pub fn to_dot(&self) -> String {
        let mut s = String::from("digraph pipe {\n  rankdir=LR;\n  node [shape=box];\n");
        for name in &self.order {
            s.push_str(&format!("  \"{name}\";\n"));
        }
        for e in self.graph.raw_edges() {
            let (a, b) = (self.graph[e.source()], self.graph[e.target()]);
            s.push_str(&format!("  \"{a}\" -> \"{b}\";\n"));
        }
        s.push_str("}\n");
        s
    }

    /// A Mermaid flowchart (renders on GitHub).
    pub fn to_mermaid(&self) -> String {
        let mut s = String::from("flowchart LR\n");
        for name in &self.order {
            s.push_str(&format!("  {name}[{name}]\n"));
        }
        for e in self.graph.raw_edges() {
            let (a, b) = (self.graph[e.source()], self.graph[e.target()]);
            s.push_str(&format!("  {a} --> {b}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag() -> Dag {
        Dag::new(&[
            ("ingest", vec![]),
            ("sft", vec!["ingest"]),
            ("generate", vec!["sft", "ingest"]),
            ("eval", vec!["ingest", "generate"]),
        ])
        .unwrap()
    }

    #[test]
    fn order_respects_deps() {
        let d = dag();
        let pos = |s: &str| d.order().iter().position(|x| *x == s).unwrap();
        assert!(pos("ingest") < pos("sft"));
        assert!(pos("sft") < pos("generate"));
        assert!(pos("generate") < pos("eval"));
    }

    #[test]
    fn ancestors_and_descendants() {
        let d = dag();
        assert_eq!(
            d.descendants("sft").into_iter().collect::<Vec<_>>(),
            vec!["eval", "generate", "sft"]
        );
        assert_eq!(
            d.ancestors("generate").into_iter().collect::<Vec<_>>(),
            vec!["generate", "ingest", "sft"]
        );
        assert_eq!(d.deps("generate"), vec!["ingest", "sft"]);
    }

    #[test]
    fn unknown_stage_suggests() {
        let err = dag().resolve("sfft", "--from").unwrap_err();
        assert!(err.to_string().contains("did you mean `sft`?"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn renders_dot_and_mermaid() {
        let d = dag();
        assert!(d.to_dot().contains("\"ingest\" -> \"sft\";"));
        assert!(d.to_mermaid().contains("ingest --> sft"));
    }

    #[test]
    fn cycles_are_refused() {
        let err = Dag::new(&[("a", vec!["b"]), ("b", vec!["a"])]).unwrap_err();
        assert!(err.to_string().contains("cycle"));
    }
}
