"""Regenerates the Pillow 13.0.0 BICUBIC resize cases used by crates/media/tests/pillow13_pass_order.rs.

    pip install pillow==13.0.0 && python make.py

Each case: a random RGB image (seeded) and Pillow's `Image.resize((ow, oh), Image.BICUBIC)` of it,
stored raw (HWC bytes) with the sizes in cases.json.
"""
import json
import random

from PIL import Image

random.seed(13)
SIZES = [
    # (w, h, ow, oh): both shrink, both grow, width grows while height shrinks, the reverse,
    # a video frame budget (proportional), the fixture-like shapes
    (64, 48, 40, 28),
    (30, 20, 44, 36),
    (40, 30, 56, 28),
    (40, 30, 28, 42),
    (96, 54, 56, 28),
    (80, 48, 84, 42),
    (50, 35, 56, 28),
    (32, 18, 84, 84),
    # portrait and landscape frames to a square tower input (VideoLLaMA 2's SigLIP 384 × 384,
    # scaled down): portrait goes vertical first in Pillow 13
    (36, 64, 24, 24),
    (64, 36, 24, 24),
    (30, 40, 24, 24),
    (27, 48, 24, 24),
    (36, 64, 21, 37),
]
cases = []
for k, (w, h, ow, oh) in enumerate(SIZES):
    data = bytes(random.getrandbits(8) for _ in range(w * h * 3))
    out = Image.frombytes("RGB", (w, h), data).resize((ow, oh), Image.BICUBIC).tobytes()
    cases.append({"w": w, "h": h, "ow": ow, "oh": oh, "in": data.hex(), "out": out.hex()})
with open("cases.json", "w") as f:
    json.dump({"pillow": "13.0.0", "cases": cases}, f)
