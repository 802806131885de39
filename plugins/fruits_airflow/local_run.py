"""The two ends of ``make run``: put the images in the local storage root, then summarise the run's report.

    python -m fruits_airflow.local_run prepare --root ROOT [--data DIR]   # prints the input_uri to use
    python -m fruits_airflow.local_run summary --root ROOT --date YYYY-MM-DD

``prepare`` links ``DIR`` (a folder in the Fruits-360 layout: ``<split>/<label>/<image>``) into
``ROOT/datasets/<its name>`` rather than copying it; without ``--data`` it writes the synthetic sample into
``ROOT/datasets/synthetic-fruits`` once. The run then reads it with ``mode=full``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fruits_airflow.synthetic_sample import write_sample

SYNTHETIC = "synthetic-fruits"


def prepare(root: Path, data: Path | None) -> str:
    """Make the images available under ``root/datasets/``; returns their ``input_uri`` (relative to ``root``)."""
    datasets = root / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    if data is None:
        target = datasets / SYNTHETIC
        if not (target / "SYNTHETIC.txt").is_file():
            count = write_sample(target)
            print(f"Wrote {count} SYNTHETIC images (drawings, not photos) to {target}", file=sys.stderr)
        return f"datasets/{SYNTHETIC}"
    data = data.expanduser().resolve()
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
        f"  features  {root / 'stages' / 'pca'} ({report.get('final_rows', '?')} rows in all)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="put the images under ROOT/datasets/ and print their input_uri")
    prep.add_argument("--root", type=Path, required=True)
    prep.add_argument("--data", type=Path, default=None)
    summ = commands.add_parser("summary", help="print a summary of the run's report")
    summ.add_argument("--root", type=Path, required=True)
    summ.add_argument("--date", required=True)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.root, args.data))
    else:
        print(summary(args.root, args.date))


if __name__ == "__main__":
    main()
