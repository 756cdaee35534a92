#!/usr/bin/env python3
"""The language model of a tiny llava-hf fixture written as a llama.cpp GGUF decoder, for
tests/gguf_decoder.rs (LLaVA with its decoder from a GGUF file, compared with transformers'
oracle of the same weights).

    .venv/bin/python scripts/make_gguf_decoder_fixtures.py

For each fixture directory below it writes DIR/decoder.gguf: the decoder's tensors in llama.cpp's
names and layout (matrices in the checkpoint's own float type, so the values are exactly its
own; norms and biases float32),
with the `{arch}.*` metadata llama.cpp's converter writes, and without `output.weight` when the
embeddings are tied. For the llama architecture the Q and K projection rows
are reordered as llama.cpp's converter stores them (per head, the two rotary halves
interleaved), so the reader has to undo it. gqa_untied also gets decoder_q8_0.gguf: every
matrix whose rows are whole Q8_0 blocks (32 values) quantised by the `gguf` package, the rest
float32 (as llama.cpp's converter falls back).
"""

import argparse
import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file

FIXTURES = {
    "siglip_qwen2_untied": ["float"],  # qwen2: QKV biases, GQA 6/2, untied
    "siglip_qwen2_tied": ["float"],  # qwen2, tied embeddings, rope theta 1e6
    "gqa_untied": ["float", "q8_0"],  # llama: Q/K rows reordered, GQA 4/2, explicit head_dim
}

# transformers' decoder parameter names (after the text prefix) -> llama.cpp's.
NAMES = {
    "embed_tokens": "token_embd",
    "norm": "output_norm",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TEXT_PREFIXES = ["model.language_model.", "language_model.model.", "language_model."]
HEAD_PREFIXES = ["lm_head.", "language_model.lm_head."]


def gguf_name(key):
    for p in HEAD_PREFIXES:
        if key.startswith(p):
            return "output." + key[len(p):]
    for p in TEXT_PREFIXES:
        if key.startswith(p):
            rest = key[len(p):]
            break
    else:
        return None
    stem, suffix = rest.rsplit(".", 1)
    layer = ""
    if stem.startswith("layers."):
        _, n, stem = stem.split(".", 2)
        layer = f"blk.{n}."
    return f"{layer}{NAMES[stem]}.{suffix}"


def rotary_interleave(w, heads):
    """llama.cpp's Q/K row order: within each head, row i of the first rotary half and row i of
    the second become rows 2i and 2i + 1 (transformers keeps the halves apart)."""
    rows = w.shape[0]
    half = rows // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_decoder(w, dir_, kind, rows=None):
    """The `{arch}.*` metadata and the decoder tensors of fixture `dir_` into GGUF writer `w`;
    with `rows`, only the first `rows` rows of the embedding and output matrices (the vocabulary
    cut short, as a llama.cpp LLM file lacks tokens llava-hf added). Returns the tensor count."""
    cfg = json.loads((dir_ / "config.json").read_text())
    tc = cfg["text_config"]
    arch = tc["model_type"]
    heads, kv = tc["num_attention_heads"], tc.get("num_key_value_heads") or tc["num_attention_heads"]
    head_dim = tc.get("head_dim") or tc["hidden_size"] // heads
    theta = tc.get("rope_theta") or (tc.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    tensors = load_file(str(dir_ / "model.safetensors"))
    tied = cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
    w.add_block_count(tc["num_hidden_layers"])
    w.add_context_length(tc["max_position_embeddings"])
    w.add_embedding_length(tc["hidden_size"])
    w.add_feed_forward_length(tc["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(tc["rms_norm_eps"])
    w.add_rope_freq_base(float(theta))
    half = any(t.dtype == np.float16 for t in tensors.values())
    F = gguf.LlamaFileType
    w.add_file_type(F.MOSTLY_Q8_0 if kind == "q8_0" else F.MOSTLY_F16 if half else F.ALL_F32)
    count = 0
    for key in sorted(tensors):
        g = gguf_name(key)
        if g is None or (tied and g.startswith("output.")):
            continue
        stored = tensors[key].dtype
        t = tensors[key].astype(np.float32)
        if rows is not None and g in ("token_embd.weight", "output.weight"):
            t = t[:rows]
        if arch == "llama" and g.endswith("attn_q.weight"):
            t = rotary_interleave(t, heads)
        if arch == "llama" and g.endswith("attn_k.weight"):
            t = rotary_interleave(t, kv)
        if kind == "q8_0" and t.ndim == 2 and t.shape[1] % 32 == 0:
            q = gguf.quantize(t, Q.Q8_0)
            w.add_tensor(g, q, raw_shape=q.shape, raw_dtype=Q.Q8_0)
        elif t.ndim == 2:
            w.add_tensor(g, t.astype(stored))
        else:
            w.add_tensor(g, t)
        count += 1
    return count


def finish(w):
    """Write a GGUFWriter's header, metadata and tensors, and close the file."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write(dir_, kind):
    arch = json.loads((dir_ / "config.json").read_text())["text_config"]["model_type"]
    name = "decoder.gguf" if kind == "float" else f"decoder_{kind}.gguf"
    w = gguf.GGUFWriter(str(dir_ / name), arch)
    w.add_name(f"{dir_.name} decoder ({kind})")
    count = add_decoder(w, dir_, kind)
    finish(w)
    print(f"wrote {dir_ / name}: {count} tensors ({arch}, {kind})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tests/fixtures/models")
    args = ap.parse_args()
    for d, kinds in FIXTURES.items():
        for kind in kinds:
            write(Path(args.models) / d, kind)


if __name__ == "__main__":
    main()
