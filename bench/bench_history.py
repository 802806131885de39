"""A nightly run over a small and a large history: does a night's cost follow the history's size? (issue 17)

    python bench/bench_history.py --data DIR --weights FILE.h5 [--histories 4000 80000] [--history-nights 20 80]
        [--night 200] [--rounds 2] [--work /tmp/fruits-bench-history]

For each history size H, a storage root in the DAG's layout (docs/dag.md "Storage layout") holds H processed photos
spread over D nights, made to look as the jobs make them: ``stages/clean`` (~30 KB incompressible "images", id =
SHA-256 of the bytes, written by Spark with clean's own Parquet writer options, ``_run.json`` beside each
partition), a few ``stages/rejected`` rows a night, ``stages/embed`` (1,280 float32 per row, drawn from a Gaussian
with the mean and covariance of real MobileNetV2 features of the sample, so that the night's real photos do not
look like a drift: the captured share pca checks depends on second moments only), the upload files of the lookback
window, and the PCA state (versions, moments, projected rows) made by running the real ``pca.py`` once over the
history. Built once per key (sizes, format, the jobs' code) under ``--work`` and copied pristine (data files
hard-linked, everything else copied) before each measured night.

The night: ``--night`` real sample images as an app upload (``uploads/<the day after the history>/``, flat), then
clean, embed, pca and report with exactly the command lines of the DAG's plan (``fruits_dag.plan.build_plan``,
local backend, default run params), each as its own ``spark-submit --master local[2] --driver-memory 3g``. Per job:
wall seconds and Spark's own input metrics (sum of the event log's task-end ``Input Metrics``); per stage: files
after the night. Rounds alternate the histories (A B A B); the minimum per job is kept. Targets: the whole night
over the large history <= 1.15x the small one's, each job <= 1.2x. Writes ``bench/results/history.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
JOBS_DIR = REPO / "spark_jobs"
sys.path.insert(0, str(REPO / "dags"))

FORMAT_VERSION = 2  # of the synthetic history: bump when the way it is made changes (cache key)
NIGHT_DAY = dt.date(2026, 6, 1)  # every history ends the day before
FEATURES = 1280
CONTENT_BYTES = (26_000, 34_000)  # a normalized image's size (incompressible bytes: never decoded)
REJECTED_PER_NIGHT = 2
# Upload files kept in each earlier night of the lookback window (the rest of its rows are in the datasets only).
WINDOW_UPLOADS = 200
EMBED_ROW_GROUP = 1000  # NOTES.md: large row groups of 1,280 floats exhaust the driver heap
CLEAN_FILES_PER_NIGHT = 2  # clean writes at most one file per core (coalesce(cores)), 2 cores here
MASTER, DRIVER_MEMORY = "local[2]", "3g"
TARGET_NIGHT, TARGET_JOB = 1.15, 1.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Rewrites the staged synthetic clean partitions with Spark and clean's own writer options (bloom filters...).
PREP_CLEAN = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from pyspark.sql import SparkSession, functions as F
import clean
from fruits_common import schemas
staging, output, files = sys.argv[2], sys.argv[3], int(sys.argv[4])
spark = SparkSession.builder.appName("bench-history-prep-clean").getOrCreate()
options = dict(getattr(clean, "ID_BLOOM_OPTIONS", {}))
fields = schemas.without_partition(schemas.CLEAN).fields
for folder in sorted(os.listdir(staging)):
    frame = spark.read.parquet(os.path.join(staging, folder)).select([F.col(f.name).cast(f.dataType) for f in fields])
    writer = frame.repartition(files).sortWithinPartitions("image_id").write.mode("overwrite")
    writer = writer.option("compression", "zstd")
    for key, value in options.items():
        writer = writer.option(key, value)
    writer.parquet(os.path.join(output, folder))
print("WRITER_OPTIONS " + json.dumps(options))
spark.stop()
"""


