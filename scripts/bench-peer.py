#!/usr/bin/env python3
"""PyTorch + PEFT on the work `pipe bench` measures, for ratios taken in the same run.

Same shapes and settings as `pipe bench --random-weights`: a model built from an HF
`config.json` with random f32 weights; a LoRA training step (r=16, alpha 32, dropout 0.05 on
all seven projections, forward + backward + AdamW lr 1e-4, loss on every token but the first)
at BATCH x SEQ; and greedy decoding of DECODE_TOKENS after a 16-token prompt at batch 1 and 8
(the base model, KV cache on). Each phase runs in its own process, so each peak RSS is its own.

    python3 scripts/bench-peer.py --model DIR [--batch 1 --seq 512 --steps 3] [--threads 2]
        [--pipe target/release/pipe] [--json FILE]

With --pipe, `pipe bench --random-weights` runs on the same shapes just before each PyTorch
phase and a table of both with the ratios is printed. Needs torch, transformers and peft
(any recent version; the versions are printed).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_model(model_dir, threads):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    return model, config


def ids(n, salt, vocab):
    return [(i * 7919 + salt * 104729 + 13) % vocab for i in range(n)]


def train_phase(args):
    import torch
    from peft import LoraConfig, get_peft_model

    model, config = build_model(args.model, args.threads)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=PROJECTIONS)
    model = get_peft_model(model, lora)
    model.train()
    batch = torch.tensor([ids(args.seq, b, config.vocab_size) for b in range(args.batch)])
    labels = batch.clone()
    labels[:, 0] = -100  # the prompt token, as pipe's bench
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(input_ids=batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up, as pipe's bench
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    tokens = args.batch * args.seq * args.steps
    return {"phase": "train", "shape": f"{args.batch}x{args.seq}", "tokens_per_s": tokens / seconds}


def decode_phase(args, rows):
    import torch

    model, config = build_model(args.model, args.threads)
    model.eval()
    prompt = torch.tensor([ids(16, 7, config.vocab_size)] * rows)
    kwargs = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        start = time.perf_counter()
        model.generate(
            prompt, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens, **kwargs
        )
        seconds = time.perf_counter() - start
    return {
        "phase": f"decode{rows}",
        "shape": f"{rows}x{args.decode_tokens}",
        "tokens_per_s": rows * args.decode_tokens / seconds,
    }


def run_phase_here(args):
    if args.phase == "train":
        out = train_phase(args)
    else:
        out = decode_phase(args, int(args.phase.removeprefix("decode")))
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def in_child(args, phase):
    command = [sys.executable, __file__, "--phase", phase, "--model", args.model,
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
               "--decode-tokens", str(args.decode_tokens), "--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF directory with config.json")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pipe", help="a pipe binary: run `pipe bench` on the same shapes too")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        return run_phase_here(args)

    import peft
    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}, {args.threads} threads, {args.model}")
    pipe_report = None
    if args.pipe:
        pipe_report = pipe_all(args)
    rows = []
    for phase in ["train", "decode1", "decode8"]:
        torch_row = in_child(args, phase)
        pipe_row = pipe_report.get(phase) if pipe_report else None
        rows.append({"phase": phase, "pytorch": torch_row, "pipe": pipe_row})
        line = (f"{phase:<8} {torch_row['shape']:>8}  PyTorch {torch_row['tokens_per_s']:8.1f} tok/s "
                f"{torch_row['peak_rss_mb'] / 1024:5.2f} GB")
        if pipe_row:
            ratio = pipe_row["tokens_per_s"] / torch_row["tokens_per_s"]
            memory = pipe_row["peak_rss_mb"] / torch_row["peak_rss_mb"]
            line += (f"  | pipe {pipe_row['tokens_per_s']:8.1f} tok/s "
                     f"{pipe_row['peak_rss_mb'] / 1024:5.2f} GB  | {ratio:.2f}x speed, "
                     f"{memory:.2f}x memory")
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def pipe_all(args):
    """Every phase of `pipe bench` (it runs each in its own process), by phase name."""
    report = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pipe-bench-{os.getpid()}.json")
    command = [args.pipe, "bench", "--model", args.model, "--random-weights",
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
               "--decode-tokens", str(args.decode_tokens), "--json", report]
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(report) as f:
        data = json.load(f)
    os.unlink(report)
    return {normalise(p["phase"]): p for p in data["phases"]}


def normalise(name):
    """pipe's phase names (`train`, `prefill`, `decode-1`) as this script's (`decode1`)."""
    return name.lower().replace("-", "").replace("_", "")


if __name__ == "__main__":
    main()
