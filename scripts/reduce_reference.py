#!/usr/bin/env python3
"""Plain-numpy reference ("oracle") of ONE visual-token reduction step per method.

Written from docs/method.md (FiCoCo as this project implements it) and the
papers' descriptions of ToMe, EViT, FastV, PyramidDrop, SparseVLM, LLaVA-PruMerge and VisionZip.
It mirrors the crate's tensor-level runner

    cargo run --example reduce -- --method M --drop R --input IN.safetensors --out OUT.safetensors
        [--cls I] [--grid SIDE] [--visual START:LEN --text START:LEN]

and can be run the same way (`python scripts/reduce_reference.py --method ... [--opt key=value]`).
Inputs: `hidden` f32 [N, D]; `attn` f32 [N, N] (head-averaged softmax probabilities, row = query,
column = key, causal for LLM maps); `positions` i32 [N] (original grid index, -1 for [CLS] and
non-image tokens); optional `keys` f32 [N, Dk]. Outputs: `hidden` f32 [N-R, D] and `kept` i64
[N-R] (input index of each output token, -1 for a new token). Methods: ficoco-v, ficoco-l, tome,
evit, fastv, pdrop, sparsevlm, prumerge, visionzip, random, topk-cls, pool, none. FiCoCo-VL is
ficoco-v in the encoder followed by ficoco-l in the LLM: two steps, not a method of its own here.

Decisions
---------
General
G1. Math is float64 on the float32 inputs; outputs are cast to float32. A = attn, A[query, key].
G2. Candidates P = the visual span (all N tokens if no span is given) minus [CLS], in ascending
    input order. Every other token passes through unchanged. R is the net number of tokens
    removed: the output always has N - R tokens.
G3. Output order: surviving input tokens with index < span end (visual start + len, or N) in input
    order, then the new tokens (kept = -1) in the order the method defines, then the surviving
    tokens at or after the span end.
G4. topk(v, k) = the first k of a stable sort by descending v; equal values: lower input index
    first. It serves both "keep the k highest" and "discard the k highest".
G5. Metric M = keys if given, else hidden. cos(u, v) = (u / max(|u|, 1e-12)) . (v / max(|v|, 1e-12)).
G6. colmean_i = (1/N) * sum of A[j, i] over all N rows (N = input length; causal zeros included).
G7. Merges read the pre-step hidden states of the sources (all updates are simultaneous).
FiCoCo (V and L)
F1. ficoco-v with [CLS] c: s_i = lam * colmean_i - (1 - lam) * A[c, i], lam = 0.35. Without --cls:
    A[c, i] is replaced by a_i = -cos(mu, M_i), mu = mean of M over P, so
    s_i = lam * colmean_i + (1 - lam) * cos(mu, M_i).
F2. Local penalty (ficoco-v only, needs --grid G): candidate i lies in window
    (pos_i // G // w, pos_i % G // w), w = 2. In each window that holds candidates, the one with the
    largest raw score (ties: lowest input index) gets s * coef if s > 0, s / coef if s < 0, and is
    unchanged if s == 0; coef = 2. Only present candidates count (a lone token is its window's
    maximum; border windows of an odd grid are partial). One pass over the raw scores.
F3. ficoco-l over the visual span V with M text tokens: s_i = beta * (1/|V|) * sum_{j in V} A[j, i]
    - (1 - beta) * (1/M) * sum_{k in text} A[k, i], beta = 0.6. No local penalty.
F4. Filter: S = topk(s over P, R) (highest score = most redundant = discarded); T = P minus S.
    [CLS] and non-candidates are never sources or targets.
F5. Correlate: ficoco-v C[i, j] = A[i, j]. ficoco-l C[i, j] = gamma * (A[i, j] + A[j, i])
    + (1 - gamma) * (1/M) * sum_k A[k, i] * A[k, j], gamma = 0.6. "No direct" sets gamma = 0, "no
    indirect" sets gamma = 1 (scale does not change J or alpha).
F6. Adaptive K: v = C[i, T] sorted ascending, n = |T|; p = eps * (n - 1); lo = floor(p);
    hi = min(lo + 1, n - 1); w = p - lo; tau = min(v[lo] + w * (v[hi] - v[lo]), v[hi]);
    J_i = {j in T : C[i, j] >= tau}, eps = 0.998. The f32 product eps * (n - 1) has the same floor
    and the same integrality as the f64 one for every n <= 20000. So |J_i| = 1 for n <= 500 and 2
    for 501 <= n <= 1000, more only on exact ties (at n = 501, p = 499 exactly, so tau = v[n-2]:
    the method note's "502" is off by one).
F7. Fixed K ablation: J_i = topk(C[i, T], min(K, |T|)); K = 0 is pruning.
F8. Self-preserving compress: alpha_ij = C[i, j] / sum_{j' in J_i} C[i, j'] (a source whose sum is 0
    contributes nothing); for each j in T, with I_j = {i : j in J_i}:
    X_j <- (X_j + sum_{i in I_j} alpha_ij X_i) / (1 + sum_{i in I_j} alpha_ij).
    A target with no source is left bit-identical. Average ablation:
    X_j <- (X_j + sum_{i in I_j} X_i) / (1 + |I_j|).
F9. Convergent correlation ablation: each target j picks its sources from its column v = C[S, j]:
    I_j = {i in S : C[i, j] >= tau(v)} with the F6 quantile (or topk(C[S, j], K) with fixed K);
    alpha_ij = C[i, j] / sum_{i' in I_j} C[i', j]; then the F8 formula. A source may feed several
    targets or none.
Other methods (importance scores: the highest are kept)
O1. tome: split P by position in P: set A = P[0::2], set B = P[1::2]. For a in A,
    node_max_a = max_b cos(M_a, M_b), node_idx_a = lowest-index b attaining it. S = topk(node_max
    over A, R), R <= |A|. Size-weighted average with the token sizes z carried from earlier steps
    (all 1 when not given): each b becomes (z_b X_b + sum z_a X_a) / (z_b + sum z_a) over its
    merged a; output sizes are z_b + sum z_a for a receiving b and z otherwise.
O2. evit: s = A[cls, i]; keep topk(s, |P| - R - 1); the other R + 1 candidates fuse into one new
    token sum_i s_i X_i (EViT's formula, not renormalised). R = 0 is the identity.
O3. fastv: keep topk(colmean, |P| - R). pdrop: keep topk(A[t, i], |P| - R), t = last token of the
    text span. topk-cls: keep topk(A[cls, i], |P| - R). All prune (K = 0).
O4. sparsevlm: for text token k, r_k = mean_{i in V} A[k, i]; raters = {k : r_k >= mean of r} (all
    text tokens if that is empty); s_i = mean over raters of A[k, i]. c = ceil(R / 10) new tokens;
    keep topk(s, |P| - R - c); the R + c others are deleted (D); recycled Q = topk(s over D,
    ceil(3 |D| / 10)); the rest of D is pruned. Q is clustered by DPC-KNN without noise:
    d_ab = |M_a - M_b| / sqrt(dim M); k = min(5, |Q| - 1); rho_a = exp(-mean of the k smallest
    d_ab^2, b != a) (1 if k = 0); delta_a = min d_ab over b with rho_b > rho_a, or max_b d_ab if
    there is none (0 if |Q| = 1); centres = topk(rho * delta over Q, c); every member of Q joins its
    nearest centre (ties: lower index; a centre joins itself). New token = mean of its members'
    X; new tokens ordered by centre index.
O5. prumerge with a fixed drop (no IQR): s = A[cls, i]; keep topk(s, |P| - R), S = the rest. Each
    kept j takes N_j = topk over i in S of cos(M_j, M_i), k = min(knn, |S|), knn = 32, and becomes
    (s_j X_j + sum_{i in N_j} s_i X_i) / (s_j + sum_{i in N_j} s_i).
O6. visionzip: m = |P| - R; c = floor((5 m + 16) / 32) contextual tokens (64 = 54 + 10,
    128 = 108 + 20, 192 = 162 + 30); dominant = topk(A[cls, i], m - c); the rest Rs in ascending
    order (|Rs| = R + c); step = |Rs| // c; targets Rs[t * step] for t < c; every other token of Rs
    joins the target with the highest cos(M) (ties: lower index). New token = mean of the target and
    its members; new tokens ordered by target index (none if c = 0).
O7. random: perm = numpy.random.RandomState(seed).permutation(|P|) (MT19937 init_genrand(seed);
    for i = |P| - 1 down to 1: mask = smallest 2^b - 1 >= i, draw 32-bit words until
    (word & mask) <= i, that is j; swap perm[i], perm[j]); drop P[perm[:R]].
O8. pool: needs --grid G, k | G (k = 2 or 4), all G^2 patches present, and R = G^2 - G^2 / k^2. One
    new token per k x k window (by positions) = mean of its patches; windows in raster order.
O9. none: R must be 0; identity.
"""

