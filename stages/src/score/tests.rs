//! Tests of the score stage on hand-made candidates: every output file, pairs consistent with
//! the stats, the scorers file rebuilding the same scorers for eval, and the key's inputs.

use std::collections::BTreeMap;
use std::path::Path;

use super::artifact::read_pairs;
use super::report::ScoreStats;
use super::*;
use crate::contract::pick_table;
use crate::generate::artifact::GeneratedCandidate;
use crate::llm::FinishReason;
use crate::progress::NullProgress;
use crate::scoring::TextSource;
use crate::scoring::{load_scorers, score_answers, Answer};

fn candidate(text: &str) -> GeneratedCandidate {
    GeneratedCandidate {
        text: text.to_string(),
        tokens: text.split_whitespace().count(),
        mean_logprob: -1.0,
        finish_reason: FinishReason::Eos,
    }
}

fn record(id: &str, reference: &str, candidates: &[&str]) -> CandidateRecord {
    CandidateRecord {
        id: id.to_string(),
        prompt: format!("what is {id}?"),
        system: None,
        history: Vec::new(),
        reference: reference.to_string(),
        candidates: candidates.iter().map(|c| candidate(c)).collect(),
    }
}

fn records() -> Vec<CandidateRecord> {
    vec![
        // A clear winner and loser.
        record(
            "ls",
            "list directory contents",
            &[
                "list directory contents",
                "a tool that prints the weather forecast for you",
            ],
        ),
        // Identical candidates and no reference in the pool: fewer than two.
        record(
            "cat",
            "concatenate files",
            &["concatenate files", "concatenate files"],
        ),
        // Close scores: below the margin.
        record(
            "cp",
            "copy files and directories",
            &[
                "copy files and directories now",
                "copy files and directories here",
            ],
        ),
    ]
}

/// The judge: prints 10 for candidates containing "files", else 0 (scale [0, 10]).
const JUDGE: &str = "#!/bin/sh\nwhile IFS= read -r line; do case \"$line\" in *files*) echo 10;; *) echo 0;; esac; done\n";

const CONFIG: &str = "[score]\ninclude_reference = false\nmin_margin = 0.1\n\
    [score.reference]\nweight = 1.0\n\
    [score.rules]\nweight = 0.5\n[[score.rules.rule]]\nname = 'short'\nmax_tokens = 6\n\
    [score.command]\nweight = 0.5\nargv = ['sh', 'judge.sh']\nscale = [0, 10]\n";

fn workspace(candidates: &[CandidateRecord]) -> (tempfile::TempDir, std::path::PathBuf) {
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("judge.sh"), JUDGE).unwrap();
    let gen = ws.path().join("generate-out");
    std::fs::create_dir_all(&gen).unwrap();
    let text: String = candidates
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(gen.join(CANDIDATES_FILE), text).unwrap();
    (ws, gen)
}

fn run(ws: &Path, gen: &Path, doc: &str) -> tempfile::TempDir {
    let cfg: ScoreConfig = pick_table(doc, "score").unwrap();
    cfg.validate().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cx = StageContext::new(
        ws.to_path_buf(),
        out.path().to_path_buf(),
        ws.join("partial"),
        crate::testkit::default_inputs(
            "score",
            &BTreeMap::from([("generate".to_string(), gen.to_path_buf())]),
        ),
        1,
        &NullProgress,
    );
    Score::run(&cfg, &mut cx).unwrap();
    out
}

#[test]
fn scores_pairs_stats_and_scorers_files_agree() {
    let (ws, gen) = workspace(&records());
    let out = run(ws.path(), &gen, CONFIG);
    let scored = read_scores(&out.path().join(SCORES_FILE)).unwrap();
    assert_eq!(scored.len(), 3);
    let ls = &scored[0];
    assert_eq!(ls.reference.scores.scorers["reference"], 1.0);
    assert_eq!(
        ls.reference.scores.scorers["command"], 0.0,
        "no 'files' in it"
    );
    assert_eq!(ls.candidates[0].scores.scorers["reference"], 1.0);
    assert_eq!(
        ls.candidates[1].scores.scorers["rules"], 0.0,
        "9 tokens > 6"
    );
    assert_eq!(ls.candidates[1].scores.components["rules.short"], 0.0);
    assert_eq!(scored[1].candidates[0].scores.scorers["command"], 1.0);

    let pairs = read_pairs(&out.path().join(PAIRS_FILE)).unwrap();
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert_eq!(pairs[0].id, "ls");
    assert_eq!(pairs[0].chosen, "list directory contents");
    assert_eq!(pairs[0].chosen_source, TextSource::Generated);
    assert!(pairs[0].chosen_score.unwrap() > pairs[0].rejected_score.unwrap() + 0.1);

    let stats: ScoreStats =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(STATS_FILE)).unwrap())
            .unwrap();
    assert_eq!((stats.prompts, stats.candidates), (3, 6));
    assert_eq!(stats.pairs + stats.dropped_total, stats.prompts);
    assert_eq!(stats.dropped.fewer_than_two, 1);
    assert_eq!(stats.dropped.margin_too_small, 1);
    assert_eq!(stats.distributions["combined"].count, 6);
    assert_eq!(stats.reference_distributions["reference"].count, 3);
    assert_eq!(
        stats.scorers,
        BTreeMap::from([
            ("reference".to_string(), 1.0),
            ("rules".to_string(), 0.5),
            ("command".to_string(), 0.5)
        ])
    );

    // eval's path: the scorers file rebuilds the same scorers, with the script made absolute.
    let file: ScorersConfig =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(SCORERS_FILE)).unwrap())
            .unwrap();
    let argv = &file.command.as_ref().unwrap().argv;
    assert_eq!(argv[0], "sh");
    assert!(
        Path::new(&argv[1]).is_absolute() && argv[1].ends_with("judge.sh"),
        "{argv:?}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let scorers = load_scorers(&out.path().join(SCORERS_FILE), elsewhere.path()).unwrap();
    let answers: Vec<Answer> = ls
        .candidates
        .iter()
        .map(|c| Answer {
            id: "x",
            prompt: &ls.prompt,
            history: &[],
            reference: "list directory contents",
            answer: &c.text,
        })
        .collect();
    let again = score_answers(&scorers, &answers, &NullProgress).unwrap();
    for (a, c) in again.iter().zip(&ls.candidates) {
        assert_eq!(a, &c.scores);
    }

    let mut shown = Vec::new();
    Score::show(out.path(), &mut shown).unwrap();
    let shown = String::from_utf8(shown).unwrap();
    assert!(
        shown.contains("pairs       1 (1 generated, 0 extra)"),
        "{shown}"
    );
    assert!(shown.contains("combined"), "{shown}");
    assert!(shown.contains("chosen 0.750 (generated)"), "{shown}");
    assert!(
        shown.contains("│ a tool that prints the weather"),
        "{shown}"
    );
}

