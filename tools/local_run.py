"""The three parts of ``make run``: put the images in the local storage root, run the DAG, summarise the report.

    python tools/local_run.py prepare --root ROOT [--data DIR]     # prints the input_uri to use
    python tools/local_run.py run --date YYYY-MM-DD --log FILE --conf JSON
    python tools/local_run.py summary --root ROOT --date YYYY-MM-DD

``prepare`` links ``DIR`` (a folder in the Fruits-360 layout: ``<split>/<label>/<image>``; default: the real
Fruits-360 subset committed in ``data/fruits-360-mini``) into ``ROOT/datasets/<its name>`` rather than copying it.
``run`` runs ``airflow dags test fruits_pipeline`` with Airflow's whole log going to ``FILE`` only, and prints one
line per task as it ends: its state, seconds and key figure (files kept and rejected, rows embedded, k and variance).
A failed task prints its own error and the log file's path.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / "data" / "fruits-360-mini"
DAG_ID = "fruits_pipeline"

# What `airflow dags test` prints around each task's log, and what the jobs print when they end (fruits_common.spark).
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
TASK_STATE = re.compile(r"\bnew_state=(\w+)")
JOB_RESULT = re.compile(r"fruits-(\w+) finished: (?=\{)")
# An error line, without the logger's suffix (`[airflow.task...] loc=...`) that Airflow's log adds.
JOB_ERROR = re.compile(
    r"((?:fruits-\w+: error: |The \w+ job failed |AirflowFailException: |\w+Error: ).*?)(?:\s+\[[\w.]+\](?: \w+=.*)?)?$"
)


def prepare(root: Path, data: Path | None) -> str:
    """Make the images available under ``root/datasets/``; returns their ``input_uri`` (relative to ``root``)."""
    datasets = root / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    data = (data or DEFAULT_DATA).expanduser().resolve()
    if not data.is_dir():
        raise SystemExit(f"DATA={data} is not a folder of images (Fruits-360 layout: <split>/<label>/<image>)")
    target = datasets / data.name
    if target.is_symlink() or not target.exists():
        target.unlink(missing_ok=True)
        target.symlink_to(data, target_is_directory=True)
    elif target.resolve() != data:
        raise SystemExit(f"{target} already exists and is not a link to {data}: move it or use another RUN_DIR")
    print(f"Using the images of {data} (linked at {target})", file=sys.stderr)
    return f"datasets/{data.name}"


def key_figure(job: str, result: dict) -> str:
    """The one thing a person wants to know about a finished job."""
    if job == "clean":
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(result.get("rejected_by_reason", {}).items()))
        read = result.get("kept", 0) + result.get("rejected", 0)
        return f"{read} files read: {result.get('kept')} kept, {result.get('rejected')} rejected" + (
            f" ({reasons})" if reasons else ""
        )
    if job == "embed":
        return f"{result.get('embedded')} images embedded ({result.get('engine')})"
    if job == "pca":
        cumulative = result.get("cumulative_explained_variance") or [0.0]
        basis = f"new basis {result.get('version')}" if result.get("refitted") else f"basis {result.get('version')}"
        return f"{result.get('rows_projected')} rows projected ({basis}), k = {result.get('k')}, {cumulative[-1]:.1%}"
    if job == "report":
        return f"{result.get('images_read')} images in the report"
    return ""


@dataclass
class Progress:
    """Follows the output of ``airflow dags test`` and prints a line per task as it ends."""

    out: object = sys.stdout
    started: dict[str, float] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    current: str | None = None

    def feed(self, line: str) -> None:
        if match := TASK_START.search(line):
            self.current = match.group(1)
            self.started.setdefault(self.current, time.monotonic())
        elif match := TASK_END.search(line):
            self.end(match.group(1))
        elif self.current:
            if match := JOB_RESULT.search(line):
                try:
                    result, _ = json.JSONDecoder().raw_decode(line, match.end())
                    self.figures[self.current] = key_figure(match.group(1), result)
                except json.JSONDecodeError:
                    pass
            if match := TASK_STATE.search(line):
                self.states[self.current] = match.group(1).lower()
            if match := JOB_ERROR.search(line.strip()):
                self.errors.setdefault(self.current, []).append(match.group(1))

    def end(self, task_id: str) -> None:
        seconds = time.monotonic() - self.started.get(task_id, time.monotonic())
        state = self.states.get(task_id, "done")
        figure = self.figures.get(task_id, "")
        print(f"  {task_id:<18} {state:<8} {seconds:6.1f} s  {figure}".rstrip(), file=self.out, flush=True)
        for error in dict.fromkeys(self.errors.get(task_id, []) if state != "success" else []):
            print(f"      {error}", file=self.out, flush=True)
        self.current = None


def run(date: str, log: Path, conf: str, airflow: str) -> int:
    """``airflow dags test`` with its output in ``log``; returns its exit status."""
    print(f"Running {DAG_ID} for {date}; Airflow's log: {log}", flush=True)
    progress = Progress()
    with open(log, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen(
            [airflow, "dags", "test", DAG_ID, date, "--conf", conf],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            progress.feed(line)
        status = proc.wait()
    if status != 0:
        print(f"The run failed (exit status {status}): see the task errors above and {log}", file=sys.stderr)
    return status


def summary(root: Path, date: str) -> str:
    """A few lines from ``reports/<date>/report.json``."""
    folder = root / "reports" / date
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report.get("rejected_by_reason", {}).items()))
    labels = ", ".join(f"{label} {n}" for label, n in report.get("kept_per_label", {}).items())
    cumulative = report.get("cumulative_explained_variance") or [0.0]
    target = report.get("variance_target")
    lines = [
        f"fruits_pipeline, local run of {date}: done",
        f"  report    {folder / 'report.json'} (plots: {', '.join(report.get('plots', []))})",
        f"  images    {report['images_read']} read, {report['kept']} kept, {report['rejected']} rejected"
        + (f" ({reasons})" if reasons else ""),
        f"  labels    {labels or '(none)'}",
        f"  PCA       k = {report['k']}, {cumulative[-1]:.1%} of the variance explained"
        + (f" (target {target:.0%})" if target else ""),
        f"  features  {root / 'stages' / 'pca' / ('pca_version=' + str(report.get('pca_version')))}"
        f" ({report.get('final_rows', '?')} rows in all)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line of the three parts (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="put the images under ROOT/datasets/ and print their input_uri")
    prep.add_argument("--root", type=Path, required=True)
    prep.add_argument("--data", type=Path, default=None)
    go = commands.add_parser("run", help="airflow dags test, a line per task, the full log in a file")
    go.add_argument("--date", required=True)
    go.add_argument("--log", type=Path, required=True)
    go.add_argument("--conf", required=True)
    go.add_argument("--airflow", default=str(Path(sys.executable).parent / "airflow"))
    summ = commands.add_parser("summary", help="print a summary of the run's report")
    summ.add_argument("--root", type=Path, required=True)
    summ.add_argument("--date", required=True)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.root, args.data))
    elif args.command == "run":
        return run(args.date, args.log, args.conf, args.airflow)
    else:
        print(summary(args.root, args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
