#!/usr/bin/env python3
"""The transformers anchor for examples/bench.rs --preset P --peers: HF transformers' LLaVA
(PyTorch, float32, CPU) with random weights of the preset's shapes, on the same number of
threads. Times one image plus the prompt through vision tower, projector and LLM prefill (best
of 2) and the decode steps after it; also numpy's f32 mat-vec bandwidth over the byte counts of
the decoder's weight matrices (the memory roof of a decode mat-vec).

    .venv/bin/python scripts/bench_llava_transformers.py --config 'JSON' [--text-tokens 60]
        [--decode 8] [--threads 2] [--matvec-bytes N,N,...]

--config is the preset's llava-hf config.json (examples/bench.rs passes it). Prints one JSON
object: {"transformers": {"vision_prefill_ms", "decode_ms_per_token", ...}, "numpy_matvec": [...]}.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gguf_peers import numpy_matvec, time_prefill_decode  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench(cfg, text_tokens, n_decode, threads):
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vision = dict(cfg["vision_config"], model_type="clip_vision_model")
    text = dict(cfg["text_config"], model_type="llama")
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=cfg["image_token_index"],
        vision_feature_layer=cfg["vision_feature_layer"],
        vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
    )
    log("transformers: building random weights ...")
    model = LlavaForConditionalGeneration(config).float().eval()
    side = vision["image_size"] // vision["patch_size"]
    visual = side * side  # the "default" strategy drops the class token
    image = cfg["image_token_index"]
    vocab = text["vocab_size"]
    words = [int(100 + (i * 7919) % (min(vocab, 30000) - 200)) for i in range(text_tokens)]
    ids = torch.tensor([[1] + [image] * visual + words[1:]])
    pixels = torch.randn(1, 3, vision["image_size"], vision["image_size"])
    best_prefill, best_decode = time_prefill_decode(
        model, n_decode, input_ids=ids, pixel_values=pixels
    )
    return {
        "version": __import__("transformers").__version__,
        "dtype": "float32",
        "threads": threads,
        "prompt_tokens": int(ids.shape[1]),
        "vision_prefill_ms": best_prefill * 1e3,
        "decode_ms_per_token": best_decode * 1e3,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="the preset's llava-hf config.json")
    ap.add_argument("--text-tokens", type=int, default=60)
    ap.add_argument("--decode", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--matvec-bytes", default="", help="comma-separated byte counts")
    args = ap.parse_args()
    out = {"numpy_matvec": []}
    for n in filter(None, args.matvec_bytes.split(",")):
        log(f"numpy matvec over {n} bytes ...")
        out["numpy_matvec"].append(numpy_matvec(int(n)))
    out["transformers"] = bench(json.loads(args.config), args.text_tokens, args.decode, args.threads)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
