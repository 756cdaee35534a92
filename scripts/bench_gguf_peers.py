#!/usr/bin/env python3
"""What the peers do with a GGUF file on this machine, for examples/bench.rs --gguf: HF
transformers (float32, CPU, dequantised weights) and, when the llama_cpp module is installed
(pip install llama-cpp-python builds llama.cpp from source), llama.cpp itself; both on the same
number of threads. Also numpy's matvec bandwidth over as many bytes as one decode step of the
quantised model reads, the memory roof a decode kernel is compared with.

    .venv/bin/python scripts/bench_gguf_peers.py FILE.gguf [--prompt 128] [--decode 32]
        [--threads 2] [--bytes N] [--skip-transformers]

Prints one JSON object: {"transformers": {...}, "llama_cpp": {...} or null, "numpy_matvec": {...}}
with prefill tokens/s and decode tokens/s (best of the runs).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def prompt_ids(n, vocab):
    # Deterministic ordinary token ids, away from the special tokens at either end.
    return [int(100 + (i * 7919) % (min(vocab, 30000) - 200)) for i in range(n)]


def time_prefill_decode(model, n_decode, runs=2, **prefill):
    """Best seconds over `runs` of a transformers model's prefill (called with `prefill`) and of
    one greedy decode step after it (mean over `n_decode` steps)."""
    import torch

    best_prefill, best_decode = 1e9, 1e9
    with torch.no_grad():
        for run in range(runs):
            log(f"transformers: run {run + 1} ...")
            t = time.perf_counter()
            out = model(**prefill, use_cache=True)
            best_prefill = min(best_prefill, time.perf_counter() - t)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(n_decode):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            best_decode = min(best_decode, (time.perf_counter() - t) / n_decode)
    return best_prefill, best_decode


def bench_transformers(path, n_prompt, n_decode, threads):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([prompt_ids(n_prompt, model.config.vocab_size)])
    best_prefill, best_decode = time_prefill_decode(model, n_decode, input_ids=ids)
    return {
        "version": __import__("transformers").__version__,
        "dtype": "float32",
        "threads": threads,
        "prefill_tokens_per_s": n_prompt / best_prefill,
        "decode_tokens_per_s": 1.0 / best_decode,
    }


def bench_llama_cpp(path, n_prompt, n_decode, threads):
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=n_prompt + n_decode + 8, n_threads=threads,
        n_threads_batch=threads, n_batch=n_prompt, verbose=False,
    )
    ids = prompt_ids(n_prompt, llm.n_vocab())
    best_prefill, best_decode = 1e9, 1e9
    for _ in range(2):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        best_prefill = min(best_prefill, time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n_decode):
            # Which token is fed does not change the cost of a step.
            llm.eval([ids[i]])
        best_decode = min(best_decode, (time.perf_counter() - t) / n_decode)
    return {
        "version": llama_cpp.__version__,
        "threads": threads,
        "prefill_tokens_per_s": n_prompt / best_prefill,
        "decode_tokens_per_s": 1.0 / best_decode,
    }


def numpy_matvec(n_bytes):
    """Best GB/s of an f32 matrix-vector product over a matrix of `n_bytes` bytes."""
    k = 4096
    n = max(1, n_bytes // (4 * k))
    w = np.ones((n, k), np.float32)
    x = np.ones(k, np.float32)
    w @ x
    best = 1e9
    for _ in range(10):
        t = time.perf_counter()
        w @ x
        best = min(best, time.perf_counter() - t)
    return {"bytes": int(w.nbytes), "gb_per_s": w.nbytes / best / 1e9}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bytes", type=int, default=0, help="bytes one decode step reads")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    path = Path(args.file)
    out = {}
    log("peers: numpy matvec ...")
    out["numpy_matvec"] = numpy_matvec(args.bytes or path.stat().st_size)
    log("peers: llama.cpp ...")
    out["llama_cpp"] = bench_llama_cpp(path, args.prompt, args.decode, args.threads)
    if not args.skip_transformers:
        log("peers: transformers ...")
        out["transformers"] = bench_transformers(path, args.prompt, args.decode, args.threads)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
