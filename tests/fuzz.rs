//! Fuzz targets over every reader of untrusted input: the GGUF header and metadata reader, the
//! safetensors header reader, config.json into a model config, pipeline.toml with `-s`
//! overrides, the CSV and JSON ingest readers, and PEFT's adapter_config.json. Each case mutates
//! a valid seed file (bit flips, spliced bytes, integers set to boundary values, format tokens);
//! every target must return (an error for what it refuses), never panic, and never allocate more
//! than a bound proportional to its input, which a counting global allocator checks.
//!
//! The normal test suite runs 3000 seeded cases per target (about a second each). Run longer with
//! `PIPE_FUZZ_CASES=100000 cargo test --release --test fuzz` (and `PIPE_FUZZ_SEED=N` for other
//! cases); a failing case is written to `target/tmp/fuzz-failures/` with the command that
//! replays it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use pipe::config::{Override, PipelineConfig};
use pipe_stages::llm::config::{Architecture, ModelConfig};
use pipe_stages::llm::peft::AdapterConfig;
use pipe_stages::llm::testing::{random_weights, write_gguf, TinyVocab};
use pipe_stages::llm::weights::{tensors_from_bytes, ModelWeights};
use pipe_stages::llm::{GgufFile, TextTokenizer};
use pipe_stages::tabular::{self, CsvTable, JsonKind, TextEncoding};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---- the counting allocator ------------------------------------------------------------------

/// Counts live heap bytes and their peak; while a case runs, a single allocation beyond the
/// hard limit is refused (the process then aborts, after saying which target and case).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static HARD_LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static REFUSED: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to the system allocator; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grow(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn grow(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// Refuses one allocation that alone breaks the hard limit; says so on stderr first (without
/// allocating), since the process is about to abort.
fn admit(size: usize) -> bool {
    if size <= HARD_LIMIT.load(Ordering::Relaxed) {
        return true;
    }
    REFUSED.store(true, Ordering::Relaxed);
    let msg = b"\nfuzz: a target asked for one allocation beyond the hard limit; with PIPE_FUZZ_CASES set, the case is in target/tmp/fuzz-failures/current.bin\n";
    // SAFETY: write(2) of a static buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    false
}

// ---- the driver ------------------------------------------------------------------------------

/// One target at a time: the allocator's counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Peak heap per case: `FACTOR × input + SLACK` bytes.
const FACTOR: usize = 64;
const SLACK: usize = 32 << 20;
/// No single allocation may exceed this while a case runs.
const HARD: usize = 1 << 30;

fn cases() -> usize {
    env_number("PIPE_FUZZ_CASES").unwrap_or(3000) as usize
}

fn base_seed() -> u64 {
    env_number("PIPE_FUZZ_SEED").unwrap_or(0x5eed)
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn failures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the mutator knows about a format: tokens worth splicing in, and where each seed keeps
/// its binary integer fields (offset, width), so that lengths and counts get boundary values.
#[derive(Default)]
struct Format<'t> {
    tokens: &'t [&'t [u8]],
    int_fields: Vec<Vec<(usize, usize)>>,
}

