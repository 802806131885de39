"""How much of a night's variance the PCA basis captures, how sure that figure is, and when it means drift.

The drift figure compares like with like: a version's baseline is the share its axes capture on rows held out of
its fit (one row in :data:`HOLDOUT_ONE_IN`, picked by a hash of the image id), and a night's share is measured on
rows the fit never saw either. The share on the fit's own rows is biased upward (NOTES.md: by 0.067 at 160 rows,
0.015 at 1,200), which made same-distribution nights look drifted.

Each share comes with its standard error, from the rows themselves: per row ``a = |P^T (x - m)|^2`` (captured) and
``b = |x - m|^2`` (total), the share is the ratio estimator ``R = sum(a) / sum(b)``, and by the delta method
``SE(R)^2 = sum((a - R b)^2) / (n (n - 1) mean(b)^2)``. A refit needs the drift to be both large (over the
threshold, a setting) and sure (``drift / SE >= Z_CRITICAL``): on nights drawn from the fitted distribution the
z-score is about standard normal, so a false refit needs a 3-sigma event (about 1 night in 740).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

HOLDOUT_ONE_IN = 5  # one row in five is kept out of every fit, to measure the basis out of sample
Z_CRITICAL = 3.0  # how many standard errors a drift must be above zero to count


def held_out(image_id: Column | None = None) -> Column:
    """True for the rows a fit leaves out (stable: the same rows at every fit)."""
    return F.pmod(F.xxhash64(image_id if image_id is not None else F.col("image_id")), F.lit(HOLDOUT_ONE_IN)) == 0


@dataclass(frozen=True)
class Share:
    """The share of some rows' variance (around a fixed centre) that a basis captures, with its standard error."""

    rows: int
    share: float
    standard_error: float

    @staticmethod
    def from_sums(sums: np.ndarray) -> Share:
        """From ``[n, sum a, sum b, sum a^2, sum b^2, sum ab]`` (see the module's docstring)."""
        n, sa, sb, saa, sbb, sab = (float(v) for v in sums)
        if n == 0 or sb <= 0:
            return Share(int(n), 1.0, math.inf if n < 2 else 0.0)
        ratio = sa / sb
        if n < 2:
            return Share(1, ratio, math.inf)
        residual = max(saa - 2 * ratio * sab + ratio * ratio * sbb, 0.0)
        return Share(int(n), ratio, math.sqrt(residual / (n * (n - 1))) / (sb / n))


def row_sums(rows: np.ndarray, axes: np.ndarray, center: np.ndarray) -> np.ndarray:
    """The sums :meth:`Share.from_sums` takes, for the rows of a 2-D array."""
    centred = rows.astype(np.float64) - center
    total = np.einsum("ij,ij->i", centred, centred)
    projected = centred @ axes
    captured = np.einsum("ij,ij->i", projected, projected)
    return np.array(
        [len(rows), captured.sum(), total.sum(), captured @ captured, total @ total, captured @ total], dtype=np.float64
    )


def share_of_rows(rows: np.ndarray, axes: np.ndarray, center: np.ndarray) -> Share:
    """The share for rows in memory (NumPy; the tests and the benches use it on real features)."""
    return Share.from_sums(row_sums(rows, axes, center))


def share_of(frame: DataFrame, column: str, axes: np.ndarray, center: np.ndarray) -> Share:
    """The share for the ``array<float>`` column of a DataFrame: one pass on the executors, six numbers back."""
    size = axes.shape[0]

    def partial(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        sums = np.zeros(6)
        for batch in batches:
            values = batch.column(column)
            if len(values):
                flat = values.flatten().to_numpy(zero_copy_only=False)
                sums += row_sums(flat.reshape(len(values), size), axes, center)
        yield pa.RecordBatch.from_pydict({"sums": [sums.tolist()]})

    parts = frame.select(column).mapInArrow(partial, "sums array<double>").collect()
    return Share.from_sums(np.sum([np.asarray(r["sums"]) for r in parts], axis=0) if parts else np.zeros(6))


@dataclass(frozen=True)
class Drift:
    """A night's share against the version's held-out baseline."""

    baseline: Share
    night: Share
    threshold: float

    @property
    def drift(self) -> float:
        return self.baseline.share - self.night.share

    @property
    def standard_error(self) -> float:
        return math.hypot(self.baseline.standard_error, self.night.standard_error)

    @property
    def z(self) -> float:
        se = self.standard_error
        return self.drift / se if se > 0 else (math.inf if self.drift > 0 else 0.0)

    @property
    def significant(self) -> bool:
        """Large and sure: over the threshold, and :data:`Z_CRITICAL` standard errors above zero."""
        return self.drift > self.threshold and self.z >= Z_CRITICAL

    def to_dict(self) -> dict:
        """What the pca summary and the report show."""
        return {
            "rows": self.night.rows,
            "captured_share": round(self.night.share, 6),
            "baseline_share": round(self.baseline.share, 6),
            "baseline_rows": self.baseline.rows,
            "drift": round(self.drift, 6),
            "standard_error": round(self.standard_error, 6),
            "z": round(self.z, 3) if math.isfinite(self.z) else None,
            "threshold": self.threshold,
            "z_critical": Z_CRITICAL,
            "significant": self.significant,
        }


def share_to_dict(share: Share) -> dict:
    """A share as version.json keeps it."""
    return asdict(share)