# -- the DAG's plan and spark-submit -------------------------------------------------------------------------------
@dataclasses.dataclass
class Dag:
    """What ``stage_code`` computes for a local run: settings, backend, bundle; plans come from ``build_plan``."""

    weights: str
    work: Path

    def __post_init__(self) -> None:
        from fruits_dag.backends import get_backend
        from fruits_dag.params import RunParams

        self.params = RunParams()  # a scheduled nightly run: incremental, default PCA params
        self.settings = self.settings_for(self.work / "unused-root")
        self.backend = get_backend(self.settings)
        self.bundle = self.backend.bundle()
        self.code = self.work / "code"  # every root's code/ links here: staged once, ONNX export kept

    def settings_for(self, root: Path):
        from fruits_dag.settings import load

        values = {"fruits_backend": "local", "fruits_local_root": str(root), "fruits_weights": self.weights}
        return load(values.get)

    def plan(self, root: Path, day: dt.date):
        from fruits_dag.plan import build_plan

        prepared = self.backend.prepare(self.params)
        return build_plan(self.settings_for(root), self.params, day, self.bundle, model=prepared.model)

    def stage(self) -> None:
        from fruits_dag.bundle import stage

        stage(self.bundle, str(self.code / self.bundle.digest), self.backend.code_store())

    def link_code(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        link = root / "code"
        if not link.is_symlink():
            link.symlink_to(self.code, target_is_directory=True)

    @property
    def lookback_days(self) -> int:
        return self.settings.lookback_days


def submit_command(job: Any, events: Path | None) -> list[str]:
    """The local backend's spark-submit line for a plan's job, on ``local[2]`` with 3 GB, plus the event log."""
    from fruits_dag.backends.local import LocalSparkJobOperator

    operator = LocalSparkJobOperator(
        task_id=f"{job.name}_step", job=dataclasses.asdict(job), driver_memory=DRIVER_MEMORY
    )
    command = operator.command()
    command[command.index("--master") + 1] = MASTER
    at = len(command) - len(job.submit_args())  # Spark options go before the plan's part
    extra = []
    if events is not None:
        extra = ["--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events.as_uri()}"]
        extra += ["--conf", "spark.eventLog.compress=false"]
    return [*command[:at], *extra, *command[at:]]


def run_logged(command: list[str], log: Path, what: str, timeout: float) -> float:
    """Run ``command`` as the local backend does (this Python for Spark, a scratch cwd); returns wall seconds."""
    from fruits_dag.backends.local import job_error

    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fruits-bench-job-") as scratch, open(log, "w") as out:
        start = time.perf_counter()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=scratch, timeout=timeout)
        seconds = time.perf_counter() - start
    if result.returncode:
        lines = log.read_text(errors="replace").splitlines()
        raise SystemExit(f"{what} failed (exit {result.returncode}): {job_error(lines)}\n  full output: {log}")
    return seconds


def spark_metrics(events: Path) -> dict[str, int]:
    """Sums over the event log's ``SparkListenerTaskEnd`` events: Spark's own I/O metrics of the job."""
    totals = dict.fromkeys(
        ("tasks", "input_bytes", "input_records", "output_bytes", "output_records", "shuffle_read_bytes"), 0
    )
    logs = [p for p in events.iterdir() if p.is_file()]
    if len(logs) != 1:
        raise SystemExit(f"expected one event log in {events}, found {len(logs)}")
    with open(logs[0], encoding="utf-8") as stream:
        for line in stream:
            if '"SparkListenerTaskEnd"' not in line:
                continue
            metrics = json.loads(line).get("Task Metrics") or {}
            read, written = metrics.get("Input Metrics", {}), metrics.get("Output Metrics", {})
            shuffle = metrics.get("Shuffle Read Metrics", {})
            totals["tasks"] += 1
            totals["input_bytes"] += read.get("Bytes Read", 0)
            totals["input_records"] += read.get("Records Read", 0)
            totals["output_bytes"] += written.get("Bytes Written", 0)
            totals["output_records"] += written.get("Records Written", 0)
            totals["shuffle_read_bytes"] += shuffle.get("Remote Bytes Read", 0) + shuffle.get("Local Bytes Read", 0)
    return totals