/// Runs `target` on the seeds as they are and on `cases()` mutations of them.
fn fuzz(name: &str, seeds: &[Vec<u8>], format: &Format<'_>, mut target: impl FnMut(&[u8])) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = base_seed() ^ fnv(name.as_bytes());
    let mut rng = StdRng::seed_from_u64(seed);
    let total = cases();
    let long_run = std::env::var_os("PIPE_FUZZ_CASES").is_some();
    let current = failures_dir().join("current.bin");
    for case in 0..seeds.len() + total {
        let input = match seeds.get(case) {
            Some(s) => s.clone(),
            None => {
                let which = case % seeds.len();
                let fields = format.int_fields.get(which).map_or(&[][..], Vec::as_slice);
                mutate(&mut rng, &seeds[which], format.tokens, fields)
            }
        };
        // A long run keeps the case at hand: an abort (a refused allocation) loses the stack.
        if long_run {
            std::fs::write(&current, &input).unwrap();
        }
        let bound = FACTOR * input.len() + SLACK;
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        HARD_LIMIT.store(HARD, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        HARD_LIMIT.store(usize::MAX, Ordering::Relaxed);
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let problem = match outcome {
            Err(panic) => Some(format!("panicked: {}", panic_text(&panic))),
            Ok(()) if peak > bound => Some(format!(
                "allocated {peak} bytes at its peak for {} input bytes (bound {bound})",
                input.len()
            )),
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            let saved = failures_dir().join(format!("{name}-{seed:x}-{case}.bin"));
            std::fs::write(&saved, &input).unwrap();
            panic!(
                "fuzz target `{name}`, case {case}: {problem}; input saved to {}; replay with \
                 PIPE_FUZZ_SEED={} PIPE_FUZZ_CASES={} cargo test --test fuzz {name}",
                saved.display(),
                base_seed(),
                case + 1
            );
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Boundary values that crafted headers use: zero, one, powers of two, the maxima.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    31,
    32,
    255,
    4096,
    65535,
    1 << 20,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
];

/// Numbers as text: for JSON, TOML and CSV seeds, and safetensors' JSON header.
const INTERESTING_TEXT: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "1e308",
    "1e999",
    "-0",
    "0.5",
    "NaN",
    "inf",
];

/// One to four mutations of `seed`; `int_fields` are where its binary integers are.
fn mutate(
    rng: &mut StdRng,
    seed: &[u8],
    tokens: &[&[u8]],
    int_fields: &[(usize, usize)],
) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if data.is_empty() {
            0
        } else {
            rng.random_range(0..data.len())
        };
        match rng.random_range(0..12) {
            0 if !data.is_empty() => data[at] ^= 1 << rng.random_range(0..8),
            1 if !data.is_empty() => data[at] = rng.random(),
            2 => {
                let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
                set_int(&mut data, rng, at, width);
            }
            3 => {
                let end = (at + rng.random_range(0..64)).min(data.len());
                data.drain(at..end);
            }
            4 if !data.is_empty() => {
                let end = (at + rng.random_range(1..64)).min(data.len());
                let chunk = data[at..end].to_vec();
                let to = rng.random_range(0..=data.len());
                data.splice(to..to, chunk);
            }
            5 if !tokens.is_empty() => {
                let token = tokens[rng.random_range(0..tokens.len())];
                data.splice(at..at, token.iter().copied());
            }
            6 if !tokens.is_empty() && !data.is_empty() => {
                let token = tokens[rng.random_range(0..tokens.len())];
                let end = (at + token.len()).min(data.len());
                data.splice(at..end, token.iter().copied());
            }
            7 => data.truncate(at),
            8 | 9 if !int_fields.is_empty() => {
                let (pos, width) = int_fields[rng.random_range(0..int_fields.len())];
                set_int(&mut data, rng, pos, width);
            }
            10 => replace_number(&mut data, rng),
            _ => {
                let n = rng.random_range(1..16);
                let noise: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(at..at, noise);
            }
        }
    }
    data
}

/// Overwrites `width` little-endian bytes at `at` with a boundary value.
fn set_int(data: &mut [u8], rng: &mut StdRng, at: usize, width: usize) {
    let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
    for (i, b) in value.to_le_bytes()[..width.min(8)].iter().enumerate() {
        if let Some(slot) = data.get_mut(at + i) {
            *slot = *b;
        }
    }
}

/// Replaces one run of ASCII digits with a boundary number written as text.
fn replace_number(data: &mut Vec<u8>, rng: &mut StdRng) {
    let runs: Vec<(usize, usize)> = {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < data.len() {
            if data[i].is_ascii_digit() {
                let start = i;
                while i < data.len() && data[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((start, i));
            } else {
                i += 1;
            }
        }
        runs
    };
    if runs.is_empty() {
        return;
    }
    let (start, end) = runs[rng.random_range(0..runs.len())];
    let text = INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())];
    data.splice(start..end, text.bytes());
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---- model files -----------------------------------------------------------------------------

/// One layer, hidden 32: every tensor splits into 32-blocks, so quantized seeds work too.
fn small_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 272,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
        layer_types: None,
        rope_local_theta: None,
        query_pre_attn_scalar: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(2),
    }
}

fn gguf_seed(dir: &Path, dtype: GgmlDType) -> Vec<u8> {
    let config = small_config();
    let path = dir.join(format!("seed-{dtype:?}.gguf"));
    let weights = random_weights(&config, 3);
    write_gguf(
        &path,
        &config,
        &weights,
        &TinyVocab::new(),
        dtype,
        Some("{{ messages }}"),
    )
    .unwrap();
    with_alignment(&std::fs::read(path).unwrap())
}

/// The same GGUF with `general.alignment = 32` added, so mutations can reach that value.
fn with_alignment(bytes: &[u8]) -> Vec<u8> {
    use candle_core::quantized::gguf_file::{self, Content, Value};
    let mut cursor = std::io::Cursor::new(bytes);
    let content = Content::read(&mut cursor).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(&str, candle_core::quantized::QTensor)> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                content.tensor(&mut cursor, n, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let alignment = Value::U32(32);
    let mut metadata: Vec<(&str, &Value)> = vec![("general.alignment", &alignment)];
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    metadata.extend(keys.iter().map(|k| (k.as_str(), &content.metadata[*k])));
    let tensor_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensor_refs).unwrap();
    out.into_inner()
}

