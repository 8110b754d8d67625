#!/usr/bin/env python3
"""Checks pipe's exports with the reference runtimes: transformers for the HF directory and
llama.cpp (llama-cpp-python) for the GGUF.

Usage:
  python3 scripts/verify-export.py merge artifacts/merge/<key>
      The merge stage's output: model/ is loaded by transformers (config, tokenizer) and run by
      a plain numpy Llama forward; model.gguf, when present, is run by llama.cpp. Both are
      measured on the probe recorded in summary.json against the merged model's own figures
      there, as `pipe show merge` measures them with pipe's loader.
  python3 scripts/verify-export.py fixture MODEL_DIR tests/fixtures/smollm2/forward.json
      An HF directory of the unmodified SmolLM2 (PIPE_EXPORT_TO=DIR cargo test -p pipe-stages
      --lib export_smollm2_for_external_check -- --ignored) against transformers' own numbers.
  python3 scripts/verify-export.py arch MODEL_DIR tests/fixtures/archs/<family>/expected.json
      An HF directory of one of the architecture fixtures (or pipe's export of it) against
      transformers' numbers in the fixture's `cases` (no tokenizer check: the cases are ids).
Needs: pip install transformers tokenizers numpy jinja2 (no torch); for GGUF, llama-cpp-python.
Families: Llama (linear rope scaling), Mistral, Qwen2, Qwen3, Gemma-3 text.

The numpy forward uses HF's rotate_half RoPE on the exported weights, so agreement proves the
q/k un-permutation of a GGUF base; llama.cpp agreeing proves the GGUF's permutation, metadata
and tokenizer.
"""
import json
import struct
import sys

import numpy as np

GREEDY = 24