# -- images and the night ------------------------------------------------------------------------------------------
def sample_images(data: Path) -> list[Path]:
    """The sample's images, round-robin over their label folders (a fixed, label-balanced order)."""
    by_folder: dict[Path, list[Path]] = {}
    for image in sorted(data.rglob("*")):
        if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
            by_folder.setdefault(image.parent, []).append(image)
    queues, ordered = [list(v) for v in by_folder.values()], []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    if not ordered:
        raise SystemExit(f"no images under {data}")
    return ordered


def copy_flat(images: list[Path], folder: Path) -> None:
    """Images as an app uploads them: flat files in one folder (so clean gives them no label)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, image in enumerate(images):
        shutil.copyfile(image, folder / f"{n:05d}{image.suffix.lower()}")


# -- real features: the Gaussian the history's features are drawn from --------------------------------------------
@dataclasses.dataclass
class FeatureModel:
    """A Gaussian with the mean and covariance of real features: ``x = mean + z @ scale``."""

    mean: np.ndarray
    scale: np.ndarray
    images: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureModel:
        mean = features.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov(features, rowvar=False))
        values = np.clip(values, 0, None) + 1e-3 * max(values.mean(), 1e-12)  # full rank, trace barely changed
        return cls(mean, (vectors * np.sqrt(values)).T, len(features))

    def draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        return (self.mean + rng.standard_normal((rows, FEATURES)) @ self.scale).astype(np.float32)


def real_features(dag: Dag, images: list[Path], weights: str, timeout: float) -> FeatureModel:
    """MobileNetV2 features of real sample images, by the real clean and embed jobs (cached in ``--work``)."""
    key = hashlib.sha256(f"{[str(p) for p in images]}{Path(weights).name}".encode()).hexdigest()[:12]
    cache = dag.work / f"real-features-{len(images)}-{key}.npy"
    if not cache.is_file():
        print(f"real features: clean + embed of {len(images)} sample images (once)", flush=True)
        folder = dag.work / f"real-features-{key}"
        shutil.rmtree(folder, ignore_errors=True)
        copy_flat(images, folder / "images")
        submit = [
            submit_path(),
            "--master",
            MASTER,
            "--driver-memory",
            DRIVER_MEMORY,
            "--conf",
            "spark.ui.enabled=false",
        ]
        clean_args = ["--input", str(folder / "images"), "--output", str(folder / "clean")]
        clean_args += ["--rejected", str(folder / "rejected"), "--run-date", "2026-01-01"]
        run_logged(
            [*submit, str(JOBS_DIR / "clean.py"), *clean_args], folder / "clean.log", "clean (features)", timeout
        )
        embed_args = ["--input", str(folder / "clean"), "--output", str(folder / "embed"), "--weights", weights]
        run_logged(
            [*submit, str(JOBS_DIR / "embed.py"), *embed_args], folder / "embed.log", "embed (features)", timeout
        )
        table = pq.read_table(folder / "embed", columns=["features"])
        features = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
        np.save(cache, features)
        shutil.rmtree(folder)
    return FeatureModel.from_features(np.load(cache).astype(np.float64))


def submit_path() -> str:
    from fruits_dag.backends.local import spark_submit_path

    return spark_submit_path()


def plan_weights(plan: Any) -> Path:
    """The weights the plan's embed job loads."""
    args = plan.job("embed").args
    return Path(args[args.index("--weights") + 1])


def ensure_onnx_export(dag: Dag, weights: Path, timeout: float) -> None:
    """The ONNX export next to the staged weights, where embed looks first (a warm local deployment has it)."""
    if weights.suffix != ".h5" or not weights.is_file():
        print(f"note: weights {weights} are not a staged .h5; embed exports ONNX itself if it must", flush=True)
        return
    env = {**os.environ, "PYTHONPATH": str(JOBS_DIR)}
    helper = [sys.executable, "-m", "fruits_common.embedding"]
    name = subprocess.run([*helper, "name", str(weights)], env=env, capture_output=True, text=True, check=True)
    beside = weights.parent / name.stdout.strip()
    if beside.is_file():
        return
    earlier = [p for p in dag.code.glob(f"*/{beside.name}") if p.is_file()]
    if earlier:
        shutil.copyfile(earlier[0], beside)
        return
    print(f"exporting the model to ONNX once: {beside}", flush=True)
    subprocess.run([*helper, "export", str(weights), str(beside)], env=env, check=True, timeout=timeout)


