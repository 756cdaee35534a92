#!/usr/bin/env python3
"""Where the demo model's grounded heads look, per question type: for each validation question,
the attention mass that heads 0 and 1 of decoder layers 1 and 2 put, at the position that
predicts the answer, on the places train_vqa.py's grounding term asks for (relevant_cells: the
object or label named, each object of a relation, the counted centres and <s>, <s> when nothing
matches), and the answers given to the existence and relation questions; per count, how the
share on <s> (1 / (n + 1) if the heads spread evenly) and the mass on the counted centres and on
the patches next to them vary from one question to the next, and how many are answered right.
With --places N, also how much of the two objects' places of a relation the grounded heads'
outputs and the decoder's hidden states at the answer position tell: R² of a least-squares linear
map, fit on the first 3/4 of N relation questions of the training split and scored on the rest;
and how many of the held-out relations a fixed comparison of the two differences read from the
last two layers' outputs answers right (what the decoder would answer if it compared what it
holds).

    python scripts/grounding_report.py [--model assets/llava-vqa] [--work target/vqa-train]
        [--split DIR] [--places 1200]

Reads the splits that train_vqa.py generates in its work directory (images and scenes.jsonl), or
with --split any make_vqa output (e.g. `make_vqa --seed 2 --count 1000`); float32 transformers
on the CPU, about 15 s for 300 questions (--places 1200: another 45 s).
"""

import argparse
import collections
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import LlavaForConditionalGeneration

