"""pca over several nights: a stable basis that nights append to, deliberate refits into new versions, drift.

The features are synthetic 1,280-d vectors with a low-rank structure like MobileNetV2's (a few strong directions
plus noise), written as the embed job writes them: one ``ingest_date`` partition per night.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

import pca

NIGHT1, NIGHT2, NIGHT3 = dt.date(2026, 5, 1), dt.date(2026, 5, 2), dt.date(2026, 5, 3)
RANK = 12
# The storage layout of the pipeline (docs/dag.md), under a test root.
EMBED, PCA, MODELS = "stages/embed", "stages/pca", "models/pca"


def night_features(seed: int, rows: int, basis: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    strengths = np.linspace(6.0, 1.0, basis.shape[0])
    return (rng.normal(size=(rows, basis.shape[0])) * strengths) @ basis + rng.normal(0, 0.05, (rows, 1280))


@pytest.fixture(scope="module")
def bases() -> tuple[np.ndarray, np.ndarray]:
    """Two unrelated sets of directions: the usual photos, and photos of something else entirely."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(RANK, 1280)) / 36, rng.normal(size=(RANK, 1280)) / 36


def add_night(spark, root: Path, day: dt.date, features: np.ndarray, prefix: str) -> None:
    rows = [(f"{prefix}{i}", f"/uploads/{day}/{prefix}{i}.jpg", None, v.astype(np.float32).tolist(), day) for i, v in
            enumerate(features)]  # fmt: skip
    frame = spark.createDataFrame(rows, "image_id string, path string, label string, features array<float>, "
                                        "ingest_date date")  # fmt: skip
    frame.write.mode("append").partitionBy("ingest_date").parquet(str(root / EMBED))


def run(spark, root: Path, **kwargs) -> dict:
    options = {"variance": 0.9, **kwargs}
    return pca.run(spark, str(root / EMBED), str(root / PCA), str(root / MODELS), **options)


def current(root: Path) -> str:
    return json.loads((root / MODELS / "CURRENT").read_text())["version"]


def version_rows(spark, root: Path, version: str):
    return spark.read.option("basePath", str(root / PCA)).parquet(str(root / PCA / f"pca_version={version}"))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


@pytest.fixture
def two_nights(spark, tmp_path, bases):
    """Night 1 fits v0001; night 2 (same kind of photos) is projected onto it."""
    add_night(spark, tmp_path, NIGHT1, night_features(1, 300, bases[0]), "a")
    first = run(spark, tmp_path, run_date=NIGHT1)
    night1_files = files_of(tmp_path / PCA / "pca_version=v0001")
    add_night(spark, tmp_path, NIGHT2, night_features(2, 120, bases[0]), "b")
    second = run(spark, tmp_path, run_date=NIGHT2)
    return first, second, night1_files


def test_nights_append_to_the_current_version_and_leave_old_rows_untouched(spark, tmp_path, two_nights):
    first, second, night1_files = two_nights
    assert (first["version"], first["refitted"], first["refit_reason"], first["rows_projected"]) == (
        "v0001", True, "no_model", 300)  # fmt: skip
    assert (second["version"], second["refitted"], second["rows_projected"]) == ("v0001", False, 120)
    assert second["dates_projected"] == [NIGHT2.isoformat()]
    assert second["drift"]["drift"] < second["drift"]["threshold"]  # same kind of photos: no drift
    # Night 1's files are byte for byte what they were; night 2's rows were added, in the same version.
    after = files_of(tmp_path / PCA / "pca_version=v0001")
    assert {name: data for name, data in after.items() if name in night1_files} == night1_files
    rows = version_rows(spark, tmp_path, "v0001")
    assert rows.count() == rows.select("image_id").distinct().count() == 420
    assert rows.filter(F.col("ingest_date") == NIGHT2).count() == 120
    assert {r[0] for r in rows.select("pca_version").distinct().collect()} == {"v0001"}
    assert current(tmp_path) == "v0001"


def test_rerunning_a_night_replaces_it_and_adds_nothing(spark, tmp_path, two_nights):
    again = run(spark, tmp_path, run_date=NIGHT2)
    assert (again["version"], again["refitted"], again["rows_projected"]) == ("v0001", False, 120)
    rows = version_rows(spark, tmp_path, "v0001")
    assert rows.count() == rows.select("image_id").distinct().count() == 420
    nothing_new = run(spark, tmp_path)
    assert nothing_new["rows_projected"] == 0 and nothing_new["dates_projected"] == []