import argparse
import math
from dataclasses import dataclass, field

import numpy as np

METHODS = ("ficoco-v", "ficoco-l", "tome", "evit", "fastv", "pdrop", "sparsevlm", "prumerge",
           "visionzip", "random", "topk-cls", "pool", "none")

DEFAULTS = {
    "lam": 0.35,            # ficoco-v Eq. 1
    "beta": 0.6,            # ficoco-l Eq. 3
    "gamma": 0.6,           # ficoco-l Eq. 4
    "eps": 0.998,           # adaptive-K quantile
    "window": 2,            # local penalty window side
    "coef": 2.0,            # local penalty coefficient
    "local_penalty": True,  # ablation: False
    "fixed_k": None,        # ablation: 0, 1 or 2 instead of the adaptive quantile
    "compress": "self",     # ablation: "average"
    "correlation": "divergent",  # ablation: "convergent"
    "direct": True,         # ablation (ficoco-l): False = no direct term (gamma = 0)
    "indirect": True,       # ablation (ficoco-l): False = no indirect term (gamma = 1)
    "knn": 32,              # prumerge neighbours per kept token
    "pool_k": 2,            # pool window side
    "recycle_pct": 30,      # sparsevlm: percent of deleted tokens recycled
    "cluster_div": 10,      # sparsevlm: c = ceil(R / cluster_div) new tokens
    "dpc_k": 5,             # sparsevlm: DPC-KNN neighbours
    "seed": 0,              # random
}

