"""The contract between the DAG and the Spark jobs: every command line the DAG builds is accepted by the job's own
argument parser (``build_parser()``), on both backends, for every shape of params. The DAG and the jobs cannot
drift apart without this failing.
"""

from __future__ import annotations

import datetime as dt

import pytest

from dag_harness import parse_with_job, split_spark_submit
from fruits_dag.backends.emr import emr_steps
from fruits_dag.backends.local import LocalSparkJobOperator
from fruits_dag.bundle import Bundle
from fruits_dag.params import RunParams
from fruits_dag.plan import STEP_NAMES, build_plan
from fruits_dag.settings import load

DAY = dt.date(2026, 5, 1)
BUNDLE = Bundle(files=(), digest="0123456789abcdef", weights_name="mobilenet_v2_no_top.h5")
PARAMS = [
    RunParams(),
    RunParams(mode="full", input_uri="datasets/fruits-360", pca_k=50, pca_refit="always"),
    RunParams(pca_variance=0.8, core_instance_count=5),
]


def emr_settings():
    return load({"fruits_bucket": "fruits-prod", "fruits_weights": "/opt/weights/mobilenet_v2_no_top.h5"})


def local_settings(tmp_path):
    return load({"fruits_local_root": str(tmp_path), "fruits_weights": "/opt/weights/mobilenet_v2_no_top.h5"})


@pytest.mark.parametrize("params", PARAMS, ids=["defaults", "full-k-reuse", "variance"])
def test_every_emr_step_parses_with_its_jobs_parser(params):
    plan = build_plan(emr_settings(), params, DAY, BUNDLE)
    steps = emr_steps(plan)
    assert [s["Name"] for s in steps] == list(STEP_NAMES)
    for step in steps:
        argv = step["HadoopJarStep"]["Args"]
        assert argv[0] == "spark-submit"
        options, script, args = split_spark_submit(argv)
        assert script == f"s3://fruits-prod/code/{BUNDLE.digest}/{step['Name']}.py"
        assert options["--py-files"] == f"s3://fruits-prod/code/{BUNDLE.digest}/fruits_common.zip"
        parsed = parse_with_job(script, args)
        if step["Name"] == "clean":
            assert parsed.run_date == DAY
            window = ["2026-04-29", "2026-04-30", "2026-05-01"]  # the lookback window (3 days by default)
            expected_input = (
                ["s3://fruits-prod/datasets/fruits-360"]
                if params.mode == "full"
                else [f"s3://fruits-prod/uploads/{day}" for day in window]
            )
            assert parsed.input == expected_input
            assert parsed.skip_accounted_since == (None if params.mode == "full" else dt.date(2026, 4, 29))
        if step["Name"] == "embed":
            assert parsed.weights == f"s3://fruits-prod/code/{BUNDLE.digest}/mobilenet_v2_no_top.h5"
        if step["Name"] == "pca":
            assert (parsed.k, parsed.variance, parsed.refit, parsed.run_date) == (
                params.pca_k,
                None if params.pca_k else params.pca_variance,
                params.pca_refit,
                DAY,
            )
        if step["Name"] == "report":
            assert parsed.run_date == DAY and parsed.output == f"s3://fruits-prod/reports/{DAY}"


@pytest.mark.parametrize("params", PARAMS, ids=["defaults", "full-k-reuse", "variance"])
def test_every_local_command_parses_with_its_jobs_parser_and_matches_emr(params, tmp_path):
    local_plan = build_plan(local_settings(tmp_path), params, DAY, BUNDLE)
    emr_plan = build_plan(emr_settings(), params, DAY, BUNDLE)
    for name in STEP_NAMES:
        job = local_plan.to_xcom()[f"{name}_job"]
        argv = LocalSparkJobOperator(task_id=f"{name}_step", job=job).command()
        options, script, args = split_spark_submit(argv)
        assert options["--master"] == "local[*]"
        assert script == f"{tmp_path}/code/{BUNDLE.digest}/{name}.py"
        parse_with_job(script, args)
        # The same arguments as on EMR, under the other storage root.
        assert [a.replace("s3://fruits-prod", str(tmp_path)) for a in emr_plan.job(name).args] == args
