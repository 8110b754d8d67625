#!/usr/bin/env python3
"""Checks pipe's GGUF loader and HF export against the reference implementations.

Usage:
  PIPE_EXPORT_TO=/tmp/smollm2-hf cargo test -p pipe-stages --lib export_smollm2_for_external_check -- --ignored
  python3 scripts/verify-hf-export.py /tmp/smollm2-hf tests/fixtures/smollm2/forward.json
(needs: pip install transformers tokenizers safetensors numpy jinja2; no torch)

transformers loads the exported config.json and tokenizer.json; a plain numpy Llama forward
with HF's rotate_half RoPE on the exported (un-permuted) weights must reproduce forward.json
(mean NLL and last-position top-10 logits): this is what proves the q/k un-permutation.
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file
from transformers import AutoConfig, AutoTokenizer


def main(model_dir, fixture):
    cfg = AutoConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    w = load_file(model_dir + "/model.safetensors")
    theta = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta}
    theta = theta["rope_theta"]
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // nh

    def rms(x, g):
        var = (x.astype(np.float64) ** 2).mean(-1, keepdims=True)
        return x / np.sqrt(var + cfg.rms_norm_eps).astype(np.float32) * g

    def rotate_half(x):
        return np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)

    def forward(ids):
        t = len(ids)
        x = w["model.embed_tokens.weight"][ids]
        inv = 1.0 / (theta ** (np.arange(0, hd, 2) / hd))
        ang = np.outer(np.arange(t), inv)
        emb = np.concatenate([ang, ang], -1)
        cos, sin = np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)
        mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
        for layer in range(cfg.num_hidden_layers):
            p = f"model.layers.{layer}."
            h = rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, nh, hd).transpose(1, 0, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, nkv, hd).transpose(1, 0, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, nkv, hd).transpose(1, 0, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            x = x + (s @ v).transpose(1, 0, 2).reshape(t, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
            h = rms(x, w[p + "post_attention_layernorm.weight"])
            g, u = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
        x = rms(x, w["model.norm.weight"])
        return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T

    ok = True
    for case in json.load(open(fixture))["cases"]:
        ids = case["ids"]
        logits = forward(ids).astype(np.float64)
        top = logits.max(-1)
        lse = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
        nll = float(np.mean([lse[i] - logits[i, ids[i + 1]] for i in range(len(ids) - 1)]))
        diff = max(abs(logits[-1][i] - v) for i, v in case["last_top10"])
        same_ids = tok(case["text"], add_special_tokens=False)["input_ids"] == ids
        good = abs(nll - case["nll_mean"]) < 1e-4 and diff < 1e-3 and same_ids
        ok &= good
        print(f"{case['name']}: nll {nll:.6f} (ref {case['nll_mean']:.6f}), "
              f"top-10 max diff {diff:.2e}, tokenizer ids match: {same_ids} -> {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
