"""Picking and copying images of the real Fruits-360 sample (which is read-only) for a test."""

from __future__ import annotations

import shutil
from pathlib import Path


def sample_files(sample_dir: Path, split: str, per_label: int | None = None, skip: int = 0) -> list[Path]:
    """Per label of ``split`` (sorted), its images after the first ``skip``, ``per_label`` of them (None: all)."""
    picked = []
    for label_dir in sorted(p for p in (sample_dir / split).iterdir() if p.is_dir()):
        files = sorted(label_dir.glob("*.jpg"))[skip:]
        picked.extend(files[:per_label] if per_label else files)
    return picked


def copy_images(
    source: Path,
    target: Path,
    per_label: int | None = None,
    splits: tuple[str, ...] = ("Training", "Test"),
    skip: int = 0,
) -> list[Path]:
    """Copy ``per_label`` images (after the first ``skip``) of each label of each split, keeping the layout."""
    copied = []
    for split in splits:
        for file in sample_files(source, split, per_label, skip):
            destination = target / split / file.parent.name / file.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, destination)
            copied.append(destination)
    return copied
