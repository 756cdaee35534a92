#!/usr/bin/env python3
"""The FiCoCo audit end to end: the demo model in PyTorch (its transformers modules, the forward
written out so that a reduction can run after any layer's attention) answering make_vqa
questions with FiCoCo-V and FiCoCo-L in each reading:

- `ficoco`:   this project's reading (docs/method.md), from scripts/reduce_reference.py;
- `authors`:  the authors' semantics with their slips fixed (scripts/ficoco_authors.py), what
              ficoco runs as `ficoco-v@authors` / `ficoco-l@authors`;
- `faithful`: the authors' code as it runs, slips included (one FiCoCo-V buffer for the whole
              run, as their module-level one).

Layers and per-layer counts are ficoco's planner's (FiCoCo-V after the attention of layers 12 of
24 scaled to the tower up to the layer the projector reads; FiCoCo-L from layer 4 of 32 scaled,
the authors' from layer 6; the same number removed at each layer), so that only the step itself
differs. The answer
is decoded greedily until </s> (at most 8 tokens) from each layer's own KV cache, as ficoco does,
and must equal the expected one-word answer (examples/eval's rule).

    python scripts/ficoco_audit.py [--model assets/llava-vqa] [--limit 100] [--budgets 64,192]
        [--out docs/ficoco-audit.json] [--dump DIR]

`--dump DIR` also writes, for the first question, the tensors each site's first reducing step
receives (hidden states, head-averaged softmax probabilities and pre-softmax scores, grid or
RoPE positions) in the format of `examples/reduce`: the fixtures of tests/reduce_oracle.rs.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, PreTrainedTokenizerFast
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import ficoco_authors as authors  # noqa: E402
import reduce_reference as ours  # noqa: E402

READINGS = ("ficoco", "authors", "faithful")
# The authors' reading with one of ficoco's choices put back (scripts/ficoco_authors.py).
VARIANTS = {
    "v": {"authors-probs": {}, "authors-column": {"axis": "column"},
          "authors-unnormalised": {"normalise": False},
          "authors-paper-weights": {"weights": (0.35, 0.65)}},
    "l": {"authors-probs": {}, "authors-column": {"axis": "column"},
          "authors-divide": {"divide": True}},
}


def scaled(layer, paper_depth, depth):
    return max((layer * depth + paper_depth // 2) // paper_depth, 1)


def even(removed, sites):
    each, extra = divmod(removed, sites)
    return [each + (s < extra) for s in range(sites)]


def heads(x, n_heads):
    n = x.shape[0]
    return x.view(n, n_heads, -1).transpose(0, 1)


class Run:
    """One reading of FiCoCo-V or FiCoCo-L at one budget over the question set."""

    def __init__(self, model, site, reading, keep):
        self.model, self.site, self.reading, self.keep = model, site, reading, keep
        vc, tc = model.config.vision_config, model.config.text_config
        self.feature = vc.num_hidden_layers + model.config.vision_feature_layer  # -2 -> L-2
        self.grid = vc.image_size // vc.patch_size
        removed = self.grid * self.grid - keep
        if site == "v":
            start = min(scaled(12, 24, vc.num_hidden_layers), self.feature)
            layers = list(range(start, self.feature + 1))
        else:
            # The planner's "from layer l" is the first layer that runs on fewer tokens: the
            # reduction follows the attention of the layer before. The authors reduce after
            # the attention of every layer past 4 (the first shorter layer is 6).
            depth = tc.num_hidden_layers
            first = scaled(4 if reading == "ficoco" else 6, 32, depth)
            layers = list(range(min(first, depth - 1) - 1, depth - 1))
        self.drops = dict(zip(layers, even(removed, len(layers))))
        self.faithful_v = authors.FaithfulV()
        self.dumped = None

    # ------------------------------------------------------------------------------- vision
    def vision(self, pixels, dump=None):
        tower = self.model.model.vision_tower
        h = tower.pre_layrnorm(tower.embeddings(pixels))[0]
        n = h.shape[0]
        pos = np.concatenate([[-1], np.arange(n - 1)]).astype(np.int32)
        for li, layer in enumerate(tower.encoder.layers[: self.feature + 1]):
            at = layer.self_attn
            a = layer.layer_norm1(h)
            q, k, v = (heads(f(a), at.num_heads) for f in (at.q_proj, at.k_proj, at.v_proj))
            logits = q @ k.transpose(1, 2) * at.scale
            probs = torch.softmax(logits, dim=-1)
            h = h + at.out_proj((probs @ v).transpose(0, 1).reshape(h.shape[0], -1))
            drop = self.drops.get(li, 0) if self.site == "v" else 0
            if drop:
                maps = (probs.mean(0).numpy(), logits.mean(0).numpy())
                if dump is not None and self.dumped is None:
                    self.dumped = ("v", li, h.numpy().copy(), maps, pos.copy(), drop)
                h, pos = self.reduce_v(h.numpy(), maps, pos, drop)
                h = torch.from_numpy(h)
            h = h + layer.mlp(layer.layer_norm2(h))
        # "default" strategy: drop the first row ([CLS]; a patch in the faithful reading,
        # which moved [CLS] to the end).
        return h[1:]

    def reduce_v(self, x, maps, pos, drop):
        probs, logits = maps
        if self.reading == "ficoco":
            st = ours.reduce("ficoco-v", x, probs, pos, drop, cls=0, grid=self.grid)
            return st.hidden, pos[st.kept]
        if self.reading.startswith("authors"):
            m = probs if self.reading == "authors-probs" else logits
            opts = VARIANTS["v"].get(self.reading, {})
            hidden, kept, _ = authors.reading_v(x, m, 0, pos, self.grid, drop, **opts)
            return hidden, pos[kept]
        hidden, order = self.faithful_v.step(x, logits, drop)
        return hidden, pos[order]

    # ---------------------------------------------------------------------------------- LLM
    def answer(self, ids, image_id, visual, eos, dump=None, max_new=8):
        """Greedy tokens until `eos`; each layer keeps the K/V of the tokens it ran on."""
        lm = self.model.model.language_model
        emb = lm.embed_tokens(ids)[0]
        at = int((ids[0] == image_id).nonzero()[0])
        n_img = int((ids[0] == image_id).sum())
        h = torch.cat([emb[:at], visual, emb[at + n_img:]])
        n = h.shape[0]
        vis = [at, visual.shape[0]]
        text = [vis[0] + vis[1], n - vis[0] - vis[1]]
        positions = torch.arange(n)
        prompt_len = n
        cache = []
        for li, layer in enumerate(lm.layers):
            sa = layer.self_attn
            a = layer.input_layernorm(h)
            hd = sa.head_dim
            q = sa.q_proj(a).view(n, -1, hd).transpose(0, 1)[None]
            k = sa.k_proj(a).view(n, -1, hd).transpose(0, 1)[None]
            v = sa.v_proj(a).view(n, -1, hd).transpose(0, 1)[None]
            cos, sin = lm.rotary_emb(v, positions[None])
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1)[0], v.repeat_interleave(rep, 1)[0]
            cache.append([k, v])
            logits = q[0] @ k.transpose(1, 2) * sa.scaling
            mask = torch.full((n, n), -float("inf")).triu(1)
            probs = torch.softmax(logits + mask, dim=-1)
            h = h + sa.o_proj((probs @ v).transpose(0, 1).reshape(n, -1))
            drop = self.drops.get(li, 0) if self.site == "l" else 0
            if drop:
                maps = (probs.mean(0).numpy(), logits.mean(0).numpy())
                if dump is not None and self.dumped is None:
                    self.dumped = ("l", li, h.numpy().copy(), maps,
                                   positions.numpy().astype(np.int32), drop, list(vis), list(text))
                h, kept = self.reduce_l(h.numpy(), maps, vis, text, drop, li)
                h = torch.from_numpy(h)
                n = h.shape[0]
                vis[1] -= drop
                text[0] -= drop
                positions = positions[kept] if self.reading == "ficoco" else torch.arange(n)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        tokens = [int(self.model.lm_head(lm.norm(h[-1:]))[0].argmax())]
        renumbered = self.reading != "ficoco" and self.site == "l"
        while tokens[-1] != eos and len(tokens) < max_new:
            h = lm.embed_tokens(torch.tensor([tokens[-1]]))
            for li, layer in enumerate(lm.layers):
                sa = layer.self_attn
                k_c, v_c = cache[li]
                pos = k_c.shape[1] if renumbered else prompt_len + len(tokens) - 1
                a = layer.input_layernorm(h)
                hd = sa.head_dim
                q = sa.q_proj(a).view(1, -1, hd).transpose(0, 1)[None]
                k = sa.k_proj(a).view(1, -1, hd).transpose(0, 1)[None]
                v = sa.v_proj(a).view(1, -1, hd).transpose(0, 1)[None]
                cos, sin = lm.rotary_emb(v, torch.tensor([[pos]]))
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                rep = q.shape[1] // k.shape[1]
                k_c = torch.cat([k_c, k.repeat_interleave(rep, 1)[0]], dim=1)
                v_c = torch.cat([v_c, v.repeat_interleave(rep, 1)[0]], dim=1)
                cache[li] = [k_c, v_c]
                probs = torch.softmax(q[0] @ k_c.transpose(1, 2) * sa.scaling, dim=-1)
                h = h + sa.o_proj((probs @ v_c).transpose(0, 1).reshape(1, -1))
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            tokens.append(int(self.model.lm_head(lm.norm(h))[0].argmax()))
        return [t for t in tokens if t != eos]

    def reduce_l(self, x, maps, vis, text, drop, layer):
        probs, logits = maps
        if self.reading == "ficoco":
            st = ours.reduce("ficoco-l", x, probs, np.zeros(x.shape[0], np.int32), drop,
                             visual=tuple(vis), text=tuple(text))
            return st.hidden, torch.from_numpy(st.kept)
        if self.reading.startswith("authors"):
            m = probs if self.reading == "authors-probs" else logits
            opts = VARIANTS["l"].get(self.reading, {})
            hidden, kept, _ = authors.reading_l(x, m, vis, text, drop, **opts)
            return hidden, torch.from_numpy(kept)
        # Their image is positions [0, 576 - removed so far).
        v_tokens = self.grid * self.grid - sum(d for li, d in self.drops.items() if li < layer)
        hidden, order = authors.faithful_l(x, logits, v_tokens, drop)
        return hidden, torch.from_numpy(order)


def save_dump(run, out_dir):
    from safetensors.numpy import save_file

    kind, layer, hidden, (probs, logits), pos, drop, *spans = run.dumped
    name = f"audit_{kind}"
    for map_name, m in (("probs", probs), ("scores", logits)):
        save_file({"hidden": hidden.astype(np.float32), "attn": m.astype(np.float32),
                   "positions": pos.astype(np.int32)}, out_dir / f"{name}_{map_name}.safetensors")
    meta = {"site": kind, "layer": layer, "drop": drop, "n": int(hidden.shape[0])}
    if spans:
        meta["visual"], meta["text"] = spans
    return name, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "assets" / "llava-vqa"))
    ap.add_argument("--set", default=str(ROOT / "assets" / "vqa-test" / "questions.jsonl"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--budgets", default="64")
    ap.add_argument("--readings", default=",".join(READINGS),
                    help="of " + ", ".join(READINGS) + " and the variants " + ", ".join(
                        sorted(set(VARIANTS["v"]) | set(VARIANTS["l"]))))
    ap.add_argument("--sites", default="v,l")
    ap.add_argument("--out", default=None)
    ap.add_argument("--dump", default=None, help="directory for the first question's step inputs")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = LlavaForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    proc = CLIPImageProcessor.from_pretrained(a.model)
    tok = PreTrainedTokenizerFast.from_pretrained(a.model)
    image_id = model.config.image_token_id
    set_path = Path(a.set)
    items = [json.loads(line) for line in set_path.read_text().splitlines() if line.strip()]
    items = items[: a.limit]
    readings = {s: [r for r in a.readings.split(",") if r in READINGS or r in VARIANTS[s]]
                for s in ("v", "l")}
    runs = [("none", None, None)] + [
        (f"{site}:{reading}:{keep}", site, (reading, int(keep)))
        for site in a.sites.split(",") for reading in readings[site]
        for keep in a.budgets.split(",")]
    results = {}
    dumps = {}
    t0 = time.time()
    for label, site, spec in runs:
        run = Run(model, site or "v", spec[0] if spec else "ficoco", spec[1] if spec else 576)
        if site is None:
            run.drops = {}
        right, per_type, errors, answers = 0, {}, [], []
        for qi, q in enumerate(items):
            image = Image.open(set_path.parent / q["image"]).convert("RGB")
            pixels = proc(images=image, return_tensors="pt")["pixel_values"]
            prompt = f"USER: {'<image>' * model.config.image_seq_length}\n{q['question']} ASSISTANT:"
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            want_dump = a.dump is not None and qi == 0 and spec and spec[0] == "ficoco"
            try:
                with torch.no_grad():
                    visual = model.model.multi_modal_projector(run.vision(pixels, want_dump or None))
                    said = tok.decode(run.answer(ids, image_id, visual, tok.eos_token_id,
                                                 want_dump or None))
            except RuntimeError as e:
                # Their index arithmetic fails when a layer removes more tokens than it keeps.
                errors.append(str(e).splitlines()[0])
                said = ""
            ok = said.strip().lower() == q["answer"].lower()
            answers.append(said.strip().lower())
            right += ok
            t = per_type.setdefault(q["type"], [0, 0])
            t[0] += ok
            t[1] += 1
            if want_dump and run.dumped and f"audit_{run.dumped[0]}" not in dumps:
                out_dir = Path(a.dump)
                out_dir.mkdir(parents=True, exist_ok=True)
                name, meta = save_dump(run, out_dir)
                dumps[name] = meta
        results[label] = {"right": right, "of": len(items),
                          "per_type": {k: v[0] for k, v in sorted(per_type.items())},
                          "drops": run.drops, "errors": len(errors), "answers": answers}
        if errors:
            results[label]["error"] = errors[0]
        print(f"{label:>20}: {right}/{len(items)} {results[label]['per_type']} "
              f"{'errors ' + str(len(errors)) + ' ' if errors else ''}({time.time() - t0:.0f} s)", flush=True)
    record = {"model": a.model, "set": a.set, "limit": a.limit, "results": results,
              "dumps": dumps, "generator": "scripts/ficoco_audit.py"}
    if a.out:
        Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    if dumps:
        (Path(a.dump) / "audit_dumps.json").write_text(json.dumps(dumps, indent=1) + "\n")


if __name__ == "__main__":
    main()