NORM_FLOOR = 1e-12


@dataclass
class Step:
    hidden: np.ndarray                 # f32 [N-R, D]
    kept: np.ndarray                   # i64 [N-R]
    params: dict
    score_index: np.ndarray = None     # i64: input index of each scored token
    scores: np.ndarray = None          # f32: score used for selection
    raw_scores: np.ndarray = None      # f32: ficoco-v score before the local penalty
    sources: np.ndarray = None         # i64 ascending: input tokens absent from the output
    edges: np.ndarray = None           # i64 [E, 2]: (source input index, receiving token)
    weights: np.ndarray = None         # f32 [E]: the weight of each edge before normalisation
    sizes: np.ndarray = None           # f32 [N-R]: tome token sizes
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# small helpers

def topk(values, index, k):
    """First k of a stable descending sort; ties go to the lower input index (G4)."""
    values = np.asarray(values, dtype=np.float64)
    index = np.asarray(index, dtype=np.int64)
    order = np.lexsort((index, -values))
    return order[:k]  # positions into values / index


def normalize_rows(x):
    x = np.asarray(x, dtype=np.float64)
    n = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.maximum(n, NORM_FLOOR)


def cos_matrix(a, b):
    return normalize_rows(a) @ normalize_rows(b).T


def candidates(n, cls, visual):
    if visual is None:
        idx = np.arange(n, dtype=np.int64)
    else:
        idx = np.arange(visual[0], visual[0] + visual[1], dtype=np.int64)
    if cls is not None:
        idx = idx[idx != cls]
    return idx


def span_end(n, visual):
    return n if visual is None else visual[0] + visual[1]


def assemble(x, survivors, new_tokens, end):
    """G3: survivors (ascending input indices) around the new tokens at the visual span's end."""
    survivors = np.sort(np.asarray(survivors, dtype=np.int64))
    before = survivors[survivors < end]
    after = survivors[survivors >= end]
    d = x.shape[1]
    new = np.zeros((0, d)) if new_tokens is None or len(new_tokens) == 0 else np.asarray(new_tokens)
    hidden = np.concatenate([x[before], new, x[after]], axis=0)
    kept = np.concatenate([before, -np.ones(len(new), dtype=np.int64), after])
    return hidden.astype(np.float32), kept.astype(np.int64)


def colmean(attn, cols):
    return attn[:, cols].sum(axis=0) / attn.shape[0]


# ---------------------------------------------------------------------------------------------
# FiCoCo stages

