#!/usr/bin/env python3
"""Oracle for ToMe across the layers of a vision tower: carried token sizes and proportional
attention, on the committed tests/fixtures/models/gqa_untied model.

    python scripts/make_tome_fixture.py [--root REPO_ROOT]

The tower is run layer by layer with the transformers modules (float32, CPU): attention logits
gain log(size) of each key once tokens carry sizes (ToMe's proportional attention), and after the
attention residual of each listed layer one ToMe step of scripts/reduce_reference.py (numpy, the
metric = that layer's key projections, sizes carried) shortens the sequence; the MLP then runs on
the survivors. The selected features (the second-to-last layer, [CLS] dropped) go through the
projector. Writes tests/fixtures/models/gqa_untied/tome.safetensors: `image_features` f32
[16 - dropped, D], `kept_patches` i64 (grid index of each output token), `sizes` f32 (patches
each token stands for), and the plan in its metadata. Deterministic.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reduce_reference as rr  # noqa: E402

# (layer, tokens merged after its attention); the tower runs layers 0 and 1 (feature layer -2).
PLAN = [(0, 5), (1, 3)]


def attention(layer, h, sizes):
    """CLIP self-attention with ToMe's size bias; returns (output, key projections)."""
    att = layer.self_attn
    n, d = h.shape
    heads = att.num_heads
    hd = d // heads
    q = att.q_proj(h).view(n, heads, hd).transpose(0, 1)
    k_flat = att.k_proj(h)
    k = k_flat.view(n, heads, hd).transpose(0, 1)
    v = att.v_proj(h).view(n, heads, hd).transpose(0, 1)
    logits = q @ k.transpose(1, 2) * hd ** -0.5 + torch.log(sizes)[None, None, :]
    out = torch.softmax(logits, dim=-1) @ v
    return att.out_proj(out.transpose(0, 1).reshape(n, d)), k_flat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = ap.parse_args()
    model_dir = Path(args.root) / "tests" / "fixtures" / "models" / "gqa_untied"
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    oracle = json.loads((model_dir / "oracle.json").read_text())
    assert oracle["vision_feature_layer"] == -2 and oracle["vision_feature_select_strategy"] == "default"
    from safetensors.torch import load_file
    pixels = load_file(model_dir / "oracle.safetensors")["pixel_values"].float()

    tower = model.model.vision_tower
    tower = getattr(tower, "vision_model", tower)
    grid = tower.config.image_size // tower.config.patch_size
    drops = dict(PLAN)
    with torch.no_grad():
        x = tower.embeddings(pixels[None])[0]
        x = tower.pre_layrnorm(x)
        n = x.shape[0]
        sizes = torch.ones(n, dtype=torch.float64)
        positions = np.arange(-1, n - 1, dtype=np.int64)  # grid index, -1 for [CLS]
        layers = tower.encoder.layers[: len(tower.encoder.layers) - 1]
        for i, layer in enumerate(layers):
            out, keys = attention(layer, layer.layer_norm1(x), sizes.float())
            x = x + out
            if drops.get(i, 0) > 0:
                n = x.shape[0]
                st = rr.reduce("tome", x.double().numpy(), np.zeros((n, n)), positions, drops[i],
                               keys=keys.double().numpy(), cls=0, grid=grid,
                               sizes=sizes.numpy())
                x = torch.from_numpy(st.hidden.astype(np.float32))
                sizes = torch.from_numpy(st.sizes.astype(np.float64))
                positions = positions[st.kept]
            x = x + layer.mlp(layer.layer_norm2(x))
        features = x[1:]
        image_features = model.model.multi_modal_projector(features[None])[0]
    out = model_dir / "tome.safetensors"
    save_file({
        "image_features": image_features.numpy().astype(np.float32),
        "kept_patches": positions[1:].astype(np.int64),
        "sizes": sizes.numpy()[1:].astype(np.float32),
    }, str(out), metadata={"plan": json.dumps(PLAN)})
    print(f"ToMe {PLAN}: {len(positions) - 1} visual tokens, sizes {sizes.numpy()[1:].tolist()}, "
          f"wrote {out}")


if __name__ == "__main__":
    main()