def read_safetensors(path):
    """Every tensor of a safetensors file as float32 (F32, F16 and BF16; no torch needed)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        raw, shape = data[a:b], meta["shape"]
        if meta["dtype"] == "F32":
            t = np.frombuffer(raw, np.float32)
        elif meta["dtype"] == "F16":
            t = np.frombuffer(raw, np.float16).astype(np.float32)
        elif meta["dtype"] == "BF16":
            t = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{path}: tensor {name} has dtype {meta['dtype']}")
        out[name] = t.reshape(shape)
    return out


def rope_of(cfg):
    """(theta, linear factor, local theta) from either config form transformers may hold."""
    params = getattr(cfg, "rope_parameters", None)
    scaling = getattr(cfg, "rope_scaling", None)
    if params and "full_attention" in params:
        full, local = params["full_attention"], params.get("sliding_attention")
        theta, local_theta = full["rope_theta"], local and local["rope_theta"]
        scaling = full
    elif params:
        theta, local_theta, scaling = params["rope_theta"], None, params
    else:
        theta, local_theta = cfg.rope_theta, getattr(cfg, "rope_local_base_freq", None)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return theta, lambda inv: inv, local_theta
    if kind == "linear":
        return theta, lambda inv: inv / scaling["factor"], local_theta
    if kind == "llama3":
        def llama3(inv):
            old = scaling["original_max_position_embeddings"]
            lo, hi, f = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
            wavelen = 2 * np.pi / inv
            smooth = (old / wavelen - lo) / (hi - lo)
            mid = (1 - smooth) * inv / f + smooth * inv
            return np.where(wavelen < old / hi, inv, np.where(wavelen > old / lo, inv / f, mid))
        return theta, llama3, local_theta
    raise SystemExit(f"verify-export: rope type {kind} is not in the numpy forward")


def hf_forward(model_dir):
    """transformers' config of `model_dir` and a numpy forward: ids -> logits [t, vocab].
    Llama, Mistral, Qwen2, Qwen3 (q/k norm) and Gemma-3 text ((1 + w) norms, sandwich norms,
    scaled embeddings, GELU-tanh, query_pre_attn_scalar, sliding-window layers with their own
    rope base)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    w = read_safetensors(model_dir + "/model.safetensors")
    gemma = cfg.model_type == "gemma3_text"
    theta, scaled, local_theta = rope_of(cfg)
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    scale = (getattr(cfg, "query_pre_attn_scalar", None) or hd) ** -0.5
    window = getattr(cfg, "sliding_window", None)
    if cfg.model_type.startswith("qwen") and not getattr(cfg, "use_sliding_window", False):
        window = None
    types = getattr(cfg, "layer_types", None) or (
        ["sliding_attention"] * cfg.num_hidden_layers if window else
        ["full_attention"] * cfg.num_hidden_layers)

    def rms(x, g):
        var = (x.astype(np.float64) ** 2).mean(-1, keepdims=True)
        return x / np.sqrt(var + cfg.rms_norm_eps).astype(np.float32) * (1 + g if gemma else g)

    def rotate_half(x):
        return np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)

    def angles(t, base, scale):
        inv = scale(1.0 / (base ** (np.arange(0, hd, 2) / hd)))
        emb = np.concatenate([np.outer(np.arange(t), inv)] * 2, -1)
        return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    def act(g):
        if gemma:
            return 0.5 * g * (1 + np.tanh(0.7978845608028654 * (g + 0.044715 * g ** 3)))
        return g / (1 + np.exp(-g))

    def forward(ids):
        t = len(ids)
        x = w["model.embed_tokens.weight"][ids]
        if gemma:
            x = x * np.float32(cfg.hidden_size ** 0.5)
        full_rope = angles(t, theta, scaled)
        local_rope = angles(t, local_theta, lambda inv: inv) if local_theta else full_rope
        pos = np.arange(t)
        causal = np.where(pos[None, :] > pos[:, None], -np.inf, 0).astype(np.float32)
        windowed = causal + np.where(pos[:, None] - pos[None, :] >= (window or t + 1), -np.inf, 0)
        for layer in range(cfg.num_hidden_layers):
            p = f"model.layers.{layer}."
            sliding = types[layer] == "sliding_attention" and window
            cos, sin = local_rope if sliding else full_rope
            h = rms(x, w[p + "input_layernorm.weight"])
            q = h @ w[p + "self_attn.q_proj.weight"].T + w.get(p + "self_attn.q_proj.bias", 0)
            k = h @ w[p + "self_attn.k_proj.weight"].T + w.get(p + "self_attn.k_proj.bias", 0)
            v = h @ w[p + "self_attn.v_proj.weight"].T + w.get(p + "self_attn.v_proj.bias", 0)
            q = q.reshape(t, nh, hd).transpose(1, 0, 2)
            k = k.reshape(t, nkv, hd).transpose(1, 0, 2)
            v = v.reshape(t, nkv, hd).transpose(1, 0, 2)
            if p + "self_attn.q_norm.weight" in w:
                q, k = rms(q, w[p + "self_attn.q_norm.weight"]), rms(k, w[p + "self_attn.k_norm.weight"])
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
            s = q @ k.transpose(0, 2, 1) * scale + (windowed if sliding else causal)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(t, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
            if gemma:
                x = x + rms(a, w[p + "post_attention_layernorm.weight"])
                h = rms(x, w[p + "pre_feedforward_layernorm.weight"])
            else:
                x = x + a
                h = rms(x, w[p + "post_attention_layernorm.weight"])
            g, u = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
            m = (act(g) * u) @ w[p + "mlp.down_proj.weight"].T
            x = x + (rms(m, w[p + "post_feedforward_layernorm.weight"]) if gemma else m)
        x = rms(x, w["model.norm.weight"])
        return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T

    return forward


def mean_nll(logits, ids):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1)
    lse = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
    return float(np.mean([lse[i] - logits[i, ids[i + 1]] for i in range(len(ids) - 1)]))


def measure(name, logits, greedy, probe, pipe_figures):
    """Prints one export's figures against the merged model; True when they are about as close
    as pipe's own loader found them (greedy as long, NLL and top-10 near pipe's figures)."""
    nll = mean_nll(logits, probe["ids"])
    top10 = max(abs(float(logits[-1][i]) - v) for i, v in probe["top10"])
    agree = next((i for i, (a, b) in enumerate(zip(greedy, probe["greedy"])) if a != b), len(greedy))
    d_nll = abs(nll - probe["nll"])
    # Export bugs (q/k layout, tokenizer, metadata) show as NLL off by >1 and greedy diverging
    # at once. llama.cpp also rounds the activations for its quantized dot products (q8_0 x
    # q8_0), hence the wider margin on the top logits than on the NLL.
    good = (agree >= pipe_figures["greedy_agree"]
            and d_nll <= 3 * pipe_figures["nll_diff"] + 2e-2
            and top10 <= 5 * pipe_figures["top10_logit_diff"] + 0.1)
    print(f"{name}: |ΔNLL| {d_nll:.1e} (pipe {pipe_figures['nll_diff']:.1e}), top-10 Δ {top10:.1e} "
          f"(pipe {pipe_figures['top10_logit_diff']:.1e}), greedy {agree}/{len(probe['greedy'])} "
          f"(pipe {pipe_figures['greedy_agree']}) -> {'ok' if good else 'FAIL'}")
    return good