# -- the synthetic history -----------------------------------------------------------------------------------------
def jobs_digest() -> str:
    """The jobs' code: a history is rebuilt when it changes (it is made by the jobs' own writers and pca.py)."""
    digest = hashlib.sha256()
    for path in sorted(JOBS_DIR.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(JOBS_DIR)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:12]


@dataclasses.dataclass
class History:
    rows: int
    nights: int
    folder: Path

    @property
    def pristine(self) -> Path:
        return self.folder / "pristine"

    @property
    def root(self) -> Path:  # where rounds run; the history's paths point here
        return self.folder / "root"

    @property
    def ready(self) -> Path:
        return self.folder / "READY.json"

    def days(self) -> list[dt.date]:
        return [NIGHT_DAY - dt.timedelta(days=self.nights - n) for n in range(self.nights)]

    def rows_per_night(self) -> list[int]:
        base, extra = divmod(self.rows, self.nights)
        return [base + (1 if n < extra else 0) for n in range(self.nights)]


def _parquet_name() -> str:
    return f"part-00000-{uuid.uuid4()}.c000.zstd.parquet"


def _write_partition(folder: Path, table: pa.Table, row_group: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / _parquet_name(), compression="zstd", row_group_size=row_group)
    (folder / "_SUCCESS").touch()


def write_night(
    history: History, n: int, day: dt.date, rows: int, labels: list[str], model: FeatureModel, upload: bool
) -> int:
    """One history night: staged clean rows, rejected rows, features, and (in the lookback window) the uploads.
    Returns the upload files written."""
    root, rng = history.root, np.random.default_rng([history.rows, n])
    uploads = root / "uploads" / day.isoformat()
    contents = [rng.bytes(int(s)) for s in rng.integers(*CONTENT_BYTES, rows)]
    ids = [hashlib.sha256(c).hexdigest() for c in contents]
    paths = [f"file:{uploads}/img_{j:05d}.jpg" for j in range(rows)]
    label = [labels[i] for i in rng.integers(0, len(labels), rows)]
    partition = f"ingest_date={day.isoformat()}"
    clean = pa.table(
        {
            "image_id": ids,
            "path": paths,
            "label": label,
            "width": pa.array(np.full(rows, 512), pa.int32()),
            "height": pa.array(np.full(rows, 384), pa.int32()),
            "format": ["JPEG"] * rows,
            "size_bytes": pa.array([len(c) for c in contents], pa.int64()),
            "orientation": pa.array(np.ones(rows), pa.int32()),
            "content": pa.array(contents, pa.binary()),
        }
    )
    staging = history.folder / "staging-clean" / partition
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(clean, staging / "part.parquet", compression="zstd")

    notes = [f"not a photo: {day} #{k}\n".encode() for k in range(REJECTED_PER_NIGHT)]
    rejected = pa.table(
        {
            "image_id": [hashlib.sha256(b).hexdigest() for b in notes],
            "path": [f"file:{uploads}/note_{k}.txt" for k in range(REJECTED_PER_NIGHT)],
            "label": pa.nulls(REJECTED_PER_NIGHT, pa.string()),
            "size_bytes": pa.array([len(b) for b in notes], pa.int64()),
            "reason": ["not_an_image"] * REJECTED_PER_NIGHT,
            "detail": ["no image signature"] * REJECTED_PER_NIGHT,
        }
    )
    _write_partition(root / "stages" / "rejected" / partition, rejected)

    features = model.draw(rng, rows)
    offsets = pa.array(np.arange(0, (rows + 1) * FEATURES, FEATURES, dtype=np.int32))
    embed = pa.table(
        {
            "image_id": ids,
            "path": paths,
            "label": label,
            "features": pa.ListArray.from_arrays(offsets, pa.array(features.ravel(), pa.float32())),
        }
    )
    folder = root / "stages" / "embed" / partition
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(embed, folder / _parquet_name(), compression="zstd", row_group_size=EMBED_ROW_GROUP)

    if not upload:
        return 0
    uploads.mkdir(parents=True, exist_ok=True)
    # The same window for both histories: what a night's window holds follows the traffic, not the history.
    for path, content in list(zip(paths, contents, strict=True))[:WINDOW_UPLOADS]:
        Path(path.removeprefix("file:")).write_bytes(content)
    for k, note in enumerate(notes):
        (uploads / f"note_{k}.txt").write_bytes(note)
    return min(rows, WINDOW_UPLOADS) + len(notes)


