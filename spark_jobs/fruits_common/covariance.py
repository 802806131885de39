"""Distributed mean and covariance of an ``array<float>`` column, and its principal axes.

Each partition reduces its rows to (count, mean, centred scatter matrix) with NumPy, and the partial results are
merged pairwise (Chan et al.'s parallel update) in a tree on the executors: only one n x n matrix reaches the
driver. The eigendecomposition then runs in NumPy (LAPACK ``syevd``). Spark ML's own ``PCA.fit`` is not used for
it: on this stack (Spark 3.5, Java 17, netlib's pure-Java LAPACK) its driver-side SVD returned different spectra
for the same covariance from one call to the next, so the chosen k and the basis were not reproducible.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

CHUNK_ROWS = 4096  # rows converted to float64 at a time: 4096 x 1280 x 8 bytes = 42 MB


@dataclass(frozen=True)
class Moments:
    """Count, mean and centred scatter matrix ``sum((x - mean)(x - mean)^T)`` of a set of vectors."""

    count: int
    mean: np.ndarray
    scatter: np.ndarray

    @staticmethod
    def of(rows: np.ndarray) -> Moments:
        """The moments of the rows of a 2-D array."""
        mean = rows.mean(axis=0)
        centred = rows - mean
        return Moments(len(rows), mean, centred.T @ centred)

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets together (numerically stable: no ``E[xx] - E[x]^2``)."""
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / count)
        return Moments(count, mean, scatter)

    def covariance(self) -> np.ndarray:
        """The sample covariance matrix (``count - 1`` in the denominator)."""
        return self.scatter / (self.count - 1)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, count=self.count, mean=self.mean, scatter=self.scatter)
        return buffer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Moments:
        with np.load(io.BytesIO(data)) as arrays:
            return Moments(int(arrays["count"]), arrays["mean"], arrays["scatter"])


def _partition_moments(batches: Iterator[pa.RecordBatch], column: str, size: int) -> Iterator[pa.RecordBatch]:
    moments: Moments | None = None
    pending: list[np.ndarray] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal moments, pending, pending_rows
        moments = _merge_optional(moments, Moments.of(np.concatenate(pending).astype(np.float64)))
        pending, pending_rows = [], 0

    for batch in batches:
        values = batch.column(column)
        if values.null_count:
            raise ValueError(f"{column}: null vectors cannot enter a covariance")
        flat = values.flatten().to_numpy(zero_copy_only=False)
        if len(flat) != len(values) * size:
            raise ValueError(f"{column}: every vector must have {size} values")
        pending.append(flat.reshape(len(values), size))
        pending_rows += len(values)
        if pending_rows >= CHUNK_ROWS:
            flush()
    if pending_rows:
        flush()
    if moments is not None:  # empty partitions contribute nothing
        yield pa.RecordBatch.from_pydict({"moments": [moments.to_bytes()]})


def column_moments(frame: DataFrame, column: str, size: int) -> Moments | None:
    """Moments of the fixed-size ``array<float|double>`` column ``column`` (None when there are no rows)."""
    partials = frame.select(column).mapInArrow(
        lambda batches: _partition_moments(batches, column, size), "moments binary"
    )
    # One pass over the data; None is the zero value, so a frame without rows gives None.
    return partials.rdd.map(lambda row: Moments.from_bytes(row.moments)).treeAggregate(
        None, _merge_optional, _merge_optional
    )


def _merge_optional(left: Moments | None, right: Moments | None) -> Moments | None:
    if left is None or right is None:
        return left if right is None else right
    return left.merge(right)


def principal_axes(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (columns, by decreasing variance) and the fraction of the total variance each explains.

    Each axis' sign is fixed (its largest-magnitude entry is positive) so that re-fits give identical output.
    """
    variances, axes = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1]
    variances = np.clip(variances[order], 0.0, None)  # rank-deficient: tiny negative round-off
    axes = axes[:, order]
    signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(axes.shape[1])])
    axes = axes * np.where(signs == 0, 1.0, signs)
    total = variances.sum()
    return axes, (variances / total if total > 0 else variances)