/// Where a GGUF (version 2 or 3, as candle writes it) keeps its integers: counts, lengths,
/// value types and numeric values (the first few of each array), tensor dimensions, types and
/// offsets. Walks the seed, which is known to be valid.
fn gguf_int_fields(bytes: &[u8]) -> Vec<(usize, usize)> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let mut fields = vec![(8, 8), (16, 8)];
    let (tensors, kvs) = (u64_at(8), u64_at(16));
    let mut at = 24;
    fn value(
        bytes: &[u8],
        kind: u32,
        at: &mut usize,
        fields: &mut Vec<(usize, usize)>,
        record: bool,
    ) {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let width = match kind {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                fields.push((*at, 8));
                *at += 8 + u64_at(*at);
                return;
            }
            _ => {
                let inner = u32_at(*at);
                let len = u64_at(*at + 4);
                fields.extend([(*at, 4), (*at + 4, 8)]);
                *at += 12;
                for i in 0..len {
                    value(bytes, inner, at, fields, record && i < 4);
                }
                return;
            }
        };
        if record {
            fields.push((*at, width));
        }
        *at += width;
    }
    for _ in 0..kvs {
        fields.push((at, 8));
        at += 8 + u64_at(at);
        let kind = u32_at(at);
        fields.push((at, 4));
        at += 4;
        value(bytes, kind, &mut at, &mut fields, true);
    }
    for _ in 0..tensors {
        fields.push((at, 8));
        at += 8 + u64_at(at);
        let dims = u32_at(at) as usize;
        fields.push((at, 4));
        at += 4;
        for _ in 0..dims {
            fields.push((at, 8));
            at += 8;
        }
        fields.extend([(at, 4), (at + 4, 8)]);
        at += 12;
    }
    fields
}

/// Issue 16: `general.alignment = 0` panicked in candle and `llama.block_count = 4294967295`
/// allocated without bound. Both are in the seeds; the mutations set header integers to such
/// values all over the file.
#[test]
fn fuzz_gguf_header_and_metadata() {
    let dir = scratch();
    let seeds = vec![
        gguf_seed(dir.path(), GgmlDType::F32),
        gguf_seed(dir.path(), GgmlDType::Q8_0),
    ];
    let format = Format {
        tokens: &[b"GGUF", b"general.alignment"],
        int_fields: seeds.iter().map(|s| gguf_int_fields(s)).collect(),
    };
    let path = dir.path().join("case.gguf");
    fuzz("gguf", &seeds, &format, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let Ok(mut gguf) = GgufFile::open(&path) else {
            return;
        };
        let Ok(config) = gguf.config() else {
            return;
        };
        let _ = TextTokenizer::from_gguf(&gguf);
        if let Ok(mut weights) = gguf.load_weights(&config, &Device::Cpu) {
            let _ = weights.validate(&config);
        }
    });
}

