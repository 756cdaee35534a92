#!/usr/bin/env python3
"""How much of the visual QA a one-layer attention readout learns from a tower's features: tells
whether the tower or the decoder holds the demo model back.

    python scripts/probe_features.py [--model assets/llava-vqa] [--images 2000] [--steps 1500]
        [--types spatial,exist]

The probe: learned word embeddings; the question's words up to and including its relation word
(left/right/above/below) and those from it on averaged apart, so the query knows which object
comes first; 4 heads of 32 over the 576 LayerNorm'd patch features (no positions: the features
carry their place); an MLP from the heads' outputs and the question to the answer word. Heads 0
and 1 are pulled, as in train_vqa.py, to relevant_cells' places where those are patches. Trained
on the first `--images` images of train_vqa.py's training split (all their questions, single
turns, batches of 32, AdamW 1e-3), scored on its validation split (another seed). About a minute
on 2 cores after the features (30 s per 2,000 images).
"""

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import LlavaForConditionalGeneration

import train_vqa as T

class Probe(torch.nn.Module):
    def __init__(self, vocab, feature, width=64, heads=4, head_dim=32):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.words = torch.nn.Embedding(vocab, width)
        self.norm = torch.nn.LayerNorm(feature)
        self.q = torch.nn.Linear(2 * width, heads * head_dim)
        self.kv = torch.nn.Linear(feature, 2 * heads * head_dim)
        self.out = torch.nn.Sequential(torch.nn.Linear(heads * head_dim + 2 * width, 256),
                                       torch.nn.GELU(), torch.nn.Linear(256, vocab))

    def forward(self, feats, first, second):
        """Answer logits and the attention (batch, heads, patches)."""
        b, n, _ = feats.shape
        question = torch.cat([first, second], -1)
        q = self.q(question).view(b, self.heads, 1, self.head_dim)
        k, v = self.kv(self.norm(feats)).view(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) / self.head_dim ** 0.5).softmax(-1)
        read = (attn @ v).reshape(b, -1)
        return self.out(torch.cat([read, question], -1)), attn[:, :, 0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(T.ROOT / "assets" / "llava-vqa"))
    ap.add_argument("--work", default=str(T.ROOT / "target" / "vqa-train"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--types", default=None, help="question types to train and score (comma list)")
    a = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)
    work = Path(a.work)
    train_dir, val_dir = work / "train-seed1", work / "val-seed2"
    if not (val_dir / "scenes.jsonl").exists() or not (train_dir / "scenes.jsonl").exists():
        raise SystemExit(f"{work} lacks the training or validation split: run scripts/train_vqa.py "
                         "first (it generates both in its work directory)")
    tok = Tokenizer.from_file(str(Path(a.model) / "tokenizer.json"))
    model = LlavaForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    relations = T.Encoder(tok, 576).relations
    types = set(a.types.split(",")) if a.types else None

    def split(folder, images=None):
        scenes = T.read_jsonl(folder / "scenes.jsonl")[:images]
        index = {s["image"]: i for i, s in enumerate(scenes)}
        items = [q for q in T.read_jsonl(folder / "questions.jsonl")
                 if q["image"] in index and (types is None or q["type"] in types)]
        feats = T.vision_features(model, T.load_pixels([folder / s["image"] for s in scenes]))
        return feats, [(index[q["image"]], q, T.relevant_cells(q["question"], scenes[index[q["image"]]])[0])
                       for q in items]

    t0 = time.time()
    train_feats, train = split(train_dir, a.images)
    val_feats, val = split(val_dir)
    T.log(f"features of {len(train_feats)} + {len(val_feats)} images ({time.time() - t0:.0f} s)")

    probe = Probe(tok.get_vocab_size(), train_feats.shape[-1])
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3)

    def batch(feats, items):
        firsts, seconds = [], []
        for _, q, _ in items:
            ids = tok.encode(q["question"], add_special_tokens=False).ids
            r = next((k for k, t in enumerate(ids) if t in relations), None)
            first, second = (ids[:r + 1], ids[r:]) if r is not None else (ids, ids)
            firsts.append(probe.words(torch.tensor(first)).mean(0))
            seconds.append(probe.words(torch.tensor(second)).mean(0))
        target = torch.tensor([tok.token_to_id(q["answer"]) for _, q, _ in items])
        logits, attn = probe(feats[[i for i, _, _ in items]].float(), torch.stack(firsts),
                             torch.stack(seconds))
        looks = [-torch.log(attn[b, h, cells].sum() + 1e-4)
                 for b, (_, _, heads) in enumerate(items) for h, cells in enumerate(heads)
                 if T.SINK not in cells]
        return logits, target, looks

    for step in range(1, a.steps + 1):
        logits, target, looks = batch(train_feats, random.sample(train, 32))
        loss = F.cross_entropy(logits, target) + (torch.stack(looks).mean() if looks else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == a.steps:
            with torch.no_grad():
                logits, target, _ = batch(val_feats, val)
            right = (logits.argmax(-1) == target).tolist()
            per_type = {}
            for ok, (_, q, _) in zip(right, val):
                per_type.setdefault(q["type"], []).append(ok)
            T.log(f"probe step {step}: validation {sum(right) / len(right):.3f} "
                  + " ".join(f"{t} {sum(v) / len(v):.2f}" for t, v in sorted(per_type.items())))


if __name__ == "__main__":
    main()
