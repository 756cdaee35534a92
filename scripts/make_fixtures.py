#!/usr/bin/env python3
"""Deterministic oracle fixtures for ficoco (LLaVA-class inference in WGSL).

Everything is generated locally: a small Llama-style BPE tokenizer trained on a built-in corpus,
synthetic images, tiny random LLaVA models in the two checkpoint layouts seen in the wild, and
reference outputs computed by HF transformers in float32 on the CPU. Nothing is downloaded.

Run through scripts/make_fixtures.sh (creates .venv with the pinned requirements), or directly:

    python scripts/make_fixtures.py [--root REPO_ROOT]

Outputs:
    tests/fixtures/images/{shapes_97x61,gray_40x70,rgba_90x60}.png
    tests/fixtures/tokenizer/            (the shared tokenizer, also copied into each model dir)
    tests/fixtures/models/gqa_untied/     llava-hf 4.x layout, f32, GQA, untied lm_head
    tests/fixtures/models/tied_full_layer/ transformers 5.x layout, bf16, sharded, tied, strategy full
    tests/fixtures/preprocess/<case>.{json,safetensors}
    assets/images/demo.png
    assets/llava-tiny-random/            llava-1.5 geometry, f16, llava-hf 4.x layout
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

try:  # transformers 5.x: the PIL ("slow") processor has its own class
    from transformers import CLIPImageProcessorPil as SlowCLIPImageProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor as SlowCLIPImageProcessor

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
torch.use_deterministic_algorithms(True)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
MAX_NEW_TOKENS = 8
TOKENIZER_VOCAB = 640  # model vocab 638 + <image> + <pad>

# ----------------------------------------------------------------------------------------------
# 1. Tokenizer
# ----------------------------------------------------------------------------------------------

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
           "grey", "cyan"]
SHAPES = ["square", "circle", "triangle", "rectangle", "star", "line", "dot", "hexagon", "oval",
          "diamond"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the middle",
          "in the corner", "near the edge", "next to the circle", "above the line",
          "below the square"]
SIZES = ["small", "large", "big", "tiny", "thin", "wide"]

HANDWRITTEN = """\
The image shows a red square on a blue background.
There is a small green circle in the top left corner of the picture.
What colour is the square? The square is red.
How many circles are in the picture? There are three circles.
The picture has a gradient from dark to light.
A yellow triangle sits next to a purple star.
The background is grey with thin white lines.
I can see two squares and one circle.
Count the shapes in the image and tell me the number.
The photo was taken outside on a sunny day.
This is a simple drawing with bright colours.
The large blue circle overlaps the small red square.
Describe the image in one sentence.
The image contains several coloured shapes on a textured background.
Is there a triangle in the image? Yes, there is a green triangle.
Is the circle bigger than the square? No, the circle is smaller.
The shapes are arranged in a row from left to right.
The top half of the image is brighter than the bottom half.
There are no people in this picture.
The colours are red, green, blue and yellow.
Each shape has a black outline.
The numbers one, two and three are written below the shapes.
What is in the middle of the image? A large orange circle.
How many sides does a triangle have? A triangle has three sides.
A square has four equal sides and four right angles.
A hexagon has six sides.
The picture is wider than it is tall.
The image is a grayscale picture with a white rectangle.
Light and shadow make the picture look deep.
The cat is sitting next to a brown box.
A dog runs across a green field under a blue sky.
The car in the picture is red and the road is grey.
The sun is yellow and the sky is light blue.
Please answer the question about the image.
USER: What do you see in this image? ASSISTANT: I see colourful shapes.
USER: What colour is the circle? ASSISTANT: The circle is blue.
USER: How many stars are there? ASSISTANT: There are four stars.
USER: Where is the triangle? ASSISTANT: The triangle is on the right.
The first shape is a square, the second is a circle and the third is a triangle.
Pixels in the corner are darker than pixels in the centre.
The stripes go from the top of the image to the bottom.
A checkerboard pattern covers the background.
This small image is only ninety seven pixels wide.
The model looks at the image and answers the question.
Red and blue make purple, and blue and yellow make green.
There is one large square, two medium circles and three small dots.
An image is a grid of pixels, and each pixel has a colour.
The picture shows a bright scene with many colours.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 32 64 100 336 576.
Can you count the red dots? Yes, I can count them: there are five red dots.
"""


def build_corpus():
    lines = [line.strip() for line in HANDWRITTEN.splitlines() if line.strip()]
    rng = np.random.RandomState(1234)
    for i in range(260):
        c = COLOURS[rng.randint(len(COLOURS))]
        c2 = COLOURS[rng.randint(len(COLOURS))]
        s = SHAPES[rng.randint(len(SHAPES))]
        s2 = SHAPES[rng.randint(len(SHAPES))]
        n = rng.randint(2, len(NUMBERS))
        p = PLACES[rng.randint(len(PLACES))]
        z = SIZES[rng.randint(len(SIZES))]
        kind = i % 8
        if kind == 0:
            lines.append(f"There is a {z} {c} {s} {p} of the image.")
        elif kind == 1:
            lines.append(f"What colour is the {s}? The {s} is {c}.")
        elif kind == 2:
            lines.append(f"How many {s}s are there? There are {NUMBERS[n]} {s}s.")
        elif kind == 3:
            lines.append(f"The {c} {s} is {p}, and the {c2} {s2} is {PLACES[(i * 7) % len(PLACES)]}.")
        elif kind == 4:
            lines.append(f"USER: What is {p}? ASSISTANT: A {z} {c} {s}.")
        elif kind == 5:
            lines.append(f"I count {n} {c} {s}s and {NUMBERS[(n + 3) % 11]} {c2} {s2}s in the picture.")
        elif kind == 6:
            lines.append(f"The picture shows {NUMBERS[n]} {z} shapes: a {c} {s} and a {c2} {s2}.")
        else:
            lines.append(f"Is the {s} {c}? No, the {s} is {c2}.")
    return lines


BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def build_tokenizer(out_dir: Path):
    """Llama-style BPE: <unk>=0 <s>=1 </s>=2, <0x00>..<0xFF>=3..258 (byte fallback), merges,
    then <image> and <pad> as added special tokens at the end (like llava-hf's 32000/32001)."""
    corpus = build_corpus()
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)

    base_specials = ["<unk>", "<s>", "</s>"]
    n_model_vocab = TOKENIZER_VOCAB - 2
    train = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    train.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(
        vocab_size=n_model_vocab,
        min_frequency=2,
        special_tokens=base_specials + BYTE_TOKENS,
        show_progress=False,
    )
    train.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(train.to_str())["model"]
    vocab = trained["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    assert len(vocab) == n_model_vocab, f"trainer produced {len(vocab)} tokens, wanted {n_model_vocab}"
    for i, t in enumerate(base_specials + BYTE_TOKENS):
        assert vocab[t] == i, (t, vocab[t])

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.pre_tokenizer = metaspace
    # Llama's decoder: "▁" -> " ", <0xNN> -> bytes, fuse, strip the one space the pre-tokenizer added.
    tok.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t in base_specials])
    tok.add_special_tokens([tokenizers.AddedToken("<image>", special=True, normalized=False),
                            tokenizers.AddedToken("<pad>", special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    image_id = tok.token_to_id("<image>")
    pad_id = tok.token_to_id("<pad>")
    assert (image_id, pad_id) == (n_model_vocab, n_model_vocab + 1), (image_id, pad_id)
    assert tok.get_vocab_size(with_added_tokens=True) == TOKENIZER_VOCAB

    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)
    added = {}
    for i, t in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (image_id, "<image>"), (pad_id, "<pad>")]:
        added[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "extra_special_tokens": {"image_token": "<image>"},
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    stm = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
           "image_token": "<image>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")
    return out_dir


def check_tokenizer(tok_dir: Path):
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    texts = [
        "What colour is the square?",
        "USER: <image>\nWhat colour is the square? ASSISTANT:",
        "inner  double  spaces and a trailing space ",
        "Unicode: caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 \u2014 \u00bd",
        "tabs\tand\nnewlines\r\n and <s> </s> <pad> <unk> literal specials",
        "Zebra-quokka xylophone 1234567890 !@#$%^&*()_+{}|:\"<>?~`",
        "",
    ]
    for t in texts:
        ids = raw.encode(t).ids
        assert ids == hf(t)["input_ids"], (t, ids, hf(t)["input_ids"])
        assert ids[:1] == [1] and ids[1:2] != [1], ids
        if not any(sp in t for sp in ("<s>", "</s>", "<pad>", "<unk>", "<image>")):
            assert 0 not in ids, f"unexpected <unk> in {t!r}: {raw.encode(t).tokens}"
            dec = raw.decode(ids, skip_special_tokens=True)
            assert dec == t, (t, dec)
            assert hf.decode(ids, skip_special_tokens=True) == t, (t, hf.decode(ids))
    return raw, hf


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------

def make_shapes_97x61(path: Path):
    w, h = 97, 61
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([
        40 + 150 * x / (w - 1),
        60 + 120 * y / (h - 1),
        200 - 100 * (x + y) / (w + h - 2),
    ], axis=-1)
    im = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([8, 10, 32, 34], fill=(220, 30, 30), outline=(0, 0, 0))          # red square
    d.ellipse([44, 6, 70, 32], fill=(30, 60, 220))                               # blue circle
    d.polygon([(74, 52), (94, 52), (84, 34)], fill=(40, 190, 60))                # green triangle
    d.line([(2, 58), (94, 40)], fill=(250, 230, 40), width=2)                    # yellow line
    for i in range(5):                                                           # white dots
        d.point([(40 + 4 * i, 50), (41 + 4 * i, 50), (40 + 4 * i, 51)], fill=(255, 255, 255))
    save_png(im, path)


def make_gray_40x70(path: Path):
    w, h = 40, 70
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 30 + 160 * y / (h - 1) + 25 * np.sin(x / 3.0)
    im = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "L")
    d = ImageDraw.Draw(im)
    d.rectangle([6, 8, 30, 24], fill=250)
    d.ellipse([10, 38, 34, 62], fill=15)
    d.line([(0, 69), (39, 30)], fill=128, width=1)
    save_png(im, path)