def run_summary(root: Path, day: dt.date, rows: int, lookback_days: int) -> dict[str, Any]:
    """The ``_run.json`` clean writes beside its partition (its night's own uploads, nothing skipped)."""
    window = [day - dt.timedelta(days=lookback_days - 1 - d) for d in range(lookback_days)]
    return {
        "run_date": day.isoformat(),
        "kept": rows,
        "rejected": REJECTED_PER_NIGHT,
        "rejected_by_reason": {"not_an_image": REJECTED_PER_NIGHT},
        "skipped_accounted": 0,
        "inputs": [
            {"input": f"file:{root}/uploads/{d}", "new_files": rows + REJECTED_PER_NIGHT if d == day else 0}
            for d in window
        ],
        "upload_days": [day.isoformat()],
    }


def build_history(history: History, dag: Dag, labels: list[str], model: FeatureModel, timeout: float) -> dict:
    """Make the pristine history (untimed): synthetic stages, then the real pca.py over them."""
    started = time.perf_counter()
    shutil.rmtree(history.folder, ignore_errors=True)
    dag.link_code(history.root)
    days, window = history.days(), dag.lookback_days - 1  # the window's earlier days hold their uploads
    window_files = 0
    for n, (day, rows) in enumerate(zip(days, history.rows_per_night(), strict=True)):
        window_files += write_night(history, n, day, rows, labels, model, upload=n >= len(days) - window)
    stages = history.root / "stages"
    embed_summary = {"embedded": history.rows_per_night()[-1], "ingest_dates": [days[-1].isoformat()], "engine": "onnx"}
    (stages / "embed" / "_summary.json").write_text(json.dumps(embed_summary, indent=2))
    (stages / "embed" / "_SUCCESS").touch()

    print(f"  history {history.rows:,}: clean partitions through Spark (clean's writer options)", flush=True)
    script = history.folder / "prep_clean.py"
    script.write_text(PREP_CLEAN)
    command = [submit_path(), "--master", MASTER, "--driver-memory", DRIVER_MEMORY, "--conf", "spark.ui.enabled=false"]
    command += [str(script), str(JOBS_DIR), str(history.folder / "staging-clean"), str(stages / "clean")]
    command += [str(CLEAN_FILES_PER_NIGHT)]
    run_logged(command, history.folder / "prep_clean.log", "the clean history's rewrite", timeout)
    options = [
        line.split(" ", 1)[1]
        for line in (history.folder / "prep_clean.log").read_text().splitlines()
        if line.startswith("WRITER_OPTIONS ")
    ]
    shutil.rmtree(history.folder / "staging-clean")
    for day, rows in zip(days, history.rows_per_night(), strict=True):
        summary = run_summary(history.root, day, rows, dag.lookback_days)
        (stages / "clean" / f"ingest_date={day}" / "_run.json").write_text(json.dumps(summary, indent=2))

    print(f"  history {history.rows:,}: the PCA state (pca.py as the DAG runs it on {days[-1]})", flush=True)
    plan = dag.plan(history.root, days[-1])
    dag.stage()
    run_logged(submit_command(plan.job("pca"), None), history.folder / "prep_pca.log", "the history's pca", timeout)
    pca = json.loads((stages / "pca" / "_summary.json").read_text())
    info = {
        "rows": history.rows,
        "nights": history.nights,
        "first_day": days[0].isoformat(),
        "last_day": days[-1].isoformat(),
        "window_upload_files": window_files,
        "clean_writer_options": json.loads(options[-1]) if options else None,
        "pca_version": pca["version"],
        "pca_k": pca["k"],
        "pca_rows": pca["rows_projected"],
        "feature_model_images": model.images,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    history.root.rename(history.pristine)
    history.ready.write_text(json.dumps(info, indent=2))
    return info


def fresh_root(history: History, dag: Dag) -> None:
    """The pristine history at the root the rounds run in: data files (never rewritten in place) hard-linked,
    every other file (JSON, moments, markers, checksums) copied, ``code/`` linked to the shared staging."""
    shutil.rmtree(history.root, ignore_errors=True)
    for top, folders, names in os.walk(history.pristine):
        relative = Path(top).relative_to(history.pristine)
        if relative == Path("."):
            folders[:] = [f for f in folders if f != "code"]
            names = [n for n in names if n != "code"]
        target = history.root / relative
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = Path(top) / name
            if name.endswith((".parquet", ".parquet.crc")) or relative.parts[:1] == ("uploads",):
                os.link(source, target / name)
            else:
                shutil.copy2(source, target / name)
    dag.link_code(history.root)


# -- one night -----------------------------------------------------------------------------------------------------
def stage_files(root: Path, day: dt.date) -> dict[str, dict[str, Any]]:
    """Files per stage after the night: data files, partitions, the night's partition."""
    counts = {}
    night = f"ingest_date={day.isoformat()}"
    for stage in ("clean", "rejected", "embed", "pca"):
        folder = root / "stages" / stage
        files = [p for p in folder.rglob("*") if p.is_file()]
        data = [p for p in files if p.name.endswith(".parquet")]
        partitions = {p.parent for p in data}
        counts[stage] = {
            "files": len(files),
            "parquet_files": len(data),
            "partitions": len(partitions),
            "parquet_files_per_partition": round(len(data) / max(1, len(partitions)), 2),
            "night_parquet_files": sum(1 for p in data if p.parent.name == night),
            "bytes": sum(p.stat().st_size for p in files),
        }
    counts["models"] = {"files": sum(1 for p in (root / "models").rglob("*") if p.is_file())}
    return counts


def run_night(
    history: History, dag: Dag, night_images: list[Path], window_files: int, label: str, timeout: float
) -> dict[str, Any]:
    """Upload the night, run the plan's four jobs one after the other; seconds and Spark metrics per job."""
    fresh_root(history, dag)
    copy_flat(night_images, history.root / "uploads" / NIGHT_DAY.isoformat())
    plan = dag.plan(history.root, NIGHT_DAY)
    dag.stage()
    ensure_onnx_export(dag, plan_weights(plan), timeout)
    jobs: dict[str, Any] = {}
    for job in plan.jobs:
        events = dag.work / "events" / f"{label}-{job.name}"
        shutil.rmtree(events, ignore_errors=True)
        events.mkdir(parents=True)
        log = dag.work / "logs" / f"{label}-{job.name}.log"
        seconds = run_logged(submit_command(job, events), log, f"{job.name} ({label})", timeout)
        jobs[job.name] = {"seconds": round(seconds, 2), **spark_metrics(events)}
        print(f"    {job.name:<7} {seconds:7.2f} s  input {jobs[job.name]['input_bytes'] / 1e6:9.2f} MB", flush=True)
    # What each job says it did, where the plan says it writes it (the DAG's asset extras read the same files).
    said = {job.name: json.loads(Path(job.summary).read_text()) for job in plan.jobs}
    clean_run, embed_run, pca_run, report = (said[n] for n in ("clean", "embed", "pca", "report"))
    checks = {
        "kept": clean_run.get("kept"),
        "rejected": clean_run.get("rejected"),
        "skipped_accounted": clean_run.get("skipped_accounted"),
        "embedded": embed_run.get("embedded"),
        "pca_rows_projected": pca_run.get("rows_projected"),
        "pca_refitted": pca_run.get("refitted"),
        "pca_drift": (pca_run.get("drift") or {}).get("drift"),
        "report_images_read": report.get("images_read"),
    }
    problems = []
    if pca_run.get("refitted"):
        problems.append(f"pca refitted ({pca_run.get('refit_reason')}): every row re-projected, not a plain night")
    if checks["embedded"] != checks["kept"] or checks["pca_rows_projected"] != checks["kept"]:
        problems.append(f"rows do not follow the night's kept images: {checks}")
    if checks["skipped_accounted"] != window_files:
        problems.append(f"clean skipped {checks['skipped_accounted']} files of the window, not {window_files}")
    for problem in problems:
        print(f"    WARNING: {problem}", flush=True)
    return {
        "jobs": jobs,
        "night_seconds": round(sum(j["seconds"] for j in jobs.values()), 2),
        "checks": checks,
        "problems": problems,
        "files": stage_files(history.root, NIGHT_DAY),
        "commands": {job.name: shlex.join(submit_command(job, Path("/EVENTS"))) for job in plan.jobs},
    }


# -- results -------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError):
        pass
    import pyspark

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "spark": pyspark.__version__,
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "jobs_modified": bool(git("status", "--porcelain", "spark_jobs"))}


