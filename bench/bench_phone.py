"""Side-by-side benchmark of clean + embed on phone photos (12 MP JPEGs, some sideways, a few HEIC).

One run, the same photos, the same machine:
  1. per-photo CPU, one thread, in this process: the pipeline's path (clean: one decode at the size the model
     needs + the normalized image; embed: decode the normalized image + resize + inference) against the plain
     reference path that the pipeline took before (clean: full decode + EXIF transpose + RGB; embed: the same
     full decode again + bilinear resize to 224 + inference);
  2. the clean and embed jobs in Spark ``local[*]``, warm, on all the photos: images/s, and the clean dataset's
     bytes per photo against the originals';
  3. memory: clean and embed as ``spark-submit`` with Spark's default 1 GB driver in ``local[2]`` on
     ``--memory-photos`` photos (they must finish; peak memory reported).
The photos are made from the real sample by ``tests/phone_photos.py`` and cached under ``local/bench-phone/``
(git-ignored: never committed). Writes ``bench/results/phone.json``. Usage: ``make bench``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "spark_jobs"), str(REPO / "tests"), str(REPO / "bench")]

from bench_embed import PeakRss, spark_session  # noqa: E402
from phone_photos import phone_bytes, upright_picture  # noqa: E402

RUN_DATE = dt.date(2026, 1, 1)
HEIC_EVERY = 20  # one photo in 20 is a HEIC (12 MP HEIC encoding is slow: a few are enough)
SIDEWAYS_EVERY = 4  # one in 4 stored sideways with EXIF orientation 6 (held in portrait)


def make_photos(sample: Path, folder: Path, count: int, heic_until: int) -> list[Path]:
    """``count`` phone photos from the sample's images (round-robin over labels), made once and kept; HEICs only
    among the first ``heic_until`` (the speed set)."""
    sources = sorted(sample.glob("Training/*/*.jpg"))
    by_label: dict[str, list[Path]] = {}
    for path in sources:
        by_label.setdefault(path.parent.name, []).append(path)
    queues = list(by_label.values())
    photos = []
    for i in range(count):
        source = queues[i % len(queues)][i // len(queues)]
        fmt = "HEIF" if i < heic_until and i % HEIC_EVERY == HEIC_EVERY - 1 else "JPEG"
        orientation = 6 if fmt == "JPEG" and i % SIDEWAYS_EVERY == 1 else 1
        target = folder / f"IMG_{i:04d}.{'HEIC' if fmt == 'HEIF' else 'jpg'}"
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            target.write_bytes(phone_bytes(upright_picture(source, seed=i), fmt, orientation))
        photos.append(target)
    return photos


def onnx_model(weights: str) -> str:
    """The ONNX export of the weights, as the embed job uses it (exported once if missing)."""
    from fruits_common import embedding

    name = embedding.onnx_name(weights)
    for candidate in (Path(weights).parent / name, embedding.MODEL_CACHE / name):
        if candidate.is_file():
            return str(candidate)
    return str(embedding.export_onnx(weights, embedding.MODEL_CACHE / name))


def cpu_ms_per_photo(photos: list[Path], weights: str, batch: int = 32) -> dict[str, float]:
    """Per-photo CPU (ms, this thread) of each step on both paths; inference measured once, shared."""
    from PIL import Image

    from fruits_common import embedding, images

    model = embedding.get_model(onnx_model(weights), "onnx", threads=1)
    data = [p.read_bytes() for p in photos]

    def timed(function) -> tuple[float, list]:
        start = time.thread_time()
        out = [function(d) for d in data]
        return (time.thread_time() - start) * 1000 / len(data), out

    def reference_clean(content: bytes):
        rgb = images.decode_rgb(content)  # full decode, EXIF transpose, RGB
        grey = rgb.convert("L")
        grey.thumbnail((128, 128))
        return float(np.asarray(grey).std())

    def reference_embed_input(content: bytes):
        return np.asarray(images.decode_rgb(content).resize(images.MODEL_INPUT_SIZE, Image.BILINEAR), np.uint8)

    ref_clean, _ = timed(reference_clean)
    ref_input, pixels = timed(reference_embed_input)
    our_clean, cleaned = timed(images.clean_image)
    normalized = [c.content for c in cleaned]
    start = time.thread_time()
    our_pixels = [images.model_input(c) for c in normalized]
    our_input = (time.thread_time() - start) * 1000 / len(data)
    model(np.stack(our_pixels[:batch]))  # warm
    start = time.thread_time()
    for i in range(0, len(our_pixels), batch):
        model(np.stack(our_pixels[i : i + batch]))
    inference = (time.thread_time() - start) * 1000 / len(data)
    pixels16 = [p.astype(np.int16) for p in pixels]
    return {
        "reference_clean_ms": round(ref_clean, 1),
        "reference_embed_ms": round(ref_input + inference, 1),
        "reference_total_ms": round(ref_clean + ref_input + inference, 1),
        "clean_ms": round(our_clean, 1),
        "embed_ms": round(our_input + inference, 1),
        "total_ms": round(our_clean + our_input + inference, 1),
        "inference_ms": round(inference, 1),
        "photos": len(photos),
        "original_bytes_per_photo": round(sum(len(d) for d in data) / len(data)),
        "normalized_bytes_per_photo": round(sum(len(c) for c in normalized) / len(data)),
        # How far the model's input moved (grey levels, mean over pixels and photos): the price of decoding small.
        "model_input_mean_abs_difference": round(
            float(np.mean([np.abs(a - b.astype(np.int16)).mean() for a, b in zip(pixels16, our_pixels, strict=True)])),
            3,
        ),
    }


def spark_jobs(photos_dir: Path, work: Path, weights: str) -> dict[str, float]:
    """clean + embed in Spark local[*], warm (a first run on a few photos starts the workers and the model)."""
    from pyspark.sql import functions as F

    import clean
    import embed

    spark = spark_session()
    warm = work / "warm"
    warm.mkdir()
    for photo in sorted(photos_dir.iterdir())[:8]:
        (warm / photo.name).symlink_to(photo)
    clean.run(spark, str(warm), str(work / "warm_clean"), str(work / "warm_rejected"), RUN_DATE)
    embed.run(spark, str(work / "warm_clean"), str(work / "warm_embed"), weights)

    with PeakRss() as rss:
        start = time.perf_counter()
        kept = clean.run(spark, str(photos_dir), str(work / "clean"), str(work / "rejected"), RUN_DATE)["kept"]
        clean_s = time.perf_counter() - start
        start = time.perf_counter()
        embedded = embed.run(spark, str(work / "clean"), str(work / "embed"), weights)["embedded"]
        embed_s = time.perf_counter() - start
    clean_df = spark.read.parquet(str(work / "clean"))
    stored = clean_df.agg(F.sum(F.length("content")), F.sum("size_bytes")).first()
    files = [p for p in (work / "clean").rglob("*.parquet")]
    spark.stop()
    return {
        "photos": kept,
        "embedded": embedded,
        "clean_seconds": round(clean_s, 2),
        "embed_seconds": round(embed_s, 2),
        "images_per_s": round(kept / (clean_s + embed_s), 1),
        "clean_dataset_bytes_per_photo": round(sum(f.stat().st_size for f in files) / kept),
        "normalized_image_bytes_per_photo": round(stored[0] / kept),
        "original_bytes_per_photo": round(stored[1] / kept),
        "peak_rss_mb": round(rss.peak_mb),
    }


def default_driver_memory(photos_dir: Path, work: Path, weights: str) -> dict[str, object]:
    """clean then embed as spark-submit with Spark's default driver memory (1 GB) in local[2]."""
    spark_submit = str(Path(sys.executable).with_name("spark-submit"))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": ""}
    out = {}
    commands = {
        "clean": ["clean.py", "--input", str(photos_dir), "--output", str(work / "clean"),
                  "--rejected", str(work / "rejected"), "--run-date", RUN_DATE.isoformat()],
        "embed": ["embed.py", "--input", str(work / "clean"), "--output", str(work / "embed"), "--weights", weights],
    }  # fmt: skip
    for name, (script, *args) in commands.items():
        with PeakRss() as rss:
            start = time.perf_counter()
            result = subprocess.run(
                [spark_submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                 str(REPO / "spark_jobs" / script), *args],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
        out[name] = {
            "ok": result.returncode == 0,
            "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(rss.peak_mb),
            "error": None if result.returncode == 0 else (result.stdout + result.stderr)[-2000:],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the Fruits-360 sample (the photos' pictures)")
    parser.add_argument("--weights", required=True, help="MobileNetV2 no-top .h5 weights")
    parser.add_argument("--photos", type=int, default=500, help="phone photos made (the speed set: their JPEGs)")
    parser.add_argument("--cpu-photos", type=int, default=100, help="JPEGs for the per-photo CPU figures")
    parser.add_argument("--heic-until", type=int, default=160, help="a HEIC in every 20 of the first N photos")
    parser.add_argument("--memory-photos", type=int, default=500, help="phone photos for the 1 GB driver run")
    parser.add_argument("--cache", default=str(REPO / "local" / "bench-phone"), help="where the photos are kept")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "phone.json"))
    args = parser.parse_args()

    cache = Path(args.cache)
    started = time.perf_counter()
    photos = make_photos(Path(args.data), cache / "photos", max(args.photos, args.memory_photos), args.heic_until)
    print(f"{len(photos)} phone photos ready in {time.perf_counter() - started:.0f} s", flush=True)
    # The speed targets are on 12 MP JPEGs; HEICs (no scaled decode: ~1 s each) are measured on their own.
    jpegs = [p for p in photos[: args.photos] if p.suffix == ".jpg"]
    heics = [p for p in photos if p.suffix == ".HEIC"]
    speed_dir = cache / f"speed-{len(jpegs)}-jpeg"
    speed_dir.mkdir(parents=True, exist_ok=True)
    for photo in jpegs:
        if not (speed_dir / photo.name).exists():
            (speed_dir / photo.name).symlink_to(photo)

    per_photo = cpu_ms_per_photo(jpegs[: args.cpu_photos], args.weights)
    print(json.dumps(per_photo, indent=2), flush=True)
    per_heic = cpu_ms_per_photo(heics, args.weights) if heics else None
    print(json.dumps(per_heic, indent=2), flush=True)
    with tempfile.TemporaryDirectory(prefix="fruits-bench-phone-") as work:
        jobs = spark_jobs(speed_dir, Path(work), args.weights)
    print(json.dumps(jobs, indent=2), flush=True)

    memory = None
    if args.memory_photos:
        memory_dir = cache / f"memory-{args.memory_photos}"
        memory_dir.mkdir(parents=True, exist_ok=True)
        for photo in photos[: args.memory_photos]:
            if not (memory_dir / photo.name).exists():
                (memory_dir / photo.name).symlink_to(photo)
        with tempfile.TemporaryDirectory(prefix="fruits-bench-memory-") as work:
            memory = default_driver_memory(memory_dir, Path(work), args.weights)
        print(json.dumps(memory, indent=2), flush=True)

    cores = os.cpu_count() or 1
    # The reference path's best case on this machine: every core busy, no Spark overhead at all.
    reference_images_per_s = cores * 1000 / per_photo["reference_total_ms"]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "photos": len(jpegs),
        "per_photo_cpu": per_photo,
        "per_heic_photo_cpu": per_heic,
        "spark_jobs": jobs,
        "reference_images_per_s_ideal": round(reference_images_per_s, 1),
        "ratio_vs_reference": round(jobs["images_per_s"] / reference_images_per_s, 2),
        "cpu_ratio_vs_reference": round(per_photo["reference_total_ms"] / per_photo["total_ms"], 2),
        "clean_bytes_share_of_original": round(
            jobs["clean_dataset_bytes_per_photo"] / jobs["original_bytes_per_photo"], 4
        ),
        "default_driver_memory": memory,
        "machine": {
            "cores": cores,
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"clean + embed: {jobs['images_per_s']} photos/s (Spark, warm) vs {result['reference_images_per_s_ideal']} "
        f"for the reference path at best: x{result['ratio_vs_reference']}; CPU per photo "
        f"{per_photo['total_ms']} ms vs {per_photo['reference_total_ms']} ms; clean dataset "
        f"{result['clean_bytes_share_of_original']:.1%} of the originals' bytes -> {args.output}"
    )


if __name__ == "__main__":
    main()