def make_rgba_90x60(path: Path):
    """RGBA with fully transparent, half transparent and opaque areas. Under transparent pixels
    the RGB is a loud magenta so that dropping alpha and compositing give visibly different
    results."""
    w, h = 90, 60
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.zeros((h, w, 3), np.float64)
    rgb[..., 0] = 60 + 150 * x / (w - 1)
    rgb[..., 1] = 200 - 120 * y / (h - 1)
    rgb[..., 2] = 90
    alpha = np.clip(np.round(255 * x / (w - 1)), 0, 255)    # left-to-right alpha ramp
    alpha[:, :12] = 0
    rgb[:, :12] = (255, 0, 255)                               # invisible magenta strip
    alpha[40:, :] = 128                                       # half transparent band
    arr = np.concatenate([rgb, alpha[..., None]], axis=-1)
    im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGBA")
    d = ImageDraw.Draw(im)
    d.rectangle([20, 8, 44, 32], fill=(220, 30, 30, 255))     # opaque red square
    d.ellipse([52, 10, 80, 38], fill=(30, 60, 220, 200))      # mostly opaque blue circle
    d.rectangle([0, 0, 10, 10], fill=(0, 255, 0, 0))          # invisible green
    save_png(im, path)


def make_demo_480x360(path: Path):
    w, h = 480, 360
    rng = np.random.RandomState(2024)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    tex = 18 * np.sin(x / 7.0) * np.cos(y / 11.0) + 10 * np.sin((x + 2 * y) / 23.0)
    noise = rng.randint(-12, 13, size=(h, w, 3)).astype(np.float64)
    checker = ((x // 40 + y // 40) % 2) * 14
    img = np.stack([
        70 + 90 * y / (h - 1) + tex + checker,
        110 + 50 * x / (w - 1) - tex + checker,
        160 - 60 * y / (h - 1) + 0.5 * tex + checker,
    ], axis=-1) + noise
    im = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([40, 50, 170, 180], fill=(215, 35, 35), outline=(20, 20, 20), width=4)   # red square
    d.ellipse([230, 40, 380, 190], fill=(35, 70, 215), outline=(250, 250, 250), width=3)  # blue circle
    d.polygon([(300, 330), (450, 330), (375, 210)], fill=(40, 185, 70))                   # green triangle
    star = []
    cx, cy = 110, 270
    for k in range(10):
        r = 60 if k % 2 == 0 else 25
        a = -math.pi / 2 + k * math.pi / 5
        star.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    d.polygon(star, fill=(245, 215, 40))                                                  # yellow star
    for i in range(6):                                                                    # orange dots
        d.ellipse([200 + 14 * i, 250, 210 + 14 * i, 260], fill=(250, 140, 20))
    d.line([(0, 355), (479, 215)], fill=(255, 255, 255), width=3)
    save_png(im, path)


def save_png(im: Image.Image, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=False, compress_level=9)


# ----------------------------------------------------------------------------------------------
# Image processor configs
# ----------------------------------------------------------------------------------------------

def clip_processor_dict(image_size: int):
    """preprocessor_config.json as published with llava-hf checkpoints (transformers 4.x)."""
    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": OPENAI_CLIP_STD,
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def slow_image_processor(cfg: dict):
    kw = {k: v for k, v in cfg.items() if k not in ("image_processor_type", "processor_class")}
    return SlowCLIPImageProcessor(**kw)


def load_image(path: Path):
    im = Image.open(path)
    im.load()
    return im


# ----------------------------------------------------------------------------------------------
# 2. Models
# ----------------------------------------------------------------------------------------------

def init_weights(model: torch.nn.Module, seed: int, std: float, embed_std: float, lm_head_std: float):
    """Larger-than-default random init so logits are not flat; deterministic by parameter name."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(
                seed * 1_000_003 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
            lname = name.lower()
            is_norm = any(k in lname for k in ("norm", "layrnorm", "layer_norm"))
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "patch_embedding" in lname:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "class_embedding" in lname:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "position_embedding" in lname:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif lname.endswith("lm_head.weight"):
                p.copy_(lm_head_std * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in lname:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def to_llava_hf_4x_key(k: str) -> str:
    """transformers 5.x module names -> published llava-hf (4.x) checkpoint keys."""
    if k.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + k[len("model.vision_tower."):]
    if k.startswith("model.multi_modal_projector."):
        return k[len("model."):]
    if k.startswith("model.language_model."):
        return "language_model.model." + k[len("model.language_model."):]
    if k == "lm_head.weight":
        return "language_model.lm_head.weight"
    raise KeyError(k)


def config_4x_style(cfg: LlavaConfig, dtype: str) -> dict:
    """A config.json in the shape the published llava-hf checkpoints have (written by 4.x):
    rope_theta instead of rope_parameters, torch_dtype instead of dtype."""
    d = cfg.to_dict()
    tc = d["text_config"]
    rp = tc.pop("rope_parameters", None) or {}
    tc["rope_theta"] = float(rp.get("rope_theta", getattr(cfg.text_config, "rope_theta", 10000.0)))
    tc.setdefault("rope_scaling", None)
    tc["architectures"] = ["LlamaForCausalLM"]
    for sub in (d, tc, d["vision_config"]):
        sub.pop("dtype", None)
        sub.pop("torch_dtype", None)
        sub.pop("transformers_version", None)
    tc["torch_dtype"] = dtype
    d["torch_dtype"] = dtype
    d["transformers_version"] = "4.45.0"  # the layout's vintage, not the generating version
    d["architectures"] = ["LlavaForConditionalGeneration"]
    d["ignore_index"] = -100
    return dict(sorted(d.items()))


def make_config(spec: dict, tok_ids: dict) -> LlavaConfig:
    v = spec["vision"]
    t = spec["text"]
    vc = CLIPVisionConfig(
        hidden_size=v["hidden"], intermediate_size=v["intermediate"],
        num_hidden_layers=v["layers"], num_attention_heads=v["heads"],
        image_size=v["image_size"], patch_size=v["patch"], projection_dim=v["hidden"],
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    tc = LlamaConfig(
        vocab_size=TOKENIZER_VOCAB, hidden_size=t["hidden"], intermediate_size=t["intermediate"],
        num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
        num_key_value_heads=t["kv_heads"], rms_norm_eps=1e-5,
        rope_theta=t["rope_theta"], max_position_embeddings=4096,
        tie_word_embeddings=t["tied"], bos_token_id=tok_ids["bos"], eos_token_id=tok_ids["eos"],
        pad_token_id=tok_ids["pad"], hidden_act="silu",
    )
    # transformers 5 may store the rope base only in rope_parameters; make sure it is the one asked
    rp = getattr(tc, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = float(t["rope_theta"])
    n_patches = (v["image_size"] // v["patch"]) ** 2
    visual = n_patches + (1 if spec["strategy"] == "full" else 0)
    cfg = LlavaConfig(
        vision_config=vc, text_config=tc, image_token_id=tok_ids["image"],
        projector_hidden_act="gelu", vision_feature_layer=spec["feature_layer"],
        vision_feature_select_strategy=spec["strategy"], image_seq_length=visual,
        tie_word_embeddings=t["tied"], pad_token_id=tok_ids["pad"],
    )
    return cfg


def write_processor_files(model_dir: Path, tok_dir: Path, spec: dict):
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / f, model_dir / f)
    size = spec["vision"]["image_size"]
    proc_cfg = {
        "image_token": "<image>",
        "num_additional_image_tokens": 1,
        "patch_size": spec["vision"]["patch"],
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": spec["strategy"],
    }
    if spec["layout"] == "llava_hf_4x":
        (model_dir / "preprocessor_config.json").write_text(
            json.dumps(clip_processor_dict(size), indent=2) + "\n")
        (model_dir / "processor_config.json").write_text(json.dumps(proc_cfg, indent=2) + "\n")
    else:
        # Whatever the running transformers writes.
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        proc = LlavaProcessor(image_processor=slow_image_processor(clip_processor_dict(size)),
                              tokenizer=tok, patch_size=spec["vision"]["patch"],
                              vision_feature_select_strategy=spec["strategy"],
                              num_additional_image_tokens=1, image_token="<image>")
        proc.save_pretrained(str(model_dir))
        # save_pretrained also rewrites the tokenizer files; keep the canonical ones.
        for f in ("tokenizer.json",):
            shutil.copy(tok_dir / f, model_dir / f)


def save_model(model: LlavaForConditionalGeneration, model_dir: Path, spec: dict):
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]
    dtype_name = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[spec["dtype"]]
    if spec["layout"] == "llava_hf_4x":
        sd = model.state_dict()
        out = {}
        for k, t in sd.items():
            if "rotary_emb" in k or k.endswith("position_ids"):
                continue
            out[to_llava_hf_4x_key(k)] = t.detach().to(dtype).contiguous().clone()
        assert "language_model.lm_head.weight" in out
        save_file(out, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
        cfg = config_4x_style(model.config, dtype_name)
        (model_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": model.config.pad_token_id,
               "transformers_version": "4.45.0"}
        (model_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    else:
        m = model.to(dtype)
        m.save_pretrained(str(model_dir), max_shard_size=spec.get("max_shard_size", "1GB"))
        model.to(torch.float32)


def load_saved(model_dir: Path):
    model, info = LlavaForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    # Non-persistent buffers never appear; anything else missing/unexpected is an error.
    missing = [k for k in info.get("missing_keys", []) if "rotary" not in k and "position_ids" not in k]
    unexpected = [k for k in info.get("unexpected_keys", []) if "position_ids" not in k]
    if missing or unexpected or info.get("mismatched_keys"):
        raise RuntimeError(f"{model_dir}: loading info {bad}")
    model.eval()
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model


def tensor_stats(t):
    return {"min": float(t.min()), "max": float(t.max()), "std": float(t.float().std())}


@torch.no_grad()
def run_oracle(model, processor, image, question, spec):
    prompt = PROMPT_TEMPLATE.format(question=question)
    enc = processor(images=image, text=prompt, return_tensors="pt")
    input_ids = enc["input_ids"]
    pixel_values = enc["pixel_values"].to(torch.float32)
    assert input_ids.shape[0] == 1 and pixel_values.shape[0] == 1
    cfg = model.config
    image_token_id = cfg.image_token_id
    visual_tokens = int((input_ids == image_token_id).sum())

    # Capture the projector's input/output inside the real forward pass.
    captured = {}

    def hook(_m, inp, out):
        captured["in"] = inp[0].detach().clone()
        captured["out"] = out.detach().clone()

    h = model.model.multi_modal_projector.register_forward_hook(hook)
    attn = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attn, use_cache=False)
    h.remove()
    prefill_logits = out.logits[0].float()

    # Independent computation of the selected vision features.
    vt = model.model.vision_tower(pixel_values, output_hidden_states=True)
    hs = vt.hidden_states
    layer = cfg.vision_feature_layer
    sel = hs[layer]
    if cfg.vision_feature_select_strategy == "default":
        sel = sel[:, 1:]
    vision_features = sel[0].float()
    image_features = model.model.multi_modal_projector(sel)[0].float()
    assert torch.equal(captured["in"][0], vision_features), "projector input != hidden_states[layer]"
    assert torch.allclose(captured["out"][0], image_features, atol=1e-6)
    assert vision_features.shape[0] == visual_tokens, (vision_features.shape, visual_tokens)
    # hidden_states[0] is the embedding output after pre_layrnorm (checked, for the README)
    emb = model.model.vision_tower.embeddings(pixel_values)
    pre = model.model.vision_tower.pre_layrnorm(emb)
    semantics = {
        "num_hidden_states": len(hs),
        "hidden_states_0_is_pre_layrnorm_output": bool(torch.allclose(hs[0], pre, atol=1e-6)),
        "selected_index": layer if layer >= 0 else len(hs) + layer,
    }

    # Greedy: full recompute every step, explicit all-ones attention mask, no EOS stop.
    ids = input_ids.clone()
    tokens, margins = [], []
    for _ in range(MAX_NEW_TOKENS):
        o = model(input_ids=ids, pixel_values=pixel_values, attention_mask=torch.ones_like(ids),
                  use_cache=False)
        last = o.logits[0, -1].float()
        top2 = torch.topk(last, 2)
        nxt = int(top2.indices[0])
        margins.append(float(top2.values[0] - top2.values[1]))
        tokens.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)

    # Cross-check against generate() with an explicit mask (up to the first EOS it may stop at).
    gen = model.generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attn,
                         do_sample=False, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=0)
    gen_tokens = gen[0, input_ids.shape[1]:].tolist()
    n = len(gen_tokens)
    assert gen_tokens == tokens[:n], (gen_tokens, tokens)

    return {
        "prompt": prompt,
        "input_ids": input_ids[0].to(torch.int64),
        "pixel_values": pixel_values[0].contiguous(),
        "vision_features": vision_features.contiguous(),
        "image_features": image_features.contiguous(),
        "prefill_logits": prefill_logits.contiguous(),
        "greedy_tokens": torch.tensor(tokens, dtype=torch.int64),
        "margins": margins,
        "visual_tokens": visual_tokens,
        "semantics": semantics,
    }


def quality(res):
    """Margins relative to the logit scale; used to pick a seed whose greedy path is robust."""
    last = res["prefill_logits"][-1]
    scale = float(last.abs().max())
    m = res["margins"]
    return scale, min(m) / scale, m[0] / scale, len(set(res["greedy_tokens"].tolist()))


MODEL_SPECS = [
    {
        "name": "gqa_untied",
        "dir": "tests/fixtures/models/gqa_untied",
        "layout": "llava_hf_4x",
        "dtype": "f32",
        "vision": {"hidden": 32, "intermediate": 64, "layers": 3, "heads": 4, "image_size": 56,
                   "patch": 14},
        "text": {"hidden": 64, "intermediate": 128, "layers": 3, "heads": 4, "kv_heads": 2,
                 "rope_theta": 10000.0, "tied": False},
        "feature_layer": -2,
        "strategy": "default",
        "image": "tests/fixtures/images/shapes_97x61.png",
        "question": "What colour is the square?",
        "seed": 1000,
        "init": {"std": 0.08, "embed_std": 0.1, "lm_head_std": 0.2},
        "full_logits": True,
    },
    {
        "name": "tied_full_layer",
        "dir": "tests/fixtures/models/tied_full_layer",
        "layout": "transformers_5x",
        "dtype": "bf16",
        "max_shard_size": "200KB",
        "vision": {"hidden": 32, "intermediate": 64, "layers": 3, "heads": 4, "image_size": 42,
                   "patch": 14},
        "text": {"hidden": 64, "intermediate": 128, "layers": 3, "heads": 4, "kv_heads": 4,
                 "rope_theta": 500000.0, "tied": True},
        "feature_layer": 1,
        "strategy": "full",
        "image": "tests/fixtures/images/shapes_97x61.png",
        "question": "How many circles are in the picture?",
        "seed": 2000,
        # With a tied head a strong embedding makes every step echo the last token.
        "init": {"std": 0.12, "embed_std": 0.06, "lm_head_std": 0.06},
        "full_logits": True,
    },
    {
        "name": "llava-tiny-random",
        "dir": "assets/llava-tiny-random",
        "layout": "llava_hf_4x",
        "dtype": "f16",
        "vision": {"hidden": 32, "intermediate": 64, "layers": 2, "heads": 4, "image_size": 336,
                   "patch": 14},
        "text": {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2,
                 "rope_theta": 10000.0, "tied": False},
        "feature_layer": -2,
        "strategy": "default",
        "image": "assets/images/demo.png",
        "question": "Describe the image.",
        "seed": 3000,
        "init": {"std": 0.08, "embed_std": 0.1, "lm_head_std": 0.2},
        "full_logits": False,
    },
]

# Acceptance of a seed: the greedy path must not hinge on near-ties (f32 GPU vs CPU differ by
# ~1e-6 relative; f16 weight storage by ~1e-3), and it should not be one repeated token.
MIN_REL_MARGIN = 0.01
MIN_REL_MARGIN_FIRST = 0.05
MIN_DISTINCT = 3
MAX_SEED_TRIES = 40


def build_model(spec, root: Path, tok_dir: Path, tok_ids: dict, log):
    model_dir = root / spec["dir"]
    image_path = root / spec["image"]
    image = load_image(image_path)
    cfg = make_config(spec, tok_ids)
    chosen = None
    for attempt in range(MAX_SEED_TRIES):
        seed = spec["seed"] + attempt
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg)
        init_weights(model, seed, **spec["init"])
        if spec["text"]["tied"]:
            assert model.lm_head.weight.data_ptr() == \
                model.model.language_model.embed_tokens.weight.data_ptr(), "not tied"
        model.eval()
        save_model(model, model_dir, spec)
        write_processor_files(model_dir, tok_dir, spec)
        loaded = load_saved(model_dir)
        processor = LlavaProcessor.from_pretrained(str(model_dir))
        # The processor from the directory must be the slow/PIL one or agree with it exactly.
        ref_proc = slow_image_processor(clip_processor_dict(spec["vision"]["image_size"]))
        pv_dir = processor.image_processor(image, return_tensors="pt")["pixel_values"]
        pv_ref = ref_proc(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(pv_dir.float(), pv_ref.float()), "directory processor != PIL CLIP processor"
        processor.image_processor = ref_proc
        res = run_oracle(loaded, processor, image, spec["question"], spec)
        scale, rel_min, rel_first, distinct = quality(res)
        ok = (rel_min >= MIN_REL_MARGIN and rel_first >= MIN_REL_MARGIN_FIRST
              and distinct >= MIN_DISTINCT and math.isfinite(scale) and scale < 30)
        log(f"  {spec['name']}: seed {seed}: max|logit| {scale:.2f}, min margin {rel_min:.3f}, "
            f"first margin {rel_first:.3f}, distinct {distinct} -> {'ok' if ok else 'retry'}")
        if ok:
            chosen = (seed, model, loaded, processor, res)
            break
    if chosen is None:
        raise RuntimeError(f"{spec['name']}: no seed met the margin criteria")
    seed, model, loaded, processor, res = chosen

    # Layout checks
    if spec["layout"] == "llava_hf_4x":
        with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert any(k.startswith("vision_tower.vision_model.") for k in keys)
        # the saved-and-reloaded model must agree with the in-memory one (after dtype rounding)
        ref = LlavaForConditionalGeneration(cfg)
        ref.load_state_dict({k: v.to(torch.float32) for k, v in
                             {k: v.to({"f32": torch.float32, "f16": torch.float16,
                                       "bf16": torch.bfloat16}[spec["dtype"]])
                              for k, v in model.state_dict().items()}.items()})
        for (k1, a), (k2, b) in zip(sorted(ref.state_dict().items()),
                                    sorted(loaded.state_dict().items())):
            assert k1 == k2 and torch.equal(a, b), k1
    if spec["text"]["tied"]:
        assert loaded.lm_head.weight.data_ptr() == \
            loaded.model.language_model.embed_tokens.weight.data_ptr(), "tie lost on load"

    # Sanity: the image matters.
    with torch.no_grad():
        other = torch.zeros_like(res["pixel_values"])[None]
        o2 = loaded(input_ids=res["input_ids"][None], pixel_values=other,
                    attention_mask=torch.ones_like(res["input_ids"][None]), use_cache=False)
        img_effect = float((o2.logits[0, -1] - res["prefill_logits"][-1]).abs().max())
    assert img_effect > 1e-2, f"image has no visible effect on the logits ({img_effect})"
    for k in ("vision_features", "image_features", "prefill_logits"):
        assert torch.isfinite(res[k]).all(), k

    tensors = {
        "input_ids": res["input_ids"],
        "pixel_values": res["pixel_values"],
        "vision_features": res["vision_features"],
        "image_features": res["image_features"],
        "prefill_logits_last": res["prefill_logits"][-1].clone().contiguous(),
        "greedy_tokens": res["greedy_tokens"],
    }
    if spec["full_logits"]:
        tensors["prefill_logits"] = res["prefill_logits"]
    save_file(tensors, str(model_dir / "oracle.safetensors"),
              metadata={"generator": "scripts/make_fixtures.py"})
    tok = processor.tokenizer
    greedy_text = tok.decode(res["greedy_tokens"].tolist(), skip_special_tokens=True)
    meta = {
        "question": spec["question"],
        "prompt": res["prompt"],
        "image": spec["image"],
        "max_new_tokens": MAX_NEW_TOKENS,
        "greedy_text": greedy_text,
        "greedy_tokens": res["greedy_tokens"].tolist(),
        "greedy_margins": [round(m, 6) for m in res["margins"]],
        "eos_token_id": tok_ids["eos"],
        "bos_token_id": tok_ids["bos"],
        "pad_token_id": tok_ids["pad"],
        "stops_at_eos": False,
        "visual_tokens": res["visual_tokens"],
        "image_token_id": tok_ids["image"],
        "prompt_tokens": int(res["input_ids"].shape[0]),
        "vision_feature_layer": spec["feature_layer"],
        "vision_feature_select_strategy": spec["strategy"],
        "vision_hidden_states": res["semantics"],
        "weights_dtype": spec["dtype"],
        "oracle_dtype": "float32 (weights loaded from the saved files and upcast)",
        "layout": spec["layout"],
        "seed": seed,
        "image_effect_max_abs_logit_change": round(img_effect, 4),
        "logit_stats_last": tensor_stats(res["prefill_logits"][-1]),
        "image_processor": type(processor.image_processor).__name__ + " (PIL, use_fast=False)",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (model_dir / "oracle.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log(f"  {spec['name']}: L={meta['prompt_tokens']} visual={meta['visual_tokens']} "
        f"greedy={meta['greedy_tokens']} {greedy_text!r}")
    return meta


# ----------------------------------------------------------------------------------------------
# 3. Preprocessing oracle
# ----------------------------------------------------------------------------------------------

PREPROCESS_CASES = [
    ("shapes_97x61_to_56", "tests/fixtures/images/shapes_97x61.png", 56),
    ("gray_40x70_to_42", "tests/fixtures/images/gray_40x70.png", 42),
    ("demo_480x360_to_336", "assets/images/demo.png", 336),
    ("rgba_90x60_to_56", "tests/fixtures/images/rgba_90x60.png", 56),
]


def build_preprocess(root: Path, log):
    out_dir = root / "tests/fixtures/preprocess"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    from transformers.image_transforms import get_resize_output_image_size
    for name, rel, size in PREPROCESS_CASES:
        cfg = clip_processor_dict(size)
        proc = slow_image_processor(cfg)
        image = load_image(root / rel)
        pv = proc(image, return_tensors="pt")["pixel_values"][0].to(torch.float32).contiguous()
        # The same pipeline without rescale/normalise: the uint8 image after RGB conversion,
        # resize and centre crop (to debug resize separately from the arithmetic after it).
        raw = proc(image, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
        assert raw.dtype == np.uint8 or np.all(raw == np.round(raw)), raw.dtype
        resized_u8 = torch.from_numpy(np.ascontiguousarray(raw.astype(np.uint8)))
        mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
        recon = (resized_u8.double() / 255 - mean.double()) / std.double()
        recon_err = float((recon.float() - pv).abs().max())
        assert recon_err < 1e-5, recon_err
        rgb = np.array(image.convert("RGBA")) if image.mode == "RGBA" else None
        h0, w0 = image.height, image.width
        rh, rw = get_resize_output_image_size(np.zeros((h0, w0, 1), np.uint8), size=size,
                                              default_to_square=False)
        tensors = {"pixel_values": pv, "resized_u8": resized_u8}
        extra = {}
        if rgb is not None:
            # transformers 4.x's convert_rgb did PIL .convert("RGB"), which drops alpha.
            dropped = image.convert("RGB")
            pv_dropped = proc(dropped, return_tensors="pt")["pixel_values"][0].to(torch.float32)
            tensors["pixel_values_alpha_dropped"] = pv_dropped.contiguous()
            composited = np.array(Image.alpha_composite(
                Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB"))
            pv_comp = proc(Image.fromarray(composited), return_tensors="pt")["pixel_values"][0]
            same_as_composite = bool(torch.equal(pv_comp.float(), pv))
            same_as_dropped = bool(torch.equal(pv_dropped, pv))
            extra["rgba_handling"] = {
                "processor_output_equals_alpha_composite_on_white": same_as_composite,
                "processor_output_equals_alpha_dropped": same_as_dropped,
                "note": ("transformers 5.x convert_to_rgb composites RGBA onto an opaque white "
                         "background with PIL.Image.alpha_composite, then converts to RGB; "
                         "transformers 4.x used image.convert('RGB'), which drops alpha. "
                         "pixel_values_alpha_dropped holds the 4.x result."),
            }
            log(f"  {name}: RGBA -> composite-on-white {same_as_composite}, "
                f"alpha-dropped {same_as_dropped}")
        meta = dict(cfg)
        meta.update({
            "image": rel,
            "image_mode": image.mode,
            "image_size_wh": [w0, h0],
            "resized_size_hw": [int(rh), int(rw)],
            "crop_offset_top_left": [(int(rh) - size) // 2, (int(rw) - size) // 2],
            "image_processor_class": type(proc).__name__,
            "use_fast": False,
            "note": ("slow PIL-based CLIP image processor (transformers 5.x CLIPImageProcessorPil "
                     "== transformers 4.x CLIPImageProcessor); resize = PIL bicubic on uint8, "
                     "new long edge = int(shortest_edge * long / short), crop offset = "
                     "(resized - crop) // 2, then (x / 255 - mean) / std"),
            "tensors": {
                "pixel_values": "f32 [3,H,W], the processor output",
                "resized_u8": "u8 [3,H,W], RGB after conversion, resize and centre crop",
            },
            "transformers_version": transformers.__version__,
            "pillow_version": PIL.__version__,
        })
        if "pixel_values_alpha_dropped" in tensors:
            meta["tensors"]["pixel_values_alpha_dropped"] = "f32 [3,H,W], alpha dropped (4.x)"
        meta.update(extra)
        save_file(tensors, str(out_dir / f"{name}.safetensors"),
                  metadata={"generator": "scripts/make_fixtures.py"})
        (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        log(f"  {name}: {w0}x{h0} {image.mode} -> resize {rw}x{rh} -> crop {size}; "
            f"pixel_values range [{float(pv.min()):.3f}, {float(pv.max()):.3f}]")


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                    help="repository root (default: the parent of scripts/)")
    args = ap.parse_args()
    root = Path(args.root).resolve()

    def log(msg):
        print(msg, flush=True)

    log(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, tokenizers {tokenizers.__version__}, numpy {np.__version__}, "
        f"pillow {PIL.__version__}, safetensors {safetensors.__version__}")

    log("images")
    make_shapes_97x61(root / "tests/fixtures/images/shapes_97x61.png")
    make_gray_40x70(root / "tests/fixtures/images/gray_40x70.png")
    make_rgba_90x60(root / "tests/fixtures/images/rgba_90x60.png")
    make_demo_480x360(root / "assets/images/demo.png")

    log("tokenizer")
    tok_dir = build_tokenizer(root / "tests/fixtures/tokenizer")
    raw, _hf = check_tokenizer(tok_dir)
    tok_ids = {"unk": 0, "bos": 1, "eos": 2, "image": raw.token_to_id("<image>"),
               "pad": raw.token_to_id("<pad>")}
    log(f"  vocab {raw.get_vocab_size()} (with added tokens), ids {tok_ids}")

    log("models")
    for spec in MODEL_SPECS:
        build_model(spec, root, tok_dir, tok_ids, log)

    log("preprocess")
    build_preprocess(root, log)
    log("done")


if __name__ == "__main__":
    main()