#[test]
fn the_reference_competes_and_extra_pairs_are_appended() {
    let (ws, gen) = workspace(&records());
    std::fs::write(
        ws.path().join("extra.csv"),
        "prompt,chosen,rejected\nwhat is rm?,remove files,no idea\n",
    )
    .unwrap();
    let doc = "[score]\nmin_margin = 0.0\n[score.extra_pairs]\npath = 'extra.csv'\n";
    let out = run(ws.path(), &gen, doc);
    let pairs = read_pairs(&out.path().join(PAIRS_FILE)).unwrap();
    // Reference alone: the reference (score 1) beats a different candidate in every prompt.
    // `cat`: its candidates repeat the reference, which counts once: fewer than two.
    assert_eq!(pairs.len(), 2 + 1, "{pairs:?}");
    assert_eq!(pairs[1].id, "cp");
    assert_eq!(pairs[1].chosen_source, TextSource::Reference);
    assert_eq!(pairs[1].chosen, "copy files and directories");
    let last = pairs.last().unwrap();
    assert_eq!(last.chosen_source, TextSource::Extra);
    assert_eq!(last.chosen, "remove files");
    let stats: ScoreStats =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(STATS_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        (stats.generated_pairs, stats.extra_pairs, stats.pairs),
        (2, 1, 3)
    );
}

#[test]
fn external_inputs_hold_the_judge_script_and_declared_files() {
    let doc = "[score.command]\nargv = ['python3', 'judges/judge.py', '--strict']\ninputs = ['judges/prompt.txt']\n\
               [score.extra_pairs]\npath = 'x.csv'\n";
    let cfg: ScoreConfig = pick_table(doc, "score").unwrap();
    assert_eq!(
        Score::external_inputs(&cfg),
        [
            PathBuf::from("judges/prompt.txt"),
            PathBuf::from("x.csv"),
            PathBuf::from("judges/judge.py")
        ]
    );
    let cfg: ScoreConfig = pick_table(
        "[score.command]\nargv = ['sh', '-c', 'echo 1 > /dev/null']\n",
        "score",
    )
    .unwrap();
    assert!(Score::external_inputs(&cfg).is_empty());
}

/// Issue 16: a judge named by an absolute path, or a script without an extension, could be
/// edited while status still said "cached". Every argument that may be a file is an optional
/// input: hashed into the key when it names a file.
#[test]
fn optional_inputs_hold_every_argument_that_may_be_a_file() {
    let doc = "[score.command]\nargv = ['/opt/judges/judge', 'judges/judge', 'judges/rate.py', \
               '--prompt=judges/p.txt', '--strict', '-n', '3']\n";
    let cfg: ScoreConfig = pick_table(doc, "score").unwrap();
    assert_eq!(
        Score::external_inputs(&cfg),
        [PathBuf::from("judges/rate.py")]
    );
    assert_eq!(
        Score::optional_inputs(&cfg),
        [
            PathBuf::from("/opt/judges/judge"),
            PathBuf::from("judges/judge"),
            PathBuf::from("judges/p.txt"),
            PathBuf::from("3"),
        ]
    );
    // A program looked up on PATH is not a workspace file.
    let cfg: ScoreConfig =
        pick_table("[score.command]\nargv = ['python3', 'judge']\n", "score").unwrap();
    assert_eq!(Score::optional_inputs(&cfg), [PathBuf::from("judge")]);
}

/// Reads `scores.jsonl`.
fn read_scores(path: &Path) -> Result<Vec<ScoredPrompt>, ScoreError> {
    crate::jsonl::read(path, "a scored prompt").map_err(|message| ScoreError::Read {
        path: path.to_path_buf(),
        message,
    })
}
