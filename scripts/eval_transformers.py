#!/usr/bin/env python3
"""The demo model's answers on a make_vqa set from HF transformers (float32 on the CPU, the weights
as saved), for the cross-check against `examples/eval`.

    python scripts/eval_transformers.py [--model assets/llava-vqa] [--set assets/vqa-test/questions.jsonl]
        [--out assets/llava-vqa/transformers_eval.json]

Each question goes through LlavaProcessor's pieces (CLIPImageProcessor from the model's
preprocessor_config.json, the fast tokenizer) with the llava-1.5 prompt, then greedy `generate`
(up to 8 new tokens, stopping at </s>). Writes accuracy overall and per type and every answer.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "assets" / "llava-vqa"))
    ap.add_argument("--set", default=str(ROOT / "assets" / "vqa-test" / "questions.jsonl"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    model_dir, set_path = Path(a.model), Path(a.set)
    out = Path(a.out) if a.out else model_dir / "transformers_eval.json"
    torch.set_num_threads(2)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    proc = CLIPImageProcessor.from_pretrained(model_dir)
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    image_id = model.config.image_token_id
    visual = model.config.image_seq_length
    items = [json.loads(line) for line in set_path.read_text().splitlines() if line.strip()]
    items = items[: a.limit] if a.limit else items
    answers, right, per_type = [], 0, {}
    t0 = time.time()
    for i, q in enumerate(items):
        image = Image.open(set_path.parent / q["image"]).convert("RGB")
        pixels = proc(images=image, return_tensors="pt")["pixel_values"]
        text = f"USER: {'<image>' * visual}\n{q['question']} ASSISTANT:"
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert int((ids == image_id).sum()) == visual
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values=pixels, max_new_tokens=8, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        said = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip().lower()
        ok = said == q["answer"].lower()
        right += ok
        t = per_type.setdefault(q["type"], [0, 0])
        t[0] += ok
        t[1] += 1
        answers.append(said)
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(items)}: {right / (i + 1):.3f} ({time.time() - t0:.0f} s)", flush=True)
    record = {
        "model": str(model_dir.relative_to(ROOT)) if model_dir.is_relative_to(ROOT) else str(model_dir),
        "set": str(set_path.relative_to(ROOT)) if set_path.is_relative_to(ROOT) else str(set_path),
        "accuracy": right / len(items),
        "per_type": {k: v[0] / v[1] for k, v in sorted(per_type.items())},
        "count": len(items),
        "answers": answers,
        "generator": "scripts/eval_transformers.py",
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"accuracy {record['accuracy']:.4f} over {len(items)}; wrote {out}")


if __name__ == "__main__":
    main()