import train_vqa as T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(T.ROOT / "assets" / "llava-vqa"))
    ap.add_argument("--work", default=str(T.ROOT / "target" / "vqa-train"))
    ap.add_argument("--split", default=None,
                    help="a make_vqa output directory to report on (default: WORK/val-seed2)")
    ap.add_argument("--places", type=int, default=0,
                    help="relation questions of the training split for the place fits (0: none)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model_dir = Path(a.model)
    val_dir = Path(a.split) if a.split else Path(a.work) / "val-seed2"
    if not (val_dir / "scenes.jsonl").exists():
        raise SystemExit(f"{val_dir} has no scenes.jsonl: " + (
            "pass a directory that make_vqa wrote" if a.split else
            "run scripts/train_vqa.py first (it generates the splits in its work directory)"))
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    enc = T.Encoder(tok, 576)
    questions = T.read_jsonl(val_dir / "questions.jsonl")
    scenes = {s["image"]: s for s in T.read_jsonl(val_dir / "scenes.jsonl")}
    feats = T.vision_features(model, T.load_pixels([val_dir / q["image"] for q in questions]))
    _, _, lm, head = T.parts(model)
    rows = T.AttentionRows(lm, [1, 2])
    mass = collections.defaultdict(list)
    answers = collections.defaultdict(collections.Counter)
    counts = collections.defaultdict(list)  # n -> per question: right, then per layer and head
    with torch.no_grad():
        for f, q in zip(feats, questions):
            ids = enc.single(q["question"])
            targets, _ = T.relevant_cells(q["question"], scenes[q["image"]])
            image0 = ids.index(enc.image)
            emb, mask, _ = T.embed_batch(model, f[None], [(ids, ids, [])], enc)
            out = lm(inputs_embeds=emb, attention_mask=mask)
            said = tok.decode([head(out.last_hidden_state[0, -1]).argmax().item()])
            answers[q["type"]][f"{q['answer']} -> {said}"] += 1
            where = "<s>" if targets[0] == [T.SINK] else "named"
            shares = [said == q["answer"]]
            for layer in (1, 2):
                probs = rows.rows(layer, 0, [len(ids) - 1], 2)[:, 0]
                for h, cells in enumerate(targets):
                    at = [0 if c == T.SINK else image0 + c for c in cells]
                    mass[(q["type"], where, layer, h)].append(probs[h, at].sum().item())
                    if q["type"] == "count":  # cells: the counted centres, then <s>
                        near = [image0 + c for c in neighbours(cells[:-1])]
                        shares += [probs[h, 0].item(), probs[h, at[:-1]].sum().item(),
                                   probs[h, near].sum().item()]
            if q["type"] == "count":
                counts[len(targets[0]) - 1].append(shares)
    print("| type | target | questions | layer 1 head 0 | layer 1 head 1 | layer 2 head 0 | layer 2 head 1 |")
    print("|---|---|---|---|---|---|---|")
    for t, where in sorted({k[:2] for k in mass}):
        cells = [mass[(t, where, layer, h)] for layer in (1, 2) for h in (0, 1)]
        print(f"| {t} | {where} | {len(cells[0])} | "
              + " | ".join(f"{sum(c) / len(c):.2f}" for c in cells) + " |")
    for t in ("exist", "spatial"):
        print(f"{t}: " + ", ".join(f"{k}: {v}" for k, v in sorted(answers[t].items())))
    print("\nCount questions by the true count: the share on <s> (mean ± sd over the questions; "
          "1 / (n + 1) if spread evenly), the mass on the counted centres and on the patches "
          "next to them (8-neighbourhood), per grounded head\n")
    print("| n | questions | right | 1 / (n + 1) | " + " | ".join(
        f"layer {layer} head {h} <s> | centres | next to them" for layer in (1, 2)
        for h in (0, 1)) + " |")
    print("|---|---|---|---|" + "---|---|---|" * 4)
    for n, rows_n in sorted(counts.items()):
        v = np.array(rows_n)
        print(f"| {n} | {len(v)} | {int(v[:, 0].sum())} | {1 / (n + 1):.3f} | " + " | ".join(
            f"{v[:, k].mean():.2f} ± {v[:, k].std():.2f} | {v[:, k + 1].mean():.2f} | "
            f"{v[:, k + 2].mean():.2f}" for k in range(1, v.shape[1], 3)) + " |")
    if a.places:
        place_fits(model, enc, rows, Path(a.work) / "train-seed1", a.places)


def neighbours(cells):
    """The patches next to any of `cells` (8-neighbourhood on the grid), less `cells` themselves."""
    out = set()
    for c in cells:
        r, col = divmod(c, T.GRID)
        out |= {(r + dr) * T.GRID + col + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                if 0 <= r + dr < T.GRID and 0 <= col + dc < T.GRID}
    return sorted(out - set(cells))


def r2(x, y, fit):
    """R² on rows fit: of the least-squares linear map from x to y fit on rows :fit."""
    x = np.c_[x, np.ones(len(x))]
    w = np.linalg.lstsq(x[:fit], y[:fit], rcond=1e-6)[0]
    err = x[fit:] @ w - y[fit:]
    return 1 - (err ** 2).sum() / ((y[fit:] - y[fit:].mean()) ** 2).sum()


@torch.no_grad()
def place_fits(model, enc, rows, split, n):
    """Per grounded head of layers 1 and 2 (what it reads at the answer position) and per decoder
    layer output there: R² for the first object's x and y, the second's, and their differences."""
    questions = [q for q in T.read_jsonl(split / "questions.jsonl") if q["type"] == "spatial"][:n]
    scenes = {s["image"]: s for s in T.read_jsonl(split / "scenes.jsonl")}
    _, _, lm, _ = T.parts(model)
    xs, ys, horizontal, said = collections.defaultdict(list), [], [], []
    for q in questions:
        f = T.vision_features(model, T.load_pixels([split / q["image"]]))
        ids = enc.single(q["question"])
        emb, mask, _ = T.embed_batch(model, f, [(ids, ids, [])], enc)
        out = lm(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True)
        pos = [len(ids) - 1]
        for layer in (1, 2):
            read = rows.read(layer, 0, pos, 2)[:, 0]
            for h in (0, 1):
                xs[f"layer {layer} head {h} output"].append(read[h].numpy())
        for layer in range(1, len(out.hidden_states)):
            xs[f"layer {layer - 1} output"].append(out.hidden_states[layer][0, pos[0]].numpy())
        targets, _ = T.relevant_cells(q["question"], scenes[q["image"]])
        (ya, xa), (yb, xb) = (T.place(cells).numpy() for cells in targets)
        ys.append([xa, ya, xb, yb, xa - xb, ya - yb])
        horizontal.append("left" in q["question"].split())
        said.append(q["answer"])
    ys, fit = np.array(ys), len(questions) * 3 // 4
    print(f"\nR² of the places in {len(questions)} relation questions (fit on {fit}):\n")
    print("| read from | first x | first y | second x | second y | x difference | y difference |")
    print("|---|---|---|---|---|---|---|")
    for name, x in xs.items():
        print(f"| {name} | " + " | ".join(f"{r2(np.array(x), ys[:, k], fit):.2f}"
                                        for k in range(6)) + " |")
    last = np.concatenate([np.array(xs[f"layer {i} output"]) for i in (1, 2)], 1)
    last = np.c_[last, np.ones(len(last))]
    dx, dy = (last @ np.linalg.lstsq(last[:fit], ys[:fit, k], rcond=1e-6)[0] for k in (4, 5))
    guess = np.where(horizontal, np.where(dx < 0, "left", "right"),
                     np.where(dy < 0, "above", "below"))
    right = (guess == np.array(said))[fit:]
    print(f"\nrelations answered by comparing the differences read from layers 1 and 2: "
          f"{right.mean():.3f} of {len(right)}")


if __name__ == "__main__":
    main()