def verify_hf(out_dir, summary, export):
    from transformers import AutoTokenizer

    model_dir = out_dir + "/" + export["path"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    probe = summary["probe"]
    forward = hf_forward(model_dir)
    ids = list(probe["ids"])
    logits = forward(ids)
    greedy = []
    for _ in range(len(probe["greedy"])):
        greedy.append(int(forward(ids + greedy)[-1].argmax()))
    text = tok.decode(ids)
    same_ids = tok(text, add_special_tokens=False)["input_ids"] == ids
    print(f"{export['path']}: transformers loads config and tokenizer; probe re-encodes to the same ids: {same_ids}")
    return measure(f"{export['path']} (transformers config + numpy)", logits, greedy, probe, export) and same_ids


def verify_gguf(out_dir, summary, export):
    try:
        from llama_cpp import Llama
    except ImportError:
        print(f"{export['path']}: skipped (pip install llama-cpp-python to check it with llama.cpp)")
        return True
    probe = summary["probe"]
    ids = list(probe["ids"])
    llm = Llama(model_path=out_dir + "/" + export["path"], n_ctx=512, logits_all=True,
                n_threads=2, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], np.float32)
    greedy = []
    for _ in range(len(probe["greedy"])):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([greedy[-1]])
    text = llm.detokenize(ids, special=True)
    same_tok = llm.tokenize(text, add_bos=False, special=True) == ids
    print(f"{export['path']}: llama.cpp loads it ({llm.n_vocab()} tokens, "
          f"chat template {'present' if llm.metadata.get('tokenizer.chat_template') else 'MISSING'}); "
          f"probe re-encodes to the same ids: {same_tok}")
    return measure(f"{export['path']} (llama.cpp)", logits, greedy, probe, export) and same_tok


def verify_merge(out_dir):
    summary = json.load(open(out_dir + "/summary.json"))
    ok = True
    for export in summary["exports"]:
        check = verify_gguf if export["format"].startswith("gguf") else verify_hf
        ok &= check(out_dir, summary, export)
    sys.exit(0 if ok else 1)


def verify_fixture(model_dir, fixture):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    forward = hf_forward(model_dir)
    ok = True
    for case in json.load(open(fixture))["cases"]:
        ids = case["ids"]
        logits = forward(ids).astype(np.float64)
        nll = mean_nll(logits, ids)
        diff = max(abs(logits[-1][i] - v) for i, v in case["last_top10"])
        same_ids = tok(case["text"], add_special_tokens=False)["input_ids"] == ids
        good = abs(nll - case["nll_mean"]) < 1e-4 and diff < 1e-3 and same_ids
        ok &= good
        print(f"{case['name']}: nll {nll:.6f} (ref {case['nll_mean']:.6f}), "
              f"top-10 max diff {diff:.2e}, tokenizer ids match: {same_ids} -> {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


def verify_arch(model_dir, fixture):
    forward = hf_forward(model_dir)
    ok = True
    for name, case in json.load(open(fixture))["cases"].items():
        ids = case["ids"]
        logits = forward(ids).astype(np.float64)
        nll = mean_nll(logits, ids)
        diff = max(abs(logits[-1][i] - v) for i, v in case["last_top10"])
        good = abs(nll - case["nll_mean"]) < 1e-3 and diff < 1e-2
        ok &= good
        print(f"{name}: nll {nll:.6f} (ref {case['nll_mean']:.6f}), top-10 max diff {diff:.2e}"
              f" -> {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "arch":
        verify_arch(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "merge":
        verify_merge(sys.argv[2].rstrip("/"))
    elif len(sys.argv) == 4 and sys.argv[1] == "fixture":
        verify_fixture(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
