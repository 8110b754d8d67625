//! `pipe run --executor slurm` on a real one-node Slurm cluster (scripts/slurm-up.sh) with a
//! tiny model: the chain to eval as one job per stage, `--from orpo` as jobs, a job that fails
//! inside (its log shown, downstream skipped), a running sft job cancelled with `scancel`
//! and a rerun that resumes from its checkpoint, the sbatch lines of a dry run, and a sweep
//! whose variants' jobs are all submitted at once.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use support::components;
use support::{strs, tiny_chain, tiny_workspace, Ws};

static CHAIN: LazyLock<String> = LazyLock::new(|| {
    tiny_chain(
        r#"

[sft.resources]
cpus = 1
time = "10:00"

[orpo]
max_steps = 3
batch_size = 2
max_seq_len = 128
save_every = 2

[orpo.lora]
r = 4
alpha = 8

[merge]
dtype = "f32"

[eval]
limit = 3
max_new_tokens = 8
samples = 1
"#,
    )
});

const ALL: [&str; 8] = [
    "eval", "generate", "ingest", "merge", "model", "orpo", "score", "sft",
];

/// The Slurm job ids a submitter printed, by stage (`NAME job ID …` lines), first seen first.
fn job_ids(stdout: &str, stage: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some(stage) && words.next() == Some("job") {
            if let Some(id) = words.next() {
                if !ids.iter().any(|i| i == id) {
                    ids.push(id.to_string());
                }
            }
        }
    }
    ids
}

fn slurm_or_skip() -> bool {
    let up = components::slurm();
    if !up {
        eprintln!("!!! SKIPPED: no Slurm cluster on this machine");
    }
    up
}

#[test]
fn the_chain_runs_to_eval_as_one_job_per_stage_and_from_orpo_again() {
    if !slurm_or_skip() {
        return;
    }
    let ws = tiny_workspace(&CHAIN);
    let first = ws.ok(&["run", "--executor", "slurm"]);
    let out = first.all();
    assert_eq!(first.ran(), strs(&ALL), "{out}");
    let mut ids = Vec::new();
    for stage in ALL {
        let stage_ids = job_ids(&first.stdout, stage);
        assert_eq!(stage_ids.len(), 1, "{stage}: one job\n{out}");
        ids.extend(stage_ids);
        let key = &ws.entries(stage)[0];
        let log = ws.path(&format!("artifacts/.logs/{stage}/{key}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{log:?}: {e}"));
        assert!(
            text.contains(&format!("{stage:<10} running  {key}")),
            "{stage}'s job ran it:\n{text}"
        );
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ALL.len(), "a job per stage:\n{out}");
    assert!(out.contains("8 ran, 0 cached"), "{out}");

    // Everything is cached now: nothing is submitted.
    let again = ws.ok(&["run", "--executor", "slurm"]);
    assert!(again.ran().is_empty(), "{}", again.all());
    assert!(!again.stdout.contains(" job "), "{}", again.all());

    let from = ws.ok(&["run", "--executor", "slurm", "--from", "orpo"]);
    assert_eq!(
        from.ran(),
        strs(&["eval", "merge", "orpo"]),
        "{}",
        from.all()
    );
    assert_eq!(
        from.reused(),
        strs(&["generate", "ingest", "model", "score", "sft"]),
        "{}",
        from.all()
    );
    for stage in ["orpo", "merge", "eval"] {
        assert_eq!(job_ids(&from.stdout, stage).len(), 1, "{}", from.all());
    }
}

#[test]
fn a_job_that_fails_inside_shows_its_log_and_skips_what_depends_on_it() {
    if !slurm_or_skip() {
        return;
    }
    // A config the submitter accepts (keys and types are right) that fails inside the job:
    // the CSV has no column `questoin`.
    let pipeline = CHAIN.replacen("prompt = \"question\"", "prompt = \"questoin\"", 1);
    let ws = tiny_workspace(&pipeline);
    let run = ws.run(&["run", "--executor", "slurm", "--to", "sft"]);
    let out = run.all();
    assert_eq!(run.code, 1, "{out}");
    assert!(out.contains("ingest     FAILED   Slurm job"), "{out}");
    assert!(out.contains("FAILED (exit code 1)"), "{out}");
    // The job's own error, from its log's tail.
    assert!(out.contains("questoin"), "{out}");
    assert!(out.contains("artifacts/.logs/ingest/"), "{out}");
    assert!(
        out.contains("sft        skipped  (upstream `ingest` failed)"),
        "{out}"
    );
    assert!(ws.entries("ingest").is_empty() && ws.entries("sft").is_empty());
}

