//! The event files sft and orpo write, read by TensorBoard's own Python reader: every run
//! appears as `<stage>/<key>` under `--logdir artifacts`, with every number of every
//! `metrics.jsonl` line as a scalar at its step. Needs the `tensorboard` package: scripts/test.sh
//! installs it and sets PIPE_TEST_TENSORBOARD_PYTHON; without it the test says it is skipped
//! (and fails when PIPE_REQUIRE_TENSORBOARD is set, as the test script does once installed).

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use support::tiny_workspace;

const PIPELINE: &str = r#"
[project]
seed = 5

[ingest]
path = "data/qa.csv"
prompt = "question"
response = "answer"
val_fraction = 0.25

[model]
path = "tiny"

[sft]
max_steps = 4
batch_size = 4
max_seq_len = 128
eval_every = 2
samples = 0

[generate]
split = "train"
limit = 6
candidates = 2
max_new_tokens = 8
batch_size = 4

[score]
min_margin = 0.0

[orpo]
max_steps = 3
batch_size = 2
max_seq_len = 128
eval_every = 2
"#;

/// Prints {run: {tag: [[step, value], ...]}} for every run under the logdir.
const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
m = EventMultiplexer(size_guidance={"scalars": 0})
m.AddRunsFromDirectory(sys.argv[1])
m.Reload()
out = {}
for run, tags in m.Runs().items():
    out[run] = {t: [[e.step, e.value] for e in m.Scalars(run, t)] for t in tags["scalars"]}
print(json.dumps(out))
"#;

/// A Python that imports tensorboard, or why there is none.
fn python() -> Result<String, String> {
    let candidates = std::env::var("PIPE_TEST_TENSORBOARD_PYTHON")
        .map(|p| vec![p])
        .unwrap_or_else(|_| vec!["python3".to_string(), "python".to_string()]);
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import tensorboard"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(python.clone());
        }
    }
    Err(format!(
        "none of {candidates:?} imports tensorboard; run scripts/test.sh (it installs it into \
         target/tensorboard-venv) or set PIPE_TEST_TENSORBOARD_PYTHON"
    ))
}

type Scalars = BTreeMap<String, BTreeMap<String, Vec<(i64, f64)>>>;

#[test]
fn tensorboard_reads_every_logged_number_of_sft_and_orpo() {
    let python = match python() {
        Ok(p) => p,
        Err(why) if std::env::var_os("PIPE_REQUIRE_TENSORBOARD").is_none() => {
            eprintln!("SKIPPED tensorboard_reads_every_logged_number_of_sft_and_orpo: {why}");
            return;
        }
        Err(why) => panic!("{why}"),
    };
    let ws = tiny_workspace(PIPELINE);
    ws.ok(&["run", "--to", "orpo"]);
    let out = Command::new(&python)
        .args(["-c", READER])
        .arg(ws.path("artifacts"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Scalars = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&String> = runs.keys().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for stage in ["sft", "orpo"] {
        let key = &ws.entries(stage)[0];
        let run = format!("{stage}/{key}");
        let scalars = runs
            .get(&run)
            .unwrap_or_else(|| panic!("no run {run} in {names:?}"));
        let log =
            std::fs::read_to_string(ws.path("artifacts").join(&run).join("metrics.jsonl")).unwrap();
        let mut checked = 0;
        for line in log.lines() {
            let fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).unwrap();
            let step = fields["step"].as_i64().unwrap();
            for (name, value) in fields.iter().filter(|(n, _)| *n != "step") {
                let tag = match name.strip_prefix("eval_") {
                    Some(rest) => format!("eval/{rest}"),
                    None => format!("train/{name}"),
                };
                let Some(expected) = value.as_f64() else {
                    continue;
                };
                let points = scalars
                    .get(&tag)
                    .unwrap_or_else(|| panic!("{run}: no tag {tag}; tags {:?}", scalars.keys()));
                let found = points.iter().find(|(s, _)| *s == step);
                let (_, got) = found.unwrap_or_else(|| panic!("{run}: {tag} lacks step {step}"));
                assert_eq!(
                    *got as f32, expected as f32,
                    "{run}: {tag} at step {step}, as float32"
                );
                checked += 1;
            }
        }
        assert!(checked > 10, "{run}: only {checked} numbers");
        let train_steps = scalars["train/loss"].len();
        let lines_with_loss = log.lines().filter(|l| l.contains("\"loss\"")).count();
        assert_eq!(train_steps, lines_with_loss, "{run}");
        assert!(scalars.contains_key("eval/loss"), "{run}");
    }
    let orpo = format!("orpo/{}", ws.entries("orpo")[0]);
    assert!(
        runs[&orpo].contains_key("eval/rewards/accuracies"),
        "{orpo}"
    );
}