def filter_ficoco_v(attn, positions, cand, cls, grid, metric, p):
    """Eq. 1 (F1) and the local penalty (F2). Returns (scores, raw scores) over cand."""
    lam = p["lam"]
    m = colmean(attn, cand)
    if cls is not None:
        semantic = attn[cls, cand]
    else:
        mu = metric[cand].mean(axis=0)
        semantic = -cos_matrix(mu[None, :], metric[cand])[0]
    raw = lam * m - (1.0 - lam) * semantic
    if not p["local_penalty"]:
        return raw.copy(), raw
    return local_penalty(raw, positions[cand], grid, p["window"], p["coef"]), raw


def local_penalty(raw, pos, grid, window, coef):
    if grid is None:
        raise ValueError("the local penalty needs --grid")
    if np.any(pos < 0):
        raise ValueError("a candidate without a grid position")
    s = raw.copy()
    best = {}
    for t in range(len(raw)):  # candidates in ascending input order: the first maximum wins ties
        key = (int(pos[t]) // grid // window, int(pos[t]) % grid // window)
        if key not in best or raw[t] > raw[best[key]]:
            best[key] = t
    for t in best.values():
        if raw[t] > 0:
            s[t] = raw[t] * coef
        elif raw[t] < 0:
            s[t] = raw[t] / coef
    return s


def filter_ficoco_l(attn, vis, text, p):
    """Eq. 3 (F3) over the visual span."""
    beta = p["beta"]
    own = attn[np.ix_(vis, vis)].sum(axis=0) / len(vis)
    task = attn[np.ix_(text, vis)].sum(axis=0) / len(text)
    return beta * own - (1.0 - beta) * task


def split_sources(scores, cand, n_drop):
    """F4: S = the n_drop highest scores; T = the rest, ascending."""
    pos = topk(scores, cand, n_drop)
    s_mask = np.zeros(len(cand), dtype=bool)
    s_mask[pos] = True
    return np.sort(cand[s_mask]), cand[~s_mask]


def correlate_ficoco_v(attn, S, T):
    return attn[np.ix_(S, T)].astype(np.float64)


def correlate_ficoco_l(attn, S, T, text, p):
    gamma = p["gamma"]
    if not p["direct"] and not p["indirect"]:
        raise ValueError("no direct and no indirect correlation leaves nothing")
    if not p["direct"]:
        gamma = 0.0
    if not p["indirect"]:
        gamma = 1.0
    direct = attn[np.ix_(S, T)] + attn[np.ix_(T, S)].T
    at = attn[text]
    indirect = (at[:, S].T @ at[:, T]) / len(text)
    return gamma * direct + (1.0 - gamma) * indirect


def quantile_tau(v, eps):
    """F6: torch.quantile-style linear interpolation, clamped to never exceed v[hi]."""
    v = np.sort(np.asarray(v, dtype=np.float64))
    n = len(v)
    pos = eps * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    w = pos - lo
    return min(v[lo] + w * (v[hi] - v[lo]), v[hi])


def pick(row, index, eps, fixed_k):
    """Positions into row of the chosen entries (adaptive quantile or fixed K), ascending."""
    if len(row) == 0:
        return np.zeros(0, dtype=np.int64)
    if fixed_k is None:
        return np.nonzero(row >= quantile_tau(row, eps))[0]
    return np.sort(topk(row, index, min(fixed_k, len(row))))


def correlate_edges(C, S, T, p):
    """Per-source target sets J_i (divergent, F6/F7) or per-target source sets I_j (convergent, F9).
    Returns edges (source, target) as input indices and alpha per edge."""
    edges, alphas = [], []
    if p["correlation"] == "divergent":
        for a, i in enumerate(S):
            sel = pick(C[a], T, p["eps"], p["fixed_k"])
            tot = C[a, sel].sum()
            if len(sel) == 0 or tot == 0:
                continue
            for b in sel:
                edges.append((i, T[b]))
                alphas.append(C[a, b] / tot)
    elif p["correlation"] == "convergent":
        for b, j in enumerate(T):
            sel = pick(C[:, b], S, p["eps"], p["fixed_k"])
            tot = C[sel, b].sum()
            if len(sel) == 0 or tot == 0:
                continue
            for a in sel:
                edges.append((S[a], j))
                alphas.append(C[a, b] / tot)
    else:
        raise ValueError(f"unknown correlation {p['correlation']!r}")
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return e, np.asarray(alphas, dtype=np.float64)


def compress(x, edges, alphas, mode):
    """F8: self-preserving update (or the plain-average ablation) of every target, simultaneous."""
    if mode not in ("self", "average"):
        raise ValueError(f"unknown compress {mode!r}")
    out = x.copy()
    num, den = {}, {}
    for (i, j), a in zip(edges, alphas):
        w = a if mode == "self" else 1.0
        num[j] = num.get(j, 0.0) + w * x[i]
        den[j] = den.get(j, 0.0) + w
    for j in num:
        out[j] = (x[j] + num[j]) / (1.0 + den[j])
    return out


# ---------------------------------------------------------------------------------------------
# methods

def _ficoco(kind, x, attn, positions, metric, cand, drop, cls, grid, text, p):
    if kind == "v":
        scores, raw = filter_ficoco_v(attn, positions, cand, cls, grid, metric, p)
    else:
        scores = filter_ficoco_l(attn, cand, text, p)
        raw = None
    S, T = split_sources(scores, cand, drop)
    C = correlate_ficoco_v(attn, S, T) if kind == "v" else correlate_ficoco_l(attn, S, T, text, p)
    edges, alphas = correlate_edges(C, S, T, p)
    out = compress(x, edges, alphas, p["compress"])
    return out, S, scores, raw, edges, alphas


def _keep_top(scores, cand, n_keep):
    pos = np.sort(topk(scores, cand, n_keep))
    mask = np.zeros(len(cand), dtype=bool)
    mask[pos] = True
    return cand[mask], cand[~mask]


def _need(value, what, method):
    if value is None:
        raise ValueError(f"{method} needs {what}")
    return value


def reduce(method, hidden, attn, positions, drop, keys=None, cls=None, grid=None, visual=None,
           text=None, sizes=None, **options):
    """One reduction step. Returns a Step (see the module docstring for the definitions)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    p = dict(DEFAULTS)
    p.update(options)
    x = np.asarray(hidden, dtype=np.float64)
    A = np.asarray(attn, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    n = x.shape[0]
    assert A.shape == (n, n) and positions.shape == (n,)
    metric = x if keys is None else np.asarray(keys, dtype=np.float64)
    cand = candidates(n, cls, visual)
    end = span_end(n, visual)
    if not 0 <= drop <= len(cand):
        raise ValueError(f"drop {drop} outside [0, {len(cand)}]")
    txt = None if text is None else np.arange(text[0], text[0] + text[1], dtype=np.int64)
    r = {"score_index": None, "scores": None, "raw": None, "edges": None, "weights": None,
         "sizes": None}
    new = None

    if method == "none":
        if drop != 0:
            raise ValueError("none drops nothing")
        survivors = np.arange(n)
        out = x
    elif method in ("ficoco-v", "ficoco-l"):
        kind = method[-1]
        if kind == "l":
            _need(visual, "--visual", method)
            _need(txt, "--text", method)
        out, S, scores, raw, edges, alphas = _ficoco(kind, x, A, positions, metric, cand, drop,
                                                     cls, grid, txt, p)
        survivors = np.setdiff1d(np.arange(n), S)
        r.update(score_index=cand, scores=scores, raw=raw, edges=edges, weights=alphas)
    elif method == "tome":
        a_set, b_set = cand[0::2], cand[1::2]
        if drop > len(a_set):
            raise ValueError("tome merges at most |A| tokens per step")
        out = x.copy()
        sizes = np.ones(n) if sizes is None else np.asarray(sizes, dtype=np.float64).copy()
        z = sizes.copy()
        edges = np.zeros((0, 2), dtype=np.int64)
        if drop > 0 and len(b_set) > 0:
            sim = cos_matrix(metric[a_set], metric[b_set])
            node_max = sim.max(axis=1)
            node_idx = b_set[np.argmax(sim, axis=1)]  # argmax returns the first maximum
            src_pos = topk(node_max, a_set, drop)
            edges = np.stack([a_set[src_pos], node_idx[src_pos]], axis=1)
            edges = edges[np.argsort(edges[:, 0], kind="stable")]
            for b in np.unique(edges[:, 1]):
                members = edges[edges[:, 1] == b, 0]
                total = z[b] + z[members].sum()
                out[b] = (z[b] * x[b] + (z[members, None] * x[members]).sum(axis=0)) / total
                sizes[b] = total
            r.update(score_index=a_set, scores=node_max)
        elif drop > 0:
            raise ValueError("tome needs at least two candidates")
        survivors = np.setdiff1d(np.arange(n), edges[:, 0])
        r.update(edges=edges, weights=np.ones(len(edges)), sizes=sizes)
    elif method in ("evit", "topk-cls", "prumerge", "visionzip"):
        _need(cls, "--cls", method)
        s = A[cls, cand]
        r.update(score_index=cand, scores=s)
        out = x.copy()
        others = cand
        if method == "topk-cls":
            keep, _ = _keep_top(s, cand, len(cand) - drop)
        elif method == "evit":
            if drop == 0:
                keep = cand
            else:
                if drop + 1 > len(cand):
                    raise ValueError("evit needs drop + 1 <= candidates")
                keep, fused = _keep_top(s, cand, len(cand) - drop - 1)
                w = A[cls, fused]
                new = [(w[:, None] * x[fused]).sum(axis=0)]
                r.update(edges=np.stack([fused, -np.ones_like(fused)], axis=1), weights=w)
        elif method == "prumerge":
            keep, pruned = _keep_top(s, cand, len(cand) - drop)
            k = min(p["knn"], len(pruned))
            edges, weights = [], []
            if k > 0:
                sim = cos_matrix(metric[keep], metric[pruned])
                for a, j in enumerate(keep):
                    nb = np.sort(pruned[topk(sim[a], pruned, k)])
                    w = A[cls, nb]
                    out[j] = (A[cls, j] * x[j] + (w[:, None] * x[nb]).sum(axis=0)) / (A[cls, j] + w.sum())
                    edges += [(i, j) for i in nb]
                    weights += list(w)
            r.update(edges=np.asarray(edges, dtype=np.int64).reshape(-1, 2), weights=np.asarray(weights))
        else:  # visionzip
            m = len(cand) - drop
            c = (5 * m + 16) // 32
            keep, rest = _keep_top(s, cand, m - c)
            edges = []
            new = []
            if c > 0:
                step = len(rest) // c
                targets = rest[np.arange(c) * step]
                members = np.setdiff1d(rest, targets)
                groups = {t: [] for t in targets}
                if len(members):
                    sim = cos_matrix(metric[members], metric[targets])
                    assign = targets[np.argmax(sim, axis=1)]
                    for i, t in zip(members, assign):
                        groups[t].append(i)
                for t in targets:
                    g = [t] + groups[t]
                    new.append(x[g].mean(axis=0))
                    edges += [(i, t) for i in groups[t]]
                r["extra_targets"] = targets
            r.update(edges=np.asarray(edges, dtype=np.int64).reshape(-1, 2),
                     weights=np.ones(len(edges)))
        survivors = np.concatenate([np.setdiff1d(np.arange(n), others), keep])
    elif method in ("fastv", "pdrop"):
        _need(visual, "--visual", method)
        if method == "fastv":
            s = colmean(A, cand)
        else:
            _need(txt, "--text", method)
            s = A[txt[-1], cand]
        keep, _ = _keep_top(s, cand, len(cand) - drop)
        out = x
        survivors = np.concatenate([np.setdiff1d(np.arange(n), cand), keep])
        r.update(score_index=cand, scores=s)
    elif method == "sparsevlm":
        _need(visual, "--visual", method)
        _need(txt, "--text", method)
        rel = A[np.ix_(txt, cand)].mean(axis=1)
        raters = txt[rel >= rel.mean()]
        if len(raters) == 0:
            raters = txt
        s = A[np.ix_(raters, cand)].mean(axis=0)
        r.update(score_index=cand, scores=s)
        r["extra_raters"] = raters
        c = (drop + p["cluster_div"] - 1) // p["cluster_div"]
        if drop + c > len(cand):
            raise ValueError("sparsevlm needs drop + ceil(drop / 10) <= candidates")
        keep, deleted = _keep_top(s, cand, len(cand) - drop - c)
        out = x
        new, edges = [], []
        if c > 0:
            sd = s[np.searchsorted(cand, deleted)]
            q = min(len(deleted), (p["recycle_pct"] * len(deleted) + 99) // 100)
            Q = np.sort(deleted[topk(sd, deleted, q)])
            centres, label = dpc_knn(metric[Q], Q, c, p["dpc_k"])
            for ci in centres:
                g = Q[label == ci]
                new.append(x[g].mean(axis=0))
                edges += [(i, Q[ci]) for i in g if i != Q[ci]]
            r["extra_recycled"] = Q
        r.update(edges=np.asarray(edges, dtype=np.int64).reshape(-1, 2), weights=np.ones(len(edges)))
        survivors = np.concatenate([np.setdiff1d(np.arange(n), cand), keep])
    elif method == "random":
        perm = np.random.RandomState(p["seed"]).permutation(len(cand))
        dropped = cand[perm[:drop]]
        out = x
        survivors = np.setdiff1d(np.arange(n), dropped)
    elif method == "pool":
        g = _need(grid, "--grid", method)
        k = p["pool_k"]
        if g % k != 0:
            raise ValueError("pool needs k | grid")
        pos = positions[cand]
        if sorted(pos.tolist()) != list(range(g * g)):
            raise ValueError("pool needs every grid patch present")
        if drop != g * g - g * g // (k * k):
            raise ValueError(f"pool {k}x{k} on {g}x{g} drops exactly {g * g - g * g // (k * k)}")
        win = (pos // g // k) * (g // k) + (pos % g // k)
        new = [x[cand[win == w]].mean(axis=0) for w in range(g * g // (k * k))]
        out = x
        survivors = np.setdiff1d(np.arange(n), cand)
    else:  # pragma: no cover
        raise AssertionError(method)

    hidden_out, kept = assemble(out, survivors, new, end)
    if len(kept) != n - drop:
        raise AssertionError(f"{method}: {len(kept)} outputs for N - R = {n - drop}")
    step = Step(hidden=hidden_out, kept=kept, params=p)
    step.sources = np.setdiff1d(np.arange(n), kept[kept >= 0]).astype(np.int64)
    if r["score_index"] is not None:
        step.score_index = np.asarray(r["score_index"], dtype=np.int64)
        step.scores = np.asarray(r["scores"]).astype(np.float32)
    if r["raw"] is not None:
        step.raw_scores = np.asarray(r["raw"]).astype(np.float32)
    if r["edges"] is not None:
        step.edges = np.asarray(r["edges"], dtype=np.int64).reshape(-1, 2)
        step.weights = np.asarray(r["weights"], dtype=np.float64).astype(np.float32)
    if r["sizes"] is not None:
        step.sizes = np.array([r["sizes"][i] if i >= 0 else 1.0 for i in kept], dtype=np.float32)
    step.extra = {k[6:]: v for k, v in r.items() if k.startswith("extra_")}
    return step


def dpc_knn(feats, index, c, k_nn):
    """O4: density-peak clustering with k nearest neighbours, deterministic (no noise).
    Returns (positions of the c centres in ascending input order, label per point = centre position)."""
    q = len(feats)
    f = np.asarray(feats, dtype=np.float64)
    diff = f[:, None, :] - f[None, :, :]
    d = np.sqrt((diff * diff).sum(axis=-1)) / math.sqrt(f.shape[1])
    k = min(k_nn, q - 1)
    rho = np.ones(q)
    if k > 0:
        for a in range(q):
            others = np.sort(np.delete(d[a], a) ** 2)
            rho[a] = math.exp(-others[:k].mean())
    delta = np.zeros(q)
    for a in range(q):
        higher = rho > rho[a]
        if higher.any():
            delta[a] = d[a, higher].min()
        elif q > 1:
            delta[a] = np.delete(d[a], a).max()
    centres = np.sort(topk(rho * delta, index, c))
    label = centres[np.argmin(d[:, centres], axis=1)]  # first (lowest-index) nearest centre
    label[centres] = centres
    return centres, label


# ---------------------------------------------------------------------------------------------
# command line, mirroring the crate's runner

def _span(text):
    if text is None:
        return None
    a, b = text.split(":")
    return int(a), int(b)


def _value(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def main():
    from safetensors.numpy import load_file, save_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--drop", type=int, required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cls", type=int)
    ap.add_argument("--grid", type=int)
    ap.add_argument("--visual")
    ap.add_argument("--text")
    ap.add_argument("--opt", action="append", default=[], help="key=value, see DEFAULTS")
    a = ap.parse_args()
    t = load_file(a.input)
    opts = {k: _value(v) for k, v in (o.split("=", 1) for o in a.opt)}
    st = reduce(a.method, t["hidden"], t["attn"], t["positions"], a.drop, keys=t.get("keys"),
                sizes=t.get("sizes"),
                cls=a.cls, grid=a.grid, visual=_span(a.visual), text=_span(a.text), **opts)
    save_file({"hidden": st.hidden, "kept": st.kept}, a.out)
    print(f"{a.method}: {t['hidden'].shape[0]} -> {st.hidden.shape[0]} tokens, wrote {a.out}")


if __name__ == "__main__":
    main()
