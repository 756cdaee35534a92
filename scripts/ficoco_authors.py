#!/usr/bin/env python3
"""FiCoCo as the authors' published code computes it, re-expressed for the audit
(docs/ficoco-audit.md).

Source read: github.com/kawhiiiileo/FiCoCo at commit 8995e93, files
llava/model/multimodal_encoder/{clip_encoder,FiCoCo_V}.py and
llava/model/language_model/{llava_llama.py, .ipynb_checkpoints/FiCoCo_L-checkpoint.py} (the
FiCoCo_L.py beside it does not parse; the checkpoint copy is the one that runs). Nothing here is
copied from it: each function below restates, in this project's terms, what that code does to
one sequence at one layer.

Two readings per site:

- `faithful`: what their code computes, its slips included: V keeps a module-level score
  buffer of 576 grid cells that is never reset (across layers and images) and mixes grid cells
  with sequence indices in the local penalty; V returns the survivors in score order, so [CLS]
  ends up last and later layers read a patch as [CLS]; V's targets are chosen over every column
  (itself, [CLS] and other sources included) and then used as positions in that score-ordered
  list; L takes the first 576 positions of the prompt as the image; L's targets may be other
  sources (their share is lost); L renumbers positions.
- `reading`: their semantics with those slips fixed. This is what ficoco runs as
  `ficoco-v@authors` / `ficoco-l@authors` (src/reduce/method.rs) and what tests/reduce_oracle.rs
  checks the GPU against:

  FiCoCo-V@authors, over the patch tokens P of a sequence of n tokens with [CLS] c, on the
  head-averaged pre-softmax scores L = q k^T / sqrt(d_head) (no softmax):
      r_i = mean over j in P of L[i, j]          (the row: what patch i attends to)
      a_i = L[c, i]
      s_i = 0.65 r_i / |r| - 0.35 a_i / |a|      (|.| the L2 norm over P; highest s leaves)
  then the local penalty as ficoco's (2 x 2 windows, x2 / /2 on present tokens), K shared by
  every source: K = n - 1 - floor(0.998 (n - 1)) (the entries strictly above the 0.998-quantile
  of a row of n distinct values; their code takes the largest such count over the sources), the
  K targets of source i the kept patches of largest L[i, j], alpha_ij = softmax of L[i, .] over
  them, and the self-preserving compress (X_j + sum alpha X_i) / (1 + sum alpha). Survivors keep
  their order.

  FiCoCo-L@authors, over the visual span V (from the token ids) with text T = every prompt token
  after the image, on unmasked head-averaged pre-softmax scores L:
      s_i = 0.6 sum over j in V of L[i, j] - 0.4 mean over k in T of L[i, k]
      C_ij = 0.6 L[i, j] + 0.4 sum over k in T of L[i, k] L[k, j]
  K = |V| - 1 - floor(0.998 (|V| - 1)) shared, the K targets the kept visual tokens of largest
  C_ij, alpha_ij = softmax of C[i, .] over them, and the additive compress X_j + sum alpha X_i
  (no division). Survivors keep their order; positions are renumbered (ficoco:
  --renumber-positions).

Usage (one step on tensors in the format of `examples/reduce`, `attn` holding the pre-softmax
scores the readings take):

    python scripts/ficoco_authors.py step --site v --input IN.safetensors --out OUT.safetensors \
        --drop R --cls 0 --grid 24
    python scripts/ficoco_authors.py step --site l --input IN --out OUT --drop R \
        --visual START:LEN --text START:LEN

`scripts/ficoco_audit.py` runs the demo model in transformers with each reading patched in.
"""

import argparse
import math

import numpy as np
import torch

EPS = 0.998
V_REDUNDANCY, V_CLS = 0.65, 0.35      # their beta = 0.35 multiplies the [CLS] term
L_OWN, L_TEXT = 0.6, 0.4
L_DIRECT, L_INDIRECT = 0.6, 0.4
NORM_FLOOR = 1e-12


def shared_k(n, eps=EPS):
    """Entries strictly above the eps-quantile (linear interpolation) of n distinct values."""
    return n - 1 - math.floor(eps * (n - 1))


def topk_desc(values, k):
    """Positions of the k largest values; ties to the lower position."""
    order = np.lexsort((np.arange(len(values)), -np.asarray(values, dtype=np.float64)))
    return order[:k]