def test_a_forced_refit_makes_a_new_version_of_every_row_and_switches_at_the_end(spark, tmp_path, two_nights):
    refit = run(spark, tmp_path, refit="always")
    assert (refit["version"], refit["refitted"], refit["refit_reason"], refit["rows_projected"]) == (
        "v0002", True, "forced", 420)  # fmt: skip
    assert current(tmp_path) == "v0002"
    assert version_rows(spark, tmp_path, "v0002").count() == 420
    # The previous version stays (retention keeps 3), readable, beside the new one.
    assert version_rows(spark, tmp_path, "v0001").count() == 420
    info = json.loads((tmp_path / MODELS / "v0002" / "version.json").read_text())
    held_out = info["held_out_share"]["rows"]
    assert 0 < held_out < 420 and info["rows"] == 420 - held_out
    assert info["ingest_dates"] == [NIGHT1.isoformat(), NIGHT2.isoformat()]


def test_a_refit_that_fails_midway_leaves_the_current_version_intact(spark, tmp_path, two_nights, monkeypatch):
    before = files_of(tmp_path / PCA / "pca_version=v0001")
    real_project = pca.project

    def project_then_fail(store, model, version, days, fresh):
        real_project(store, model, version, days[:1], fresh)  # half the rows written into the new version...
        raise RuntimeError("executor lost")  # ...then the job dies

    monkeypatch.setattr(pca, "project", project_then_fail)
    with pytest.raises(RuntimeError, match="executor lost"):
        run(spark, tmp_path, refit="always")
    monkeypatch.undo()
    assert current(tmp_path) == "v0001"
    assert files_of(tmp_path / PCA / "pca_version=v0001") == before
    assert version_rows(spark, tmp_path, "v0001").count() == 420
    # The next refit publishes a fresh version; the failed one, never published, is deleted.
    retry = run(spark, tmp_path, refit="always")
    assert retry["version"] == "v0003" and current(tmp_path) == "v0003"
    assert "v0002" in retry["deleted_versions"] and not (tmp_path / MODELS / "v0002").exists()
    assert not (tmp_path / PCA / "pca_version=v0002").exists()


def test_drift_above_the_threshold_refits_under_auto(spark, tmp_path, two_nights, bases):
    add_night(spark, tmp_path, NIGHT3, night_features(3, 150, bases[1]), "c")  # photos of something else
    drifted = run(spark, tmp_path, run_date=NIGHT3)
    assert drifted["drift"]["drift"] > drifted["drift"]["threshold"], drifted["drift"]
    assert (drifted["refitted"], drifted["refit_reason"], drifted["version"]) == (True, "drift", "v0002")
    assert version_rows(spark, tmp_path, "v0002").count() == 570
    # With never, the same night is only projected, whatever the drift.
    never = run(spark, tmp_path, run_date=NIGHT3, refit="never")
    assert (never["refitted"], never["version"]) == (False, "v0002")


def test_old_versions_are_dropped_beyond_the_retention(spark, tmp_path, two_nights):
    for expected in ("v0002", "v0003"):
        assert run(spark, tmp_path, refit="always", keep_versions=2)["version"] == expected
    assert sorted(p.name for p in (tmp_path / MODELS).glob("v*")) == ["v0002", "v0003"]
    assert sorted(p.name for p in (tmp_path / PCA).glob("pca_version=*")) == ["pca_version=v0002", "pca_version=v0003"]
    assert json.loads((tmp_path / MODELS / "CURRENT").read_text())["published"] == ["v0001", "v0002", "v0003"]


def test_readers_get_the_current_features_with_pyspark_and_with_pandas(spark, tmp_path, two_nights):
    """The read path of docs/jobs.md, as written there."""
    import pandas as pd

    root = str(tmp_path)
    run(spark, tmp_path, refit="always")  # two versions on disk: a reader must see only the current one
    # PySpark
    version = json.loads(spark.read.text(f"{root}/models/pca/CURRENT", wholetext=True).first()[0])["version"]
    features = spark.read.option("basePath", f"{root}/stages/pca").parquet(f"{root}/stages/pca/pca_version={version}")
    assert features.count() == 420 and {r[0] for r in features.select("pca_version").distinct().collect()} == {"v0002"}
    # pandas (pyarrow)
    with open(f"{root}/models/pca/CURRENT") as pointer:
        version = json.load(pointer)["version"]
    frame = pd.read_parquet(f"{root}/stages/pca/pca_version={version}")
    assert len(frame) == 420 and set(frame.columns) >= {"image_id", "path", "label", "pca", "ingest_date"}
    assert len(frame["pca"].iloc[0]) == json.loads((tmp_path / MODELS / version / "version.json").read_text())["k"]