def compare(small: dict, large: dict, stat: str) -> dict[str, Any]:
    """Per job and for the whole night: the kept figure (``stat`` over rounds) at both sizes, ratio, verdict."""
    pick = min if stat == "min" else statistics.median
    out: dict[str, Any] = {"jobs": {}}
    for name in small["rounds"][0]["jobs"]:
        a = pick(r["jobs"][name]["seconds"] for r in small["rounds"])
        b = pick(r["jobs"][name]["seconds"] for r in large["rounds"])
        out["jobs"][name] = {
            "seconds": [round(a, 2), round(b, 2)],
            "ratio": round(b / a, 3),
            "target": TARGET_JOB,
            "pass": b / a <= TARGET_JOB,
            "input_bytes": [
                small["rounds"][-1]["jobs"][name]["input_bytes"],
                large["rounds"][-1]["jobs"][name]["input_bytes"],
            ],
            "input_records": [
                small["rounds"][-1]["jobs"][name]["input_records"],
                large["rounds"][-1]["jobs"][name]["input_records"],
            ],
        }
    a = pick(r["night_seconds"] for r in small["rounds"])
    b = pick(r["night_seconds"] for r in large["rounds"])
    out["night"] = {"seconds": [round(a, 2), round(b, 2)], "ratio": round(b / a, 3), "target": TARGET_NIGHT}
    out["night"]["pass"] = b / a <= TARGET_NIGHT
    out["valid"] = not any(r["problems"] for h in (small, large) for r in h["rounds"])
    out["pass"] = out["valid"] and out["night"]["pass"] and all(j["pass"] for j in out["jobs"].values())
    return out