#[test]
fn a_sweep_submits_every_variants_jobs_at_once_and_shares_the_common_stages() {
    if !slurm_or_skip() {
        return;
    }
    let ws = tiny_workspace(&CHAIN);
    let run = ws.ok(&[
        "-s",
        "orpo.beta=0.1,0.5",
        "run",
        "--sweep",
        "--executor",
        "slurm",
    ]);
    let out = run.all();
    // The common stages are one job each; orpo, merge and eval one per variant.
    for (stage, jobs) in [
        ("ingest", 1),
        ("model", 1),
        ("sft", 1),
        ("generate", 1),
        ("score", 1),
        ("orpo", 2),
        ("merge", 2),
        ("eval", 2),
    ] {
        assert_eq!(job_ids(&run.stdout, stage).len(), jobs, "{stage}\n{out}");
        assert_eq!(ws.entries(stage).len(), jobs, "{stage}\n{out}");
    }
    // Concurrently: every job was submitted before the first one completed.
    let lines: Vec<&str> = run.stdout.lines().collect();
    let last_submit = lines.iter().rposition(|l| l.contains(" submitted ["));
    let first_done = lines.iter().position(|l| l.contains(" COMPLETED ["));
    assert!(
        matches!((last_submit, first_done), (Some(s), Some(d)) if s < d),
        "{out}"
    );
    assert!(out.contains("2 variants, 2 ok, 0 failed"), "{out}");
}

/// A long enough sft that a `scancel` lands between checkpoints.
fn cancellable() -> String {
    CHAIN
        .replace(
            "max_steps = 2\n",
            "max_steps = 400\nsave_every = 10\neval_every = 1000\n",
        )
        .replace("time = \"10:00\"", "time = \"20:00\"")
}

