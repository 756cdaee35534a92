#!/usr/bin/env python3
"""Oracle fixtures for the SigLIP + Qwen2 LLaVA family (the llava-interleave-qwen layout).

Small random models built with transformers (SiglipVisionConfig + Qwen2Config in a LlavaConfig),
saved in the published llava-hf 4.x key layout (`vision_tower.vision_model.*`,
`language_model.model.*`, `language_model.lm_head.*`), with odd sizes: 3 vision heads, 6 text
heads over 2 KV heads, a 34-pixel image cut into 4-pixel patches (8 x 8 grid, 2 pixels dropped).
The same family at llava-interleave-qwen's geometry (384-pixel images, patch 14: 27 x 27 = 729
tokens) goes to assets/ as a tiny random demo model. A tiny byte-level BPE tokenizer in Qwen2's style (no BOS, <|im_start|> / <|im_end|> turns, the
<image> token last) and a ChatML chat template go with them. The oracle outputs come from
transformers in float32 on the CPU, from the weights as saved (f16, upcast):

    tests/fixtures/models/siglip_qwen2_tied/    tied embeddings, vision_feature_layer -1
    tests/fixtures/models/siglip_qwen2_untied/  untied lm_head, vision_feature_layer -2
        oracle.json / oracle.safetensors: the prompt (rendered by the chat template) and its ids,
        the processor's pixel values, selected vision features, projected image features, the
        last-position prefill logits, greedy tokens; and at vision layer `reduce.layer`: the
        keys, the head-averaged attention, numpy's equivalent-token scores
        a_i = -cos(mu, K_i) (K = keys averaged over heads, mu their mean) and the kept patches of
        FiCoCo-V and top-k [CLS] (scripts/reduce_reference.py) for a drop of `reduce.drop`.
    assets/llava-interleave-tiny-random/        384 / 14, tied; oracle without pixels or the
        reduction inputs (too large for the repo), the rest as above.

Run with the repo's venv: `python scripts/make_siglip_fixtures.py [--root REPO_ROOT]`.
It imports the shared helpers of scripts/make_fixtures.py (corpus, weight init, key remap).
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (sets the deterministic torch / offline environment)
import reduce_reference as rr  # noqa: E402

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)

try:  # transformers 5.x: the PIL processor has its own class
    from transformers import SiglipImageProcessorPil as PilSiglipImageProcessor
except ImportError:  # transformers 4.x: SiglipImageProcessor is the PIL one
    from transformers import SiglipImageProcessor as PilSiglipImageProcessor

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
BPE_VOCAB = 300  # 256 bytes + merges, then the specials
# One user turn: images first, then the text, as llava-interleave-qwen's template renders it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MAX_NEW_TOKENS = 8
REDUCE_LAYER, REDUCE_DROP = 1, 24

SPECS = [
    {"name": "siglip_qwen2_tied", "dir": "tests/fixtures/models/siglip_qwen2_tied",
     "image_size": 34, "patch": 4, "image": "tests/fixtures/images/shapes_97x61.png",
     "reductions": True, "tied": True, "feature_layer": -1, "rope_theta": 1000000.0,
     "seed": 5000, "question": "What colour is the square?",
     "init": {"std": 0.12, "embed_std": 0.06, "lm_head_std": 0.06}},
    {"name": "siglip_qwen2_untied", "dir": "tests/fixtures/models/siglip_qwen2_untied",
     "image_size": 34, "patch": 4, "image": "tests/fixtures/images/shapes_97x61.png",
     "reductions": True, "tied": False, "feature_layer": -2, "rope_theta": 10000.0,
     "seed": 6000, "question": "How many circles are in the picture?",
     "init": {"std": 0.08, "embed_std": 0.1, "lm_head_std": 0.2}},
    {"name": "llava-interleave-tiny-random", "dir": "assets/llava-interleave-tiny-random",
     "image_size": 384, "patch": 14, "image": "assets/images/demo.png", "reductions": False,
     "tied": True, "feature_layer": -1, "rope_theta": 1000000.0, "seed": 7000,
     "question": "Describe the image.",
     "init": {"std": 0.12, "embed_std": 0.06, "lm_head_std": 0.06}},
]


def grid(spec):
    return spec["image_size"] // spec["patch"]


def build_tokenizer(out_dir: Path):
    """Byte-level BPE like Qwen2's: no BOS, specials after the merges, <image> last."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(mf.build_corpus(), trainer=trainer)
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t in SPECIALS])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    vocab = tok.get_vocab_size(with_added_tokens=True)
    assert ids["<image>"] == vocab - 1, ids
    added = {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True} for t in SPECIALS}
    cfg = {"added_tokens_decoder": added, "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "model_max_length": 4096, "chat_template": CHAT_TEMPLATE,
           "extra_special_tokens": {"image_token": "<image>"},
           "tokenizer_class": "PreTrainedTokenizerFast"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    stm = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<image>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")
    return ids, vocab


def processor_dict(size):
    """preprocessor_config.json as llava-interleave-qwen publishes it (transformers 4.x)."""
    return {"do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "processor_class": "LlavaProcessor", "resample": 3,
            "rescale_factor": 1 / 255, "size": {"height": size, "width": size}}


def pil_processor(size):
    kw = {k: v for k, v in processor_dict(size).items()
          if k not in ("image_processor_type", "processor_class")}
    return PilSiglipImageProcessor(**kw)


def make_config(spec, ids, vocab):
    vc = SiglipVisionConfig(hidden_size=36, intermediate_size=60, num_hidden_layers=3,
                            num_attention_heads=3, image_size=spec["image_size"],
                            patch_size=spec["patch"],
                            hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                            vision_use_head=False)
    tc = Qwen2Config(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                     num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6,
                     rope_theta=spec["rope_theta"], max_position_embeddings=4096,
                     tie_word_embeddings=spec["tied"], bos_token_id=None,
                     eos_token_id=ids["<|im_end|>"], hidden_act="silu", use_sliding_window=False)
    rp = getattr(tc, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = float(spec["rope_theta"])
    return LlavaConfig(vision_config=vc, text_config=tc, image_token_id=ids["<image>"],
                       projector_hidden_act="gelu", vision_feature_layer=spec["feature_layer"],
                       vision_feature_select_strategy="full", image_seq_length=grid(spec) ** 2,
                       tie_word_embeddings=spec["tied"])


def save_model(model, cfg, spec, model_dir: Path, tok_dir: Path):
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    out = {mf.to_llava_hf_4x_key(k): t.detach().to(torch.float16).contiguous().clone()
           for k, t in model.state_dict().items()
           if "rotary_emb" not in k and not k.endswith("position_ids")}
    save_file(out, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    d = mf.config_4x_style(cfg, "float16")
    d["text_config"]["architectures"] = ["Qwen2ForCausalLM"]
    d["image_token_index"] = d.pop("image_token_id", cfg.image_token_id)
    (model_dir / "config.json").write_text(json.dumps(d, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / f, model_dir / f)
    (model_dir / "preprocessor_config.json").write_text(
        json.dumps(processor_dict(spec["image_size"]), indent=2) + "\n")
    proc = {"image_token": "<image>", "num_additional_image_tokens": 0, "patch_size": spec["patch"],
            "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "full"}
    (model_dir / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")


def load_saved(model_dir: Path):
    model, info = LlavaForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=torch.float32, output_loading_info=True, attn_implementation="eager")
    missing = [k for k in info.get("missing_keys", []) if "rotary" not in k]
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise RuntimeError(f"{model_dir}: loading info {info}")
    return model.eval()


@torch.no_grad()
def run_oracle(model, processor, image, question, visual):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
    enc = processor(images=image, text=prompt, return_tensors="pt")
    ids, pixels = enc["input_ids"], enc["pixel_values"].to(torch.float32)
    cfg = model.config
    assert int((ids == cfg.image_token_id).sum()) == visual
    out = model(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                use_cache=False)
    tower = model.model.vision_tower
    vt = tower(pixels, output_hidden_states=True, output_attentions=True)
    hs = vt.hidden_states
    assert len(hs) == cfg.vision_config.num_hidden_layers + 1
    sel = hs[cfg.vision_feature_layer]
    # LLaVA reads a hidden state, taken before SigLIP's post-layernorm.
    if cfg.vision_feature_layer == -1:
        assert not torch.allclose(sel, vt.last_hidden_state), "hidden_states[-1] is post-LN"
    image_features = model.model.multi_modal_projector(sel)[0]
    # The keys of the reducing layer: k_proj of layer_norm1 of that layer's input.
    layer = tower.encoder.layers[REDUCE_LAYER]
    keys = layer.self_attn.k_proj(layer.layer_norm1(hs[REDUCE_LAYER]))[0]
    attn = vt.attentions[REDUCE_LAYER][0].mean(dim=0)

    tokens, margins = [], []
    cur = ids.clone()
    for _ in range(MAX_NEW_TOKENS):
        o = model(input_ids=cur, pixel_values=pixels, attention_mask=torch.ones_like(cur),
                  use_cache=False)
        top2 = torch.topk(o.logits[0, -1], 2)
        tokens.append(int(top2.indices[0]))
        if tokens[-1] == cfg.image_token_id:
            return None  # a generated <image> would need features of its own: another seed
        margins.append(float(top2.values[0] - top2.values[1]))
        cur = torch.cat([cur, torch.tensor([[tokens[-1]]])], dim=1)
    return {"prompt": prompt, "input_ids": ids[0], "pixel_values": pixels[0].contiguous(),
            "vision_features": sel[0].contiguous(), "image_features": image_features.contiguous(),
            "prefill_logits_last": out.logits[0, -1].contiguous(),
            "greedy_tokens": torch.tensor(tokens), "margins": margins,
            "keys": keys.contiguous(), "attn": attn.contiguous()}


def reductions(res, heads, side):
    """numpy's equivalent-token scores and kept sets at the reducing layer."""
    keys = res["keys"].numpy().astype(np.float64)
    n, d = keys.shape
    k_mean = keys.reshape(n, heads, d // heads).mean(axis=1)
    mu = k_mean.mean(axis=0)
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    scores = -(unit(k_mean) @ unit(mu))
    attn = res["attn"].numpy()
    positions = np.arange(n)
    fv = rr.reduce("ficoco-v", np.zeros((n, 1), np.float32), attn, positions, REDUCE_DROP,
                   keys=k_mean.astype(np.float32), grid=side)
    fv_scores = np.sort(np.asarray(fv.scores))[::-1]
    order = np.argsort(-scores, kind="stable")
    return {
        "k_mean": torch.tensor(k_mean, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "meta": {
            "layer": REDUCE_LAYER, "drop": REDUCE_DROP,
            "ficoco_v_kept": sorted(int(i) for i in fv.kept if i >= 0),
            # Gap at the cut of FiCoCo-V's scores (the R-th vs the (R+1)-th most redundant).
            "ficoco_v_cut_gap": float(fv_scores[REDUCE_DROP - 1] - fv_scores[REDUCE_DROP]),
            "topk_cls_kept": sorted(int(i) for i in order[:n - REDUCE_DROP]),
            "topk_cls_cut_gap": float(scores[order[n - REDUCE_DROP - 1]]
                                      - scores[order[n - REDUCE_DROP]]),
        },
    }


def build(spec, root: Path, tok_dir: Path, ids, vocab, log):
    model_dir = root / spec["dir"]
    image_path = spec["image"]
    size, side = spec["image_size"], grid(spec)
    image = mf.load_image(root / image_path)
    cfg = make_config(spec, ids, vocab)
    for attempt in range(40):
        seed = spec["seed"] + attempt
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg)
        mf.init_weights(model, seed, **spec["init"])
        save_model(model, cfg, spec, model_dir, tok_dir)
        loaded = load_saved(model_dir)
        processor = LlavaProcessor(image_processor=pil_processor(size),
                                   tokenizer=AutoTokenizer.from_pretrained(str(model_dir)),
                                   patch_size=spec["patch"],
                                   vision_feature_select_strategy="full",
                                   num_additional_image_tokens=0, image_token="<image>",
                                   chat_template=CHAT_TEMPLATE)
        res = run_oracle(loaded, processor, image, spec["question"], side * side)
        if res is None:
            log(f"  {spec['name']}: seed {seed}: generates <image> -> retry")
            continue
        red = reductions(res, cfg.vision_config.num_attention_heads, side)
        scale = float(res["prefill_logits_last"].abs().max())
        rel = [m / scale for m in res["margins"]]
        distinct = len(set(res["greedy_tokens"].tolist()))
        gaps = (red["meta"]["ficoco_v_cut_gap"], red["meta"]["topk_cls_cut_gap"])
        if not spec["reductions"]:
            gaps = (1.0, 1.0)
        ok = (min(rel) >= 0.01 and rel[0] >= 0.05 and distinct >= 3 and min(gaps) >= 1e-3
              and math.isfinite(scale))
        log(f"  {spec['name']}: seed {seed}: min margin {min(rel):.3f}, first {rel[0]:.3f}, "
            f"distinct {distinct}, cut gaps {gaps[0]:.2e} {gaps[1]:.2e} -> "
            f"{'ok' if ok else 'retry'}")
        if ok:
            break
    else:
        raise RuntimeError(f"{spec['name']}: no seed met the margin criteria")
    tensors = {k: res[k] for k in ("input_ids", "vision_features", "image_features",
                                   "prefill_logits_last", "greedy_tokens")}
    tensors["input_ids"] = tensors["input_ids"].to(torch.int64)
    tensors["greedy_tokens"] = tensors["greedy_tokens"].to(torch.int64)
    if spec["reductions"]:
        # Another image through the same processor, for the preprocessing check.
        rgba = mf.load_image(root / "tests/fixtures/images/rgba_90x60.png")
        rgba_pixels = pil_processor(size)(rgba, return_tensors="pt")["pixel_values"][0].float()
        tensors["rgba_90x60_pixel_values"] = rgba_pixels.contiguous()
        tensors["pixel_values"] = res["pixel_values"]
        tensors["keys"] = res["keys"]
        tensors["attn"] = res["attn"]
        tensors["keys_head_mean"] = red["k_mean"]
        tensors["equivalent_scores"] = red["scores"]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(model_dir / "oracle.safetensors"),
              metadata={"generator": "scripts/make_siglip_fixtures.py"})
    meta = {
        "question": spec["question"], "prompt": res["prompt"], "image": image_path,
        "rgba_image": "tests/fixtures/images/rgba_90x60.png",
        "max_new_tokens": MAX_NEW_TOKENS, "greedy_tokens": res["greedy_tokens"].tolist(),
        "greedy_margins": [round(m, 6) for m in res["margins"]], "seed": seed,
        "image_token_id": ids["<image>"], "visual_tokens": side * side, "grid": side,
        "vision_feature_layer": spec["feature_layer"], "weights_dtype": "f16",
        "oracle_dtype": "float32 (weights loaded from the saved files and upcast)",
        "layout": "llava_hf_4x", "reduce": red["meta"] if spec["reductions"] else None,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
    }
    (model_dir / "oracle.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"  {spec['name']}: prompt {len(res['input_ids'])} tokens, greedy {meta['greedy_tokens']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    root = Path(ap.parse_args().root)
    tok_dir = root / "tests/fixtures/tokenizer_qwen2"
    ids, vocab = build_tokenizer(tok_dir)
    print(f"tokenizer: {vocab} tokens, specials {ids}")
    for spec in SPECS:
        build(spec, root, tok_dir, ids, vocab, print)


if __name__ == "__main__":
    main()
