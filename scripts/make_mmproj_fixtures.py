#!/usr/bin/env python3
"""Tiny llama.cpp VLM pairs (an LLM GGUF and an `mmproj` GGUF) written with the `gguf` package
from the small random llava-hf fixtures, for tests/gguf_pair.rs, which compares them with the
transformers oracle already recorded for those fixtures (oracle.json / oracle.safetensors: same
weights, same image and prompt).

    .venv/bin/python scripts/make_mmproj_fixtures.py

For each fixture directory below it writes

- DIR/llm.gguf: the decoder as scripts/make_gguf_decoder_fixtures.py writes it, plus the
  tokenizer (`tokenizer.ggml.*`) and a chat template, with the vocabulary cut before `<image>`:
  llama.cpp's LLM files carry the language model's own vocabulary, without the tokens llava-hf
  appended (`<image>`, `<pad>`), and so without their embedding rows.
- DIR/mmproj.gguf (and variants): the vision tower and projector in llama.cpp's `clip`
  layout: `clip.vision.*` hyperparameters, `clip.projector_type` = "mlp", tensors `v.*` and
  `mm.0` / `mm.2`, in one of the two shapes llama.cpp's converters produce:
  - "legacy" (tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py): the layers past the
    feature layer dropped (block_count is the feature layer), no `clip.vision.feature_layer`,
    and the FFN matrices under swapped names (fc1 as `ffn_down`, fc2 as `ffn_up`);
  - "current" (convert_hf_to_gguf.py --mmproj): every layer, `clip.vision.feature_layer`, fc1
    as `ffn_up`.
  The matrices are float32, or float16 in the `_f16` variant (as the converters' default).
"""

import argparse
import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from make_gguf_decoder_fixtures import add_decoder, finish

# fixture -> mmproj files: (name, style, float type)
FIXTURES = {
    "gqa_untied": [("mmproj.gguf", "legacy", np.float32), ("mmproj_f16.gguf", "current", np.float16)],
    "siglip_qwen2_untied": [("mmproj.gguf", "current", np.float32)],
}

# transformers' vision-layer parameter names -> llama.cpp's.
LAYER_NAMES = {
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
}
EMBED_NAMES = {
    "embeddings.patch_embedding": "v.patch_embd",
    "embeddings.position_embedding": "v.position_embd",
    "embeddings.class_embedding": "v.class_embd",
    "pre_layrnorm": "v.pre_ln",
}
VISION_PREFIXES = ["vision_tower.vision_model.", "model.vision_tower.vision_model."]
PROJECTOR_PREFIXES = ["multi_modal_projector.", "model.multi_modal_projector."]

LLAVA15_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def strip(key, prefixes):
    for p in prefixes:
        if key.startswith(p):
            return key[len(p):]
    return None


def mmproj_name(key, style, layers):
    """llama.cpp's name of a llava-hf vision or projector tensor; None to leave it out."""
    rest = strip(key, PROJECTOR_PREFIXES)
    if rest is not None:
        return "mm." + rest.replace("linear_1", "0").replace("linear_2", "2")
    rest = strip(key, VISION_PREFIXES)
    if rest is None or rest.startswith("post_layernorm") or "position_ids" in rest:
        return None  # decoder, or what LLaVA never reads
    if rest.startswith("encoder.layers."):
        _, _, n, part = rest.split(".", 3)
        if int(n) >= layers:
            return None
        stem, suffix = part.rsplit(".", 1)
        g = LAYER_NAMES[stem]
        if style == "legacy":
            g = {"ffn_up": "ffn_down", "ffn_down": "ffn_up"}.get(g, g)
        return f"v.blk.{n}.{g}.{suffix}"
    stem, _, suffix = rest.rpartition(".")
    if rest == "embeddings.class_embedding":
        return "v.class_embd"
    return f"{EMBED_NAMES[stem]}.{suffix}"