/// Issue 16, through the binary: `general.alignment = 0` made `pipe generate` panic (exit 101)
/// and `llama.block_count = 4294967295` made it allocate without bound. Both are clear errors
/// naming the file now, before anything is allocated for them.
#[test]
fn crafted_gguf_headers_are_clear_errors_of_the_model_commands() {
    let dir = scratch();
    let seed = gguf_seed(dir.path(), GgmlDType::F32);
    let cases = [
        (
            "general.alignment",
            0,
            "`general.alignment` is 0; it must be a power of two",
        ),
        ("llama.block_count", u32::MAX, "declares 4294967295 layers"),
    ];
    for (key, value, expected) in cases {
        let path = dir.path().join("crafted.gguf");
        std::fs::write(&path, set_u32(&seed, key, value)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
            .args(["generate", "-p", "hi", "--model"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains("crafted.gguf"),
            "{key}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The GGUF `bytes` with the U32 metadata value of `key` set to `value`.
fn set_u32(bytes: &[u8], key: &str, value: u32) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let at = find(&bytes, key.as_bytes()).expect("key in the seed") + key.len();
    assert_eq!(&bytes[at..at + 4], &4u32.to_le_bytes(), "{key} is a U32");
    bytes[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn safetensors_seed() -> Vec<u8> {
    let weights = random_weights(&small_config(), 5);
    let dir = scratch();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(weights.tensors(), &path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn fuzz_safetensors_header() {
    let config = small_config();
    let path = Path::new("model.safetensors");
    fuzz(
        "safetensors",
        &[safetensors_seed()],
        &Format {
            tokens: &[
                b"{",
                b"}",
                b"\"shape\":[",
                b"\"data_offsets\":[",
                b"F32",
                b"BF16",
                b"99999999999",
            ],
            ..Format::default()
        },
        |bytes| {
            if let Ok(tensors) = tensors_from_bytes(bytes, path, &Device::Cpu) {
                let _ = ModelWeights::new(tensors).validate(&config);
            }
        },
    );
}

#[test]
fn fuzz_config_json_into_a_model_config() {
    let weights = random_weights(&small_config(), 9);
    let seed = serde_json::to_vec_pretty(&small_config().to_hf_json("float32")).unwrap();
    let path = Path::new("config.json");
    fuzz(
        "config_json",
        &[seed],
        &Format {
            tokens: &[
                b"4294967295",
                b"18446744073709551615",
                b"0",
                b"-1",
                b"1e308",
                b"null",
                b"\"num_hidden_layers\":",
            ],
            ..Format::default()
        },
        |bytes| {
            let Ok(value) = serde_json::from_slice(bytes) else {
                return;
            };
            if let Ok(config) = ModelConfig::from_hf_json(&value, path) {
                let _ = weights.clone().validate(&config);
            }
        },
    );
}

#[test]
fn fuzz_peft_adapter_config() {
    let seed = include_bytes!("fixtures/smollm2/peft_adapter/adapter_config.json").to_vec();
    let path = Path::new("adapter_config.json");
    fuzz(
        "adapter_config",
        &[seed],
        &Format {
            tokens: &[
                b"\"r\":",
                b"18446744073709551615",
                b"null",
                b"[",
                b"{",
                b"\"LORA\"",
            ],
            ..Format::default()
        },
        |bytes| {
            let _ = AdapterConfig::parse(&String::from_utf8_lossy(bytes), path);
        },
    );
}

// ---- pipeline.toml and -s --------------------------------------------------------------------

/// The overrides follow the document after this line, one per line.
const OVERRIDES: &str = "\n#--overrides--\n";

#[test]
fn fuzz_pipeline_toml_and_overrides() {
    let registry = pipe_stages::registry();
    let mut seed = include_str!("../pipeline.toml").to_string();
    seed.push_str(OVERRIDES);
    seed.push_str("sft.max_steps=1000000000000\ningest.val_fraction=0.1\nscore.min_margin=x\n");
    let dir = scratch();
    let path = dir.path().join("pipeline.toml");
    fuzz(
        "pipeline_toml",
        &[seed.into_bytes()],
        &Format {
            tokens: &[
                b"[",
                b"]",
                b"[[",
                b"=",
                b"\"",
                b"'''",
                b".",
                b"\n[sft]\n",
                b"{a=1}",
                b"1e999",
            ],
            ..Format::default()
        },
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let (doc, overrides) = text.split_once(OVERRIDES).unwrap_or((&text, ""));
            std::fs::write(&path, doc).unwrap();
            let parsed: Result<Vec<Override>, _> = overrides.lines().map(Override::parse).collect();
            if let Ok(overrides) = parsed {
                let _ = PipelineConfig::load(&path, &overrides, &registry);
            }
        },
    );
}

// ---- CSV and JSON ingest readers ---------------------------------------------------------------

fn csv_seed() -> Vec<u8> {
    let text = include_str!("../data/unix_manual_qa.csv");
    text.lines()
        .take(24)
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

#[test]
fn fuzz_csv_reader() {
    fuzz(
        "csv",
        &[csv_seed(), b"a;b\r\n\"x\";\"y\r\nz\"\r\n\r\n1;2".to_vec()],
        &Format {
            tokens: &[
                b"\"",
                b",",
                b"\n",
                b"\r",
                b"\r\n",
                b"\xef\xbb\xbf",
                b"\xff\xfe",
                b"\xb0\xa1",
            ],
            ..Format::default()
        },
        |bytes| {
            let Ok(decoded) = tabular::decode(bytes.to_vec(), TextEncoding::Auto, "data.csv")
            else {
                return;
            };
            for delimiter in [b',', b';'] {
                if let Ok(table) = CsvTable::open(&decoded.text, "data.csv", delimiter) {
                    let picks: Vec<Option<usize>> =
                        (0..table.columns().len().min(3)).map(Some).collect();
                    let _ = table.rows(&picks);
                }
            }
        },
    );
}

#[test]
fn fuzz_json_readers() {
    let array = br#"[{"prompt": "What does ls do?", "response": "list files", "n": 1},
 {"prompt": "cp?", "response": "copy", "tags": ["a", {"b": null}]}]"#
        .to_vec();
    let lines =
        b"{\"prompt\": \"a\", \"response\": \"b\"}\n\n{\"prompt\": \"c\", \"response\": 2.5}\n"
            .to_vec();
    fuzz(
        "json",
        &[array, lines],
        &Format {
            tokens: &[
                b"[", b"]", b"{", b"}", b"\"", b",", b":", b"\n", b"1e999", b"\\u0000",
            ],
            ..Format::default()
        },
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            for kind in [JsonKind::Array, JsonKind::Lines] {
                let _ = tabular::read_json(&text, "data.json", kind);
            }
        },
    );
}