def print_table(small: dict, large: dict, comparison: dict, stat: str) -> None:
    a, b = f"{small['rows']:,}", f"{large['rows']:,}"
    print(f"\nA night of {small['rounds'][0]['checks']['kept']} images over histories of {a} and {b} rows ({stat}):")
    print(f"{'job':<8} {a + ' s':>10} {b + ' s':>10} {'ratio':>7} {'target':>7}       {'input MB ' + a:>16} "
          f"{'input MB ' + b:>17}")  # fmt: skip
    for name, job in comparison["jobs"].items():
        verdict = "PASS" if job["pass"] else "FAIL"
        print(f"{name:<8} {job['seconds'][0]:10.2f} {job['seconds'][1]:10.2f} {job['ratio']:7.2f} "
              f"{'<= ' + str(job['target']):>7} {verdict}  {job['input_bytes'][0] / 1e6:16.2f} "
              f"{job['input_bytes'][1] / 1e6:17.2f}")  # fmt: skip
    night = comparison["night"]
    verdict = "PASS" if night["pass"] else "FAIL"
    print(f"{'night':<8} {night['seconds'][0]:10.2f} {night['seconds'][1]:10.2f} {night['ratio']:7.2f} "
          f"{'<= ' + str(night['target']):>7} {verdict}")  # fmt: skip
    if not comparison["valid"]:
        print("INVALID: some nights did not run as plain nights (see the warnings above)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    shared = REPO.parent / "shared"
    weights = next(iter(sorted((shared / "models").glob("mobilenet_v2_*_no_top.h5"))), "imagenet")
    parser.add_argument("--data", type=Path, default=shared / "data" / "fruits-360-sample", help="Fruits-360 sample")
    parser.add_argument("--weights", default=str(weights), help="MobileNetV2 no-top .h5 weights (or imagenet)")
    parser.add_argument("--histories", type=int, nargs=2, default=[4000, 80000], help="history sizes (rows)")
    parser.add_argument("--history-nights", type=int, nargs=2, default=[20, 80], help="nights each history spans")
    parser.add_argument("--night", type=int, default=200, help="real images uploaded for the measured night")
    parser.add_argument("--rounds", type=int, default=2, help="measured nights per history (alternating)")
    parser.add_argument("--stat", choices=("min", "median"), default="min", help="figure kept over the rounds")
    parser.add_argument("--feature-images", type=int, default=4000, help="real images the features' Gaussian uses")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fruits-bench-history")
    parser.add_argument("--job-timeout", type=float, default=1800, help="seconds before a job is given up")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "history.json")
    args = parser.parse_args()
    if min(args.history_nights) < 1 or any(h < n for h, n in zip(args.histories, args.history_nights, strict=True)):
        parser.error("each history needs at least one row per night")

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(work / "airflow-home")  # importing the DAG's package loads Airflow's config
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    dag = Dag(args.weights, work)
    dag.stage()
    images = sample_images(args.data.resolve())
    if len(images) < args.night + 2:
        parser.error(f"{args.data} has {len(images)} images, the night needs {args.night}")
    night_images, feature_images = images[: args.night], images[args.night :][: args.feature_images]
    labels = sorted({p.parent.name for p in images})
    weights_arg = str(dag.code / dag.bundle.digest / dag.bundle.weights_name) if dag.bundle.weights_name else "imagenet"
    ensure_onnx_export(dag, Path(weights_arg), args.job_timeout)

    histories, infos = [], []
    model: FeatureModel | None = None
    for rows, nights in zip(args.histories, args.history_nights, strict=True):
        key = hashlib.sha256(
            json.dumps(
                [
                    FORMAT_VERSION,
                    rows,
                    nights,
                    dag.lookback_days,
                    jobs_digest(),
                    len(feature_images),
                    str(args.data.resolve()),
                    Path(args.weights).name,
                ]
            ).encode()  # fmt: skip
        ).hexdigest()[:12]
        history = History(rows, nights, work / f"history-{rows}-{nights}-{key}")
        if history.ready.is_file() and history.pristine.is_dir():
            info = json.loads(history.ready.read_text())
            print(f"history {rows:,} over {nights} nights: cached ({history.folder})", flush=True)
        else:
            print(f"history {rows:,} over {nights} nights: building in {history.folder}", flush=True)
            model = model or real_features(dag, feature_images, weights_arg, args.job_timeout)
            info = build_history(history, dag, labels, model, args.job_timeout)
            print(f"  built in {info['build_seconds']} s: k = {info['pca_k']}, {info['pca_rows']:,} rows", flush=True)
        histories.append(history)
        infos.append({**info, "rounds": []})

    for r in range(args.rounds):
        for history, info in zip(histories, infos, strict=True):
            print(f"round {r + 1}, history {history.rows:,}: a night of {args.night} images", flush=True)
            label = f"h{history.rows}-r{r + 1}"
            night = run_night(history, dag, night_images, info["window_upload_files"], label, args.job_timeout)
            info["rounds"].append(night)
            print(f"    night   {night['night_seconds']:7.2f} s  {night['checks']}", flush=True)

    small, large = infos
    comparison = compare(small, large, args.stat)
    print_table(small, large, comparison, args.stat)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "code": git_state(),
        "setup": {
            "master": MASTER,
            "driver_memory": DRIVER_MEMORY,
            "night_images": args.night,
            "night_day": NIGHT_DAY.isoformat(),
            "rounds": args.rounds,
            "stat": args.stat,
            "lookback_days": dag.lookback_days,
            "work": str(work),
        },
        "targets": {"night_ratio": TARGET_NIGHT, "job_ratio": TARGET_JOB},
        "comparison": comparison,
        "histories": infos,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'PASS' if comparison['pass'] else 'FAIL'} -> {args.output}")


if __name__ == "__main__":
    main()