def write_mmproj(dir_, name, style, ftype):
    cfg = json.loads((dir_ / "config.json").read_text())
    vc = cfg["vision_config"]
    pre = json.loads((dir_ / "preprocessor_config.json").read_text())
    depth = vc["num_hidden_layers"]
    feature = cfg.get("vision_feature_layer", -2)
    feature = feature + depth + 1 if feature < 0 else feature
    layers = feature if style == "legacy" else depth
    size = pre.get("crop_size", pre.get("size"))
    image_size = size["height"] if "height" in size else size["shortest_edge"]

    w = gguf.GGUFWriter(str(dir_ / name), "clip")
    w.add_name(f"{dir_.name} mmproj ({style})")
    w.add_bool("clip.has_text_encoder", False)
    w.add_clip_has_vision_encoder(True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_clip_projector_type("mlp")
    w.add_file_type(1 if ftype == np.float16 else 0)
    w.add_vision_image_size(image_size)
    w.add_vision_patch_size(vc["patch_size"])
    w.add_vision_embedding_length(vc["hidden_size"])
    w.add_vision_feed_forward_length(vc["intermediate_size"])
    w.add_vision_projection_dim(vc.get("projection_dim", 0))
    w.add_vision_head_count(vc["num_attention_heads"])
    w.add_vision_attention_layernorm_eps(vc["layer_norm_eps"])
    w.add_vision_block_count(layers)
    if style == "current":
        w.add_array("clip.vision.feature_layer", [feature])
    w.add_vision_image_mean(pre["image_mean"])
    w.add_vision_image_std(pre["image_std"])
    # As the converters do: the legacy one for CLIP's exact GELU, the current one also for
    # SigLIP's tanh GELU.
    w.add_vision_use_gelu(vc["hidden_act"] in ("gelu", "gelu_pytorch_tanh"))

    tensors = load_file(str(dir_ / "model.safetensors"))
    count = 0
    for key in sorted(tensors):
        g = mmproj_name(key, style, layers)
        if g is None:
            continue
        t = tensors[key].astype(np.float32)
        # Matrices and the patch convolution in the file's float type, vectors in float32.
        w.add_tensor(g, t.astype(ftype) if t.ndim >= 2 and g != "v.position_embd.weight" else t)
        count += 1
    finish(w)
    print(f"wrote {dir_ / name}: {count} tensors ({style}, {layers} of {depth} layers)")


def add_tokenizer(w, dir_, n_vocab):
    """`tokenizer.ggml.*` of the fixture's tokenizer.json, ids below `n_vocab`, and a chat
    template: a Llama-style BPE with byte fallback becomes a sentencepiece vocabulary (`llama`:
    scores that rank merges like the BPE merges, i.e. by id), a byte-level BPE a `gpt2` one."""
    tok = json.loads((dir_ / "tokenizer.json").read_text())
    tcfg = json.loads((dir_ / "tokenizer_config.json").read_text())
    model = tok["model"]
    by_id = {i: t for t, i in model["vocab"].items()}
    specials = {}
    for a in tok["added_tokens"]:
        by_id[a["id"]] = a["content"]
        specials[a["id"]] = a["content"]
    tokens = [by_id[i] for i in range(n_vocab)]
    T = gguf.TokenType
    spm = model.get("byte_fallback", False)
    types = []
    for i, t in enumerate(tokens):
        if i in specials:
            types.append(T.UNKNOWN if t == model.get("unk_token") else T.CONTROL)
        elif spm and t.startswith("<0x") and len(t) == 6:
            types.append(T.BYTE)
        else:
            types.append(T.NORMAL)
    ids = {t: i for i, t in enumerate(tokens)}
    if spm:
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([-float(i) if ty == T.NORMAL else 0.0 for i, ty in enumerate(types)])
        w.add_token_types(types)
        w.add_unk_token_id(ids[model["unk_token"]])
        w.add_add_space_prefix(True)
        w.add_chat_template(LLAVA15_TEMPLATE)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
        w.add_chat_template(CHATML_TEMPLATE)
    special = lambda key: tcfg.get(key) if isinstance(tcfg.get(key), str) else (tcfg.get(key) or {}).get("content")
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id)):
        if special(key) in ids:
            add(ids[special(key)])
    w.add_add_bos_token(bool(tcfg.get("add_bos_token", False)) and special("bos_token") in ids)
    w.add_add_eos_token(False)


def write_llm(dir_):
    cfg = json.loads((dir_ / "config.json").read_text())
    arch = cfg["text_config"]["model_type"]
    n_vocab = cfg["image_token_index"]
    oracle = json.loads((dir_ / "oracle.json").read_text())
    assert max(oracle["greedy_tokens"]) < n_vocab, "the oracle's tokens must lie in the cut vocabulary"
    w = gguf.GGUFWriter(str(dir_ / "llm.gguf"), arch)
    w.add_name(f"{dir_.name} LLM")
    count = add_decoder(w, dir_, "float", rows=n_vocab)
    add_tokenizer(w, dir_, n_vocab)
    finish(w)
    print(f"wrote {dir_ / 'llm.gguf'}: {count} tensors ({arch}, vocabulary {n_vocab})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tests/fixtures/models")
    args = ap.parse_args()
    for d, files in FIXTURES.items():
        dir_ = Path(args.models) / d
        write_llm(dir_)
        for name, style, ftype in files:
            write_mmproj(dir_, name, style, ftype)


if __name__ == "__main__":
    main()
