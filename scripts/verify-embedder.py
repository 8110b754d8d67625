#!/usr/bin/env python3
"""Reference sentence embeddings for the `embedding` scorer's test, without torch.

Usage:
  python3 scripts/verify-embedder.py models/all-MiniLM-L6-v2
(needs: pip install numpy safetensors tokenizers)

A plain numpy BERT forward (post-LayerNorm encoder, exact-erf GELU) on the model's own
safetensors weights, then what sentence-transformers does for all-MiniLM-L6-v2 (modules.json:
Transformer with max_seq_length 256, mean pooling over the attention mask, L2 normalisation).
Prints the first dimensions of each embedding and the pairwise cosines that
stages/src/scoring/embedding.rs asserts.
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "How do I list the files in a directory?",
    "What command shows the contents of a folder?",
    "The cat sat quietly on the warm windowsill.",
    "디렉터리의 파일 목록을 보는 방법",
]


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(w, cfg, ids):
    n = len(ids)
    h = w["embeddings.word_embeddings.weight"][ids]
    h = h + w["embeddings.position_embeddings.weight"][:n]
    h = h + w["embeddings.token_type_embeddings.weight"][0]
    eps = cfg["layer_norm_eps"]
    h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    heads = cfg["num_attention_heads"]
    hd = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda x, name: x @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin(h, "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(h, "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(h, "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, heads * hd)
        a = lin(a, "attention.output.dense")
        h = layer_norm(a + h, w[p + "attention.output.LayerNorm.weight"],
                       w[p + "attention.output.LayerNorm.bias"], eps)
        f = lin(gelu(lin(h, "intermediate.dense")), "output.dense")
        h = layer_norm(f + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    pooled = h.mean(0)
    return pooled / np.linalg.norm(pooled)


def main(model_dir):
    cfg = json.load(open(model_dir + "/config.json"))
    w = {k: v.astype(np.float64) for k, v in load_file(model_dir + "/model.safetensors").items()}
    tok = Tokenizer.from_file(model_dir + "/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(256)
    vecs = []
    for s in SENTENCES:
        ids = tok.encode(s).ids
        e = embed(w, cfg, np.array(ids))
        vecs.append(e)
        print(f"{s!r}: {len(ids)} tokens, first dims {[round(float(x), 6) for x in e[:4]]}")
    for i in range(len(vecs)):
        for j in range(i + 1, len(vecs)):
            print(f"cos({i}, {j}) = {float(vecs[i] @ vecs[j]):.6f}")


if __name__ == "__main__":
    main(sys.argv[1])