fn checkpoint_step(ws: &Ws) -> Option<u64> {
    let root = ws.path("artifacts/.partial/sft");
    let key = std::fs::read_dir(root).ok()?.flatten().next()?.path();
    let text = std::fs::read_to_string(key.join("checkpoint/state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// Starts `pipe run --executor slurm --to sft` (stdout to a file) and waits until its sft job
/// has checkpointed step `min_step` or later.
fn submit_sft_until_step(ws: &Ws, min_step: u64, what: &str) -> (Child, PathBuf) {
    let stdout_path = ws.path("submitter.out");
    let mut child = ws
        .command(&["run", "--executor", "slurm", "--to", "sft"])
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while checkpoint_step(ws).is_none_or(|s| s < min_step) {
        assert!(Instant::now() < deadline, "{what}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the submitter ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, stdout_path)
}

/// Waits for the submitter: its exit status, what it printed and its stderr.
fn finish(mut child: Child, stdout_path: &Path) -> (ExitStatus, String, String) {
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (
        status,
        std::fs::read_to_string(stdout_path).unwrap(),
        stderr,
    )
}

#[test]
fn a_cancelled_sft_job_resumes_from_its_checkpoint_when_run_again() {
    if !slurm_or_skip() {
        return;
    }
    let ws = tiny_workspace(&cancellable());
    let (child, stdout_path) = submit_sft_until_step(&ws, 10, "no sft checkpoint appeared");
    let printed = std::fs::read_to_string(&stdout_path).unwrap();
    let sft_jobs = job_ids(&printed, "sft");
    assert_eq!(sft_jobs.len(), 1, "{printed}");
    let scancel = Command::new("scancel").arg(&sft_jobs[0]).status().unwrap();
    assert!(scancel.success());
    let (status, printed, stderr) = finish(child, &stdout_path);
    assert_eq!(status.code(), Some(1), "{printed}\n{stderr}");
    assert!(stderr.contains("CANCELLED"), "{printed}\n{stderr}");
    assert!(
        ws.entries("sft").is_empty(),
        "a cancelled job commits nothing"
    );
    let step = checkpoint_step(&ws).unwrap();
    assert!((10..400).contains(&step), "cancelled at step {step}");

    let rerun = ws.ok(&["run", "--executor", "slurm", "--to", "sft"]);
    assert_eq!(rerun.ran(), strs(&["sft"]), "{}", rerun.all());
    let key = &ws.entries("sft")[0];
    let log = std::fs::read_to_string(ws.path(&format!("artifacts/.logs/sft/{key}.log"))).unwrap();
    assert!(
        log.contains("resuming from the checkpoint of step"),
        "{log}"
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path(&format!("artifacts/sft/{key}/summary.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        summary["resumed_from_step"]
            .as_u64()
            .is_some_and(|s| s >= 10),
        "{summary}"
    );
}

#[test]
fn a_dry_run_prints_the_sbatch_lines_and_the_lock_refuses_a_second_run() {
    if !slurm_or_skip() {
        return;
    }
    let pipeline = format!(
        "{}\n[executor]\nkind = \"slurm\"\n\n[executor.slurm]\ntime = \"30:00\"\nextra = [\"--comment=pipe-test\"]\n",
        *CHAIN
    );
    let ws = tiny_workspace(&pipeline);
    let dry = ws.ok(&["run", "--dry-run", "--to", "sft"]);
    let out = dry.all();
    let root = ws.dir.path().canonicalize().unwrap();
    let sft_key = out
        .lines()
        .find_map(|l| l.strip_prefix("sft        would run "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let expected = format!(
        "sbatch --parsable --job-name=pipe-sft --chdir={root} --output={root}/artifacts/.logs/sft/{sft_key}.log \
         --open-mode=append --no-requeue --export=ALL '--dependency=afterok:<job of model>:<job of ingest>' \
         --kill-on-invalid-dep=yes --cpus-per-task=1 --time=10:00 --comment=pipe-test",
        root = root.display()
    );
    assert!(out.contains(&expected), "expected\n{expected}\nin\n{out}");
    assert!(
        out.contains("run --only sft --force --executor local"),
        "{out}"
    );

    // The submitter holds the workspace lock while its jobs run: a second run is refused,
    // naming the holder; the jobs themselves commit under it.
    let slow = pipeline.replace("max_steps = 2\n", "max_steps = 60\n");
    std::fs::write(ws.path("pipeline.toml"), slow).unwrap();
    let mut child = ws
        .command(&["run", "--to", "sft"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The token it lends its jobs is written just before the first submission.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ws.path("artifacts/.lock.token").exists() {
        assert!(Instant::now() < deadline, "the submitter never submitted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = ws.run(&["run", "--to", "ingest", "--executor", "local"]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert!(
        refused
            .stderr
            .contains(&format!("another pipe run (pid {}) holds", child.id())),
        "{}",
        refused.all()
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(ws.entries("sft").len(), 1);
}

/// The key of `stage` in a dry run's `would run` line.
fn planned_key(out: &str, stage: &str) -> String {
    let prefix = format!("{stage:<10} would run ");
    out.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `would run` line for {stage}:\n{out}"))
        .to_string()
}

#[test]
fn gpus_ask_slurm_for_gpus_and_make_auto_mean_cuda_keyed_as_a_gpu_node() {
    if !slurm_or_skip() {
        return;
    }
    let pipeline = CHAIN.replace(
        "[model]\npath = \"tiny\"\n",
        "[model]\npath = \"tiny\"\n\n[model.resources]\ngpus = 1\n",
    );
    let ws = tiny_workspace(&pipeline);
    let dry = ws.ok(&["run", "--executor", "slurm", "--dry-run", "--to", "model"]);
    assert!(dry.stdout.contains(" --gres=gpu:1 "), "{}", dry.all());
    let more = ws.ok(&[
        "run",
        "--executor",
        "slurm",
        "--dry-run",
        "--to",
        "model",
        "-s",
        "model.resources.gpus=4",
    ]);
    assert_eq!(
        planned_key(&dry.stdout, "model"),
        planned_key(&more.stdout, "model"),
        "the number of GPUs is not part of a key"
    );
    // Where `auto` lands is: a job given GPUs is keyed as on a GPU node, a local run as here.
    let here = ws.ok(&["run", "--dry-run", "--to", "model"]);
    assert_eq!(
        planned_key(&here.stdout, "model") == planned_key(&dry.stdout, "model"),
        cfg!(feature = "cuda"),
        "{}",
        here.all()
    );

    // The one-node test cluster has one stand-in GPU (scripts/slurm-up.sh), so the job starts;
    // inside it `device = "auto"` must mean CUDA.
    let run = ws.run(&["run", "--executor", "slurm", "--to", "model"]);
    if cfg!(feature = "cuda") {
        assert_eq!(run.code, 0, "{}", run.all());
    } else {
        assert_eq!(run.code, 1, "{}", run.all());
        assert!(
            run.all()
                .contains("given 1 GPU(s) (PIPE_GPUS=1): this build of pipe has no CUDA support"),
            "{}",
            run.all()
        );
    }
}

#[test]
fn ctrl_c_cancels_the_jobs_the_run_submitted() {
    if !slurm_or_skip() {
        return;
    }
    let ws = tiny_workspace(&cancellable());
    let (child, stdout_path) = submit_sft_until_step(&ws, 0, "sft never started");
    // SAFETY: a plain kill(2) of the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let (status, printed, stderr) = finish(child, &stdout_path);
    assert_eq!(status.code(), Some(130), "{printed}\n{stderr}");
    let sft = job_ids(&printed, "sft");
    assert!(
        stderr.contains(&format!(
            "interrupted (Ctrl-C): cancelled Slurm job(s) {}",
            sft[0]
        )),
        "{printed}\n{stderr}"
    );
    let queue = Command::new("squeue")
        .args(["-h", "-t", "PENDING,RUNNING", "-j", &sft[0]])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&queue.stdout).trim().is_empty(),
        "job {} still queued or running",
        sft[0]
    );
}