def local_penalty(raw, grid_pos, grid, window=2, coef=2.0):
    """ficoco's penalty (docs/method.md): in each window the largest present score grows."""
    s = raw.copy()
    best = {}
    for t in range(len(raw)):
        key = (int(grid_pos[t]) // grid // window, int(grid_pos[t]) % grid // window)
        if key not in best or raw[t] > raw[best[key]]:
            best[key] = t
    for t in best.values():
        s[t] = raw[t] * coef if raw[t] > 0 else (raw[t] / coef if raw[t] < 0 else raw[t])
    return s


def softmax_over(row, cols):
    v = row[cols] - row[cols].max()
    e = np.exp(v)
    return e / e.sum()


# ---------------------------------------------------------------------------------- reading

def reading_v(x, scores, cls, grid_pos, grid, drop, penalty=True, axis="row", normalise=True,
              weights=(V_REDUNDANCY, V_CLS)):
    """FiCoCo-V@authors on one sequence. x [n, d], scores [n, n] pre-softmax (row = query),
    grid_pos [n] (the grid cell of each token, -1 for [CLS]). Returns (hidden, kept, s).
    `axis="column"`, `normalise=False` and `weights=(0.35, 0.65)` each put back one of
    ficoco's choices (the audit measures them one at a time)."""
    x = np.asarray(x, dtype=np.float64)
    L = np.asarray(scores, dtype=np.float64)
    n = x.shape[0]
    P = np.array([i for i in range(n) if i != cls])
    r = L[np.ix_(P, P)].mean(axis=1 if axis == "row" else 0)
    a = L[cls, P]
    if normalise:
        r, a = r / max(np.linalg.norm(r), NORM_FLOOR), a / max(np.linalg.norm(a), NORM_FLOOR)
    s = weights[0] * r - weights[1] * a
    if penalty:
        s = local_penalty(s, grid_pos[P], grid)
    src = np.zeros(len(P), dtype=bool)
    src[topk_desc(s, drop)] = True
    S, T = P[src], P[~src]
    k = min(shared_k(n), len(T))
    out = x.copy()
    num = np.zeros_like(x)
    den = np.zeros(n)
    for i in S:
        chosen = T[topk_desc(L[i, T], k)]
        alpha = softmax_over(L[i], chosen)
        for j, w in zip(chosen, alpha):
            num[j] += w * x[i]
            den[j] += w
    hit = den > 0
    out[hit] = (x[hit] + num[hit]) / (1.0 + den[hit, None])
    kept = np.array(sorted(set(range(n)) - set(S.tolist())))
    return out[kept].astype(np.float32), kept, s


def reading_l(x, scores, vis, text, drop, axis="row", divide=False):
    """FiCoCo-L@authors on one sequence: vis = (start, len) of the image, text = (start, len) of
    the tokens after it. Returns (hidden, kept, s). `axis="column"` (the text's attention to
    each visual token, as the paper) and `divide=True` (the self-preserving compress) each put
    back one of ficoco's choices."""
    x = np.asarray(x, dtype=np.float64)
    L = np.asarray(scores, dtype=np.float64)
    n = x.shape[0]
    V = np.arange(vis[0], vis[0] + vis[1])
    Tx = np.arange(text[0], text[0] + text[1])
    if axis == "row":
        s = L_OWN * L[np.ix_(V, V)].sum(axis=1) - L_TEXT * L[np.ix_(V, Tx)].mean(axis=1)
    else:
        s = L_OWN * L[np.ix_(V, V)].sum(axis=0) - L_TEXT * L[np.ix_(Tx, V)].mean(axis=0)
    src = np.zeros(len(V), dtype=bool)
    src[topk_desc(s, drop)] = True
    S, T = V[src], V[~src]
    k = min(shared_k(len(V)), len(T))
    out = x.copy()
    den = np.ones(n)
    for i in S:
        c = L_DIRECT * L[i] + L_INDIRECT * (L[i, Tx] @ L[Tx])
        chosen = T[topk_desc(c[T], k)]
        alpha = softmax_over(c, chosen)
        for j, w in zip(chosen, alpha):
            out[j] += w * x[i]
            den[j] += w
    if divide:
        out /= den[:, None]
    kept = np.array(sorted(set(range(n)) - set(S.tolist())))
    return out[kept].astype(np.float32), kept, s


# --------------------------------------------------------------------------------- faithful

class FaithfulV:
    """FiCoCo-V as their code runs it, with its module-level buffer (one object = one process
    of theirs: create it once and keep it across images to reproduce them)."""

    def __init__(self, cells=576):
        self.buffer = torch.full((1, cells), 1e9)

    def step(self, x, scores, drop):
        """x [n, d] with [CLS] at 0, scores [n, n] pre-softmax. Returns (hidden, order): order
        lists the input row of each output row (score order: [CLS] last)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        att = torch.as_tensor(scores, dtype=torch.float64)[None]
        n = x.shape[0]
        cls_term = torch.nn.functional.normalize(att[:, 0, 1:], p=2, dim=-1)
        row_term = torch.nn.functional.normalize(att[:, 1:, 1:].mean(dim=-1), p=2, dim=-1)
        dst = V_CLS * cls_term - V_REDUNDANCY * row_term      # low dst leaves
        count = dst.shape[1]
        buf = self.buffer.to(torch.float64)
        live = (buf != float("inf")).nonzero(as_tuple=True)[1]
        m = min(live.numel(), count)
        buf[0, live[:m]] = dst[0, :m]
        # The lowest buffered score of each 2 x 2 window of the 24 x 24 buffer grid.
        side = int(math.isqrt(buf.shape[1]))
        h = side // 2
        win = buf.view(1, h, 2, h, 2).permute(0, 1, 3, 2, 4).reshape(1, h, h, 4)
        arg = win.min(dim=-1).indices                                # [1, h, h]
        wy, wx = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
        cells = ((2 * wy + arg[0] // 2) * side + 2 * wx + arg[0] % 2).flatten()
        picked = cells[cells < count]                               # used as sequence indices
        dst[0, picked] = torch.where(dst[0, picked] > 0, dst[0, picked] / 2, dst[0, picked] * 2)
        buf[0, picked] = float("inf")
        self.buffer = buf.to(self.buffer.dtype)
        order = torch.cat([torch.full((1,), float("inf"), dtype=dst.dtype), dst[0]]).argsort()
        merge, remain = order[:drop], order[drop:]
        # Targets: K from the strict 0.998-quantile of each source's full row, then the top K of
        # softmax(row) over every column.
        rows = att[0, merge]
        tau = torch.quantile(rows, EPS, dim=-1, keepdim=True)
        k = int((rows > tau).sum(dim=-1).max())
        prob = torch.softmax(att[0], dim=-1)
        top_v, top_i = prob.topk(k, dim=-1)
        targets = top_i[merge]
        weights = (top_v / top_v.sum(dim=-1, keepdim=True))[merge]
        kept = n - drop
        out = x[remain].clone()
        size = torch.ones(kept, 1, dtype=x.dtype)
        flat = targets.reshape(-1)
        flat = torch.where(flat >= kept, flat - drop, flat)        # positions in `out`
        out.index_add_(0, flat, (x[merge][:, None, :] * weights[..., None]).reshape(-1, x.shape[1]))
        size.index_add_(0, flat, weights.reshape(-1, 1))
        return (out / size).numpy().astype(np.float32), remain.numpy()


def faithful_l(x, scores, v_tokens, drop):
    """FiCoCo-L as their code runs it: the image is taken to be positions [0, v_tokens). x [n, d],
    scores [n, n] unmasked pre-softmax. Returns (hidden, order)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    att = torch.as_tensor(scores, dtype=torch.float64)
    v = v_tokens
    s = L_OWN * att[:v, :v].sum(dim=-1) - L_TEXT * att[:v, v:].mean(dim=-1)
    s[0] = -float("inf")                                   # their class_token flag
    merge = s.topk(drop).indices
    keep = torch.ones(v, dtype=torch.bool)
    keep[merge] = False
    remain = torch.arange(v)[keep]
    con = L_DIRECT * att[:v, :v] + L_INDIRECT * (att[:v, v:] @ att[v:, :v])
    con.fill_diagonal_(-float("inf"))
    rows = con[merge]
    tau = torch.quantile(rows, EPS, dim=-1, keepdim=True)
    k = int((rows > tau).sum(dim=-1).max())
    top_v, top_i = torch.softmax(con, dim=-1).topk(k, dim=-1)
    weights = (top_v / top_v.sum(dim=-1, keepdim=True))[merge]
    vis = x[:v].clone()
    vis.index_add_(0, top_i[merge].reshape(-1),
                   (x[merge][:, None, :] * weights[..., None]).reshape(-1, x.shape[1]))
    out = torch.cat([vis[remain], x[v:]])
    order = torch.cat([remain, torch.arange(v, x.shape[0])])
    return out.numpy().astype(np.float32), order.numpy()


def _span(text):
    a, b = text.split(":")
    return int(a), int(b)


def main():
    from safetensors.numpy import load_file, save_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("step", help="one FiCoCo@authors step (the reading) on a tensor file")
    st.add_argument("--site", choices=("v", "l"), required=True)
    st.add_argument("--input", required=True)
    st.add_argument("--out", required=True)
    st.add_argument("--drop", type=int, required=True)
    st.add_argument("--cls", type=int)
    st.add_argument("--grid", type=int)
    st.add_argument("--visual")
    st.add_argument("--text")
    a = ap.parse_args()
    t = load_file(a.input)
    if a.site == "v":
        hidden, kept, s = reading_v(t["hidden"], t["attn"], a.cls, t["positions"], a.grid, a.drop)
    else:
        hidden, kept, s = reading_l(t["hidden"], t["attn"], _span(a.visual), _span(a.text),
                                    a.drop)
    save_file({"hidden": hidden, "kept": kept.astype(np.int64),
               "scores": np.asarray(s, dtype=np.float32)}, a.out)
    print(f"ficoco-{a.site}@authors: {t['hidden'].shape[0]} -> {hidden.shape[0]} tokens, wrote {a.out}")


if __name__ == "__main__":
    main()
