#!/usr/bin/env python3
"""Oracle outputs of HF transformers (float32, CPU) on the real GGUF files that
scripts/fetch_real_weights.sh puts in weights/, for tests/gguf_real.rs.

transformers reads a GGUF with `from_pretrained(dir, gguf_file=...)`, dequantises every tensor
to float32 with the gguf package and builds its tokenizer from the file's metadata. For each
file and each of three chat prompts this records: the prompt rendered by the file's chat
template and its token ids, the first 32 greedy tokens (a hand-written greedy loop over the KV
cache, no generate() pad-mask surprises), and the last prompt position's logits at 4096 token ids
(the 2048 largest and 2048 others drawn at random; the full vector would be megabytes).

    .venv/bin/python scripts/make_gguf_oracle.py [--weights weights] [--out tests/fixtures/gguf]

Writes <out>/<name>.json (prompts, ids, tokens) and <out>/<name>.safetensors (logit ids and values).
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

FILES = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}
PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a hash map is in one sentence.",
]
NEW_TOKENS = 32
LOGIT_IDS = 4096


@torch.no_grad()
def greedy(model, ids):
    out = model(torch.tensor([ids]), use_cache=True)
    logits = out.logits[0, -1].float().numpy().copy()
    past = out.past_key_values
    tokens = []
    nxt = int(np.argmax(logits))
    for _ in range(NEW_TOKENS):
        tokens.append(nxt)
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
    return logits, tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="weights")
    ap.add_argument("--out", default="tests/fixtures/gguf")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, file in FILES.items():
        path = Path(args.weights) / file
        if not path.exists():
            sys.exit(f"{path} is missing: run scripts/fetch_real_weights.sh first")
        print(f"{name}: loading {path} ...", flush=True)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        ).eval()
        cases, tensors = [], {}
        for i, prompt in enumerate(PROMPTS):
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tok(text, add_special_tokens=True)["input_ids"]
            logits, tokens = greedy(model, ids)
            top = np.argsort(-logits)[: LOGIT_IDS // 2]
            rest = np.setdiff1d(np.arange(logits.size), top)
            pick = np.concatenate([top, rng.choice(rest, LOGIT_IDS - top.size, replace=False)])
            tensors[f"p{i}.logit_ids"] = pick.astype(np.int32)
            tensors[f"p{i}.logits"] = logits[pick].astype(np.float32)
            cases.append({"prompt": prompt, "text": text, "ids": ids, "tokens": tokens})
            print(f"  {prompt!r}: {len(ids)} ids -> {tok.decode(tokens)!r}", flush=True)
        meta = {
            "file": file,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "vocab": int(model.config.vocab_size),
            "cases": cases,
        }
        (out / f"{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        save_file(tensors, str(out / f"{name}.safetensors"))


if __name__ == "__main__":
    main()
