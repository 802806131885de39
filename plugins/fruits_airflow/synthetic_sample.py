"""A small SYNTHETIC labelled image set in the Fruits-360 layout, for trying the pipeline without any download.

    python -m fruits_airflow.synthetic_sample OUT_DIR [--per-label 100] [--seed 360]

Writes ``OUT_DIR/{Training,Test}/<label>/<n>_100.jpg``: 100x100 RGB JPEGs of simple drawn fruits (an apple, a
banana, a lime) on a white background, like Fruits-360's photos, with random size, position, rotation, colour
and noise so that no two are alike. These are drawings, not photos: the pipeline runs on them end to end, but
their features say nothing about real fruit. The label names end in ``(synthetic)`` so that no report can pass
them off as real data, and ``OUT_DIR/SYNTHETIC.txt`` says so too. The same seed gives the same bytes.
"""
from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 100
TEST_SHARE = 0.2  # Fruits-360 keeps about a quarter of its images for Test


def _jitter(rng: random.Random, colour: tuple[int, int, int], spread: int = 25) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-spread, spread))) for c in colour)  # type: ignore[return-value]


def _apple(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, r: float) -> None:
    draw.ellipse((cx - r, cy - r * 0.9, cx + r, cy + r), fill=_jitter(rng, (200, 30, 35)))
    draw.ellipse((cx - r * 0.5, cy - r * 0.6, cx - r * 0.1, cy - r * 0.2), fill=_jitter(rng, (240, 120, 110)))
    draw.line((cx, cy - r * 0.8, cx + r * 0.15, cy - r * 1.25), fill=(90, 60, 20), width=max(2, int(r / 10)))
    draw.ellipse((cx + r * 0.1, cy - r * 1.2, cx + r * 0.6, cy - r * 0.95), fill=_jitter(rng, (60, 150, 50)))


def _banana(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, r: float) -> None:
    box = (cx - r * 1.3, cy - r * 1.1, cx + r * 1.3, cy + r * 1.1)
    draw.chord(box, 20, 160, fill=_jitter(rng, (235, 205, 40)))
    inner = (box[0] + r * 0.35, box[1] - r * 0.25, box[2] - r * 0.35, box[3] - r * 0.55)
    draw.chord(inner, 20, 160, fill=(255, 255, 255))
    draw.ellipse((box[2] - r * 0.45, cy + r * 0.2, box[2] - r * 0.25, cy + r * 0.4), fill=(80, 60, 20))


def _lime(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, r: float) -> None:
    draw.ellipse((cx - r * 1.05, cy - r * 0.85, cx + r * 1.05, cy + r * 0.85), fill=_jitter(rng, (70, 170, 40)))
    for _ in range(12):  # the peel's pores
        px, py = cx + rng.uniform(-0.7, 0.7) * r, cy + rng.uniform(-0.5, 0.5) * r
        draw.point((px, py), fill=_jitter(rng, (40, 120, 30)))
    draw.ellipse((cx + r * 0.9, cy - r * 0.1, cx + r * 1.15, cy + r * 0.1), fill=(50, 110, 30))


FRUITS: dict[str, Callable[[ImageDraw.ImageDraw, random.Random, float, float, float], None]] = {
    "Apple (synthetic)": _apple,
    "Banana (synthetic)": _banana,
    "Lime (synthetic)": _lime,
}


def draw_fruit(label: str, rng: random.Random) -> Image.Image:
    """One 100x100 image of ``label``: the fruit, randomly placed and turned, on white, with sensor-like noise."""
    canvas = Image.new("RGB", (SIZE * 2, SIZE * 2), (255, 255, 255))  # drawn at 2x, then downsampled: smooth edges
    r = rng.uniform(0.28, 0.38) * SIZE * 2
    cx, cy = SIZE + rng.uniform(-0.1, 0.1) * SIZE * 2, SIZE + rng.uniform(-0.1, 0.1) * SIZE * 2
    FRUITS[label](ImageDraw.Draw(canvas), rng, cx, cy, r)
    canvas = canvas.rotate(rng.uniform(-35, 35), resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    image = canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(0.4))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 3, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def write_sample(out_dir: Path, per_label: int = 100, seed: int = 360) -> int:
    """Write ``per_label`` images of each label, split between Training and Test; returns how many."""
    rng = random.Random(seed)
    written = 0
    for label in FRUITS:
        for n in range(per_label):
            split = "Test" if n < per_label * TEST_SHARE else "Training"
            target = out_dir / split / label / f"{n}_100.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            draw_fruit(label, rng).save(target, "JPEG", quality=90)
            written += 1
    (out_dir / "SYNTHETIC.txt").write_text(
        "SYNTHETIC DATA: drawings made by fruits_airflow.synthetic_sample, not photographs.\n"
        "For trying the pipeline only; for real images use Fruits-360 (Kaggle moltean/fruits).\n",
        encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-label", type=int, default=100)
    parser.add_argument("--seed", type=int, default=360)
    args = parser.parse_args(argv)
    count = write_sample(args.out_dir, args.per_label, args.seed)
    print(f"wrote {count} synthetic images ({len(FRUITS)} labels) under {args.out_dir}")


if __name__ == "__main__":
    main()
