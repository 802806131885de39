"""The EMR backend end to end: ``airflow dags test`` against a moto server, steps driven by :mod:`moto_emr`."""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from pathlib import Path

import pytest

from dag_harness import (
    REPO_ROOT,
    STAND_IN_WHEELHOUSE,
    OpsTopic,
    dags_test,
    emr_variables,
    parse_with_job,
    reset_moto,
    split_spark_submit,
    with_settings,
)
from moto_emr import EmrEmulator

BUCKET = "fruits-test"
DATE = "2026-05-01"
STEPS = ["clean", "embed", "pca", "report"]
CODE_FILES = {
    "clean.py",
    "embed.py",
    "pca.py",
    "report.py",
    "fruits_common.zip",
    "requirements.txt",
    "emr_bootstrap.sh",
    "mobilenet_v2_test.onnx",
}
ARTIFACTS = f"s3://{BUCKET}/code/artifacts"
CONF = {"core_instance_count": 3, "core_instance_type": "m5.2xlarge", "pca_k": 50}
# What the report step "writes": a night that read 10 photos, kept 6 and rejected 4; no refit, a measured drift.
REPORT = {"images_read": 10, "kept": 6, "rejected": 4, "pca_refitted": False, "pca_drift": {"drift": 0.012}}

pytestmark = pytest.mark.usefixtures("airflow_db")


def pipeline_env(endpoint: str, weights: Path, sensor_timeout: int = 20) -> dict[str, str]:
    return with_settings(emr_variables(endpoint, BUCKET, weights), fruits_sensor_timeout=sensor_timeout)


def prepare_bucket(boto, uploads: bool = True) -> None:
    s3 = boto("s3")
    s3.create_bucket(Bucket=BUCKET)
    if uploads:
        for name in ("IMG_0001.jpg", "IMG_0002.jpg"):
            s3.put_object(Bucket=BUCKET, Key=f"uploads/{DATE}/{name}", Body=b"jpeg bytes")
        # Another day's upload: an incremental run must not read it.
        s3.put_object(Bucket=BUCKET, Key="uploads/2026-04-30/IMG_0000.jpg", Body=b"jpeg bytes")


def code_objects(boto, prefix: str = "code/") -> dict[str, object]:
    """The staged files under ``prefix`` (by default the code bundles, not ``code/artifacts/``)."""
    listing = boto("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {
        o["Key"]: o["LastModified"] for o in listing if prefix != "code/" or not o["Key"].startswith("code/artifacts/")
    }


def cluster_steps(boto, cluster_id: str) -> list[dict]:
    """The cluster's steps in the order they were added (ListSteps returns newest first)."""
    return list(reversed(boto("emr").list_steps(ClusterId=cluster_id)["Steps"]))


@pytest.fixture(scope="module")
def happy_run(moto_endpoint, weights, boto):
    """One successful nightly run of DATE; the re-run test runs it a second time."""
    reset_moto(moto_endpoint)
    prepare_bucket(boto)
    ops = OpsTopic(boto)
    with EmrEmulator() as emr:
        emr.report = REPORT
        result = dags_test(DATE, ops.told(pipeline_env(moto_endpoint, weights)), conf=CONF)
    assert result.returncode == 0, result.explain() + result.output[-6000:]
    clusters = boto("emr").list_clusters()["Clusters"]
    result.alerts = ops.messages()
    return result, emr, clusters


def test_happy_path_runs_every_task(happy_run):
    result, _, _ = happy_run
    assert set(result.states.values()) == {"success"}, result.states
    assert len(result.states) == 16
    assert result.alerts == []  # a good night tells nobody anything


def test_the_runs_figures_reach_cloudwatch_under_its_environment(happy_run, boto):
    cloudwatch = boto("cloudwatch")
    env = [{"Name": "Environment", "Value": BUCKET}]  # fruits_environment: by default the bucket

    def latest(name: str, dimensions: list[dict[str, str]] = env) -> float:
        stats = cloudwatch.get_metric_statistics(
            Namespace="FruitsPipeline",
            MetricName=name,
            Dimensions=dimensions,
            StartTime=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
            EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
            Period=3600,
            Statistics=["Maximum"],
        )["Datapoints"]
        assert len(stats) == 1, (name, stats)
        return stats[0]["Maximum"]

    assert (latest("ImagesRead"), latest("Kept"), latest("Rejected")) == (10, 6, 4)
    assert latest("RejectedShare") == pytest.approx(0.4)
    assert (latest("NothingKept"), latest("PcaRefitted")) == (0, 0)
    assert latest("PcaDrift") == pytest.approx(0.012)
    for job in STEPS:
        assert latest("JobSeconds", [*env, {"Name": "Job", "Value": job}]) >= 0


def test_spark_writes_its_event_logs_under_the_runs_prefix(happy_run):
    _, emr, _ = happy_run
    (request,) = emr.run_job_flow_requests
    spark = {c["Classification"]: c.get("Properties", {}) for c in request["Configurations"]}["spark-defaults"]
    assert spark["spark.eventLog.enabled"] == "true"
    assert spark["spark.eventLog.dir"] == f"s3://{BUCKET}/logs/spark-events/{DATE}"


def test_the_writer_lease_is_taken_before_the_cluster_and_given_back_after_it(happy_run, boto):
    result, _, _ = happy_run
    taken = result.log("take_lease")
    assert f"Took the writer lease s3://{BUCKET}/locks/writer.json" in taken
    assert "Gave back the writer lease" in result.log("give_back_lease")
    assert "Contents" not in boto("s3").list_objects_v2(Bucket=BUCKET, Prefix="locks/")


def test_happy_path_stages_code_and_model_under_their_content_hash(happy_run, boto, weights):
    objects = code_objects(boto)
    prefixes = {key.split("/")[1] for key in objects}
    assert len(prefixes) == 1 and re.fullmatch(r"[0-9a-f]{16}", next(iter(prefixes)))
    digest = prefixes.pop()
    assert {key.split("/", 2)[2] for key in objects} == CODE_FILES
    s3 = boto("s3")
    body = lambda name: s3.get_object(Bucket=BUCKET, Key=f"code/{digest}/{name}")["Body"].read()  # noqa: E731
    assert body("clean.py") == (REPO_ROOT / "spark_jobs" / "clean.py").read_bytes()
    assert body("mobilenet_v2_test.onnx") == weights.read_bytes()
    shipped = zipfile.ZipFile(io.BytesIO(body("fruits_common.zip"))).namelist()
    assert "fruits_common/__init__.py" in shipped and not any("__pycache__" in n for n in shipped)


def test_happy_path_cluster_configuration(happy_run, boto):
    _, emr, clusters = happy_run
    assert len(clusters) == 1
    emr_client = boto("emr")
    cluster = emr_client.describe_cluster(ClusterId=clusters[0]["Id"])["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.13.0"
    assert [a["Name"] for a in cluster["Applications"]] == ["Spark"]
    assert cluster["LogUri"] == f"s3://{BUCKET}/logs/emr/"
    assert cluster["Status"]["State"] == "TERMINATED"
    assert {t["Key"]: t["Value"] for t in cluster["Tags"]}["fruits:run_date"] == DATE

    (request,) = emr.run_job_flow_requests
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert request["ServiceRole"] == "EMR_DefaultRole" and request["JobFlowRole"] == "EMR_EC2_DefaultRole"
    groups = {g["InstanceRole"]: g for g in request["Instances"]["InstanceGroups"]}
    assert (groups["CORE"]["InstanceCount"], groups["CORE"]["InstanceType"]) == (3, "m5.2xlarge")
    assert groups["MASTER"]["InstanceCount"] == 1
    spark_env = next(c for c in request["Configurations"] if c["Classification"] == "spark-env")
    assert spark_env["Configurations"][0]["Properties"]["PYSPARK_PYTHON"] == "/usr/bin/python3.11"

    (bootstrap,) = emr_client.list_bootstrap_actions(ClusterId=clusters[0]["Id"])["BootstrapActions"]
    code = bootstrap["ScriptPath"].rsplit("/", 1)[0]
    assert re.fullmatch(rf"s3://{BUCKET}/code/[0-9a-f]{{16}}", code)
    assert bootstrap["ScriptPath"] == f"{code}/emr_bootstrap.sh"
    # Each node installs the wheelhouse of its architecture, staged once under code/artifacts/.
    assert bootstrap["Args"] == [f"x86_64={ARTIFACTS}/{STAND_IN_WHEELHOUSE}"]
    assert set(code_objects(boto, "code/artifacts/")) == {f"code/artifacts/{STAND_IN_WHEELHOUSE}"}


def test_happy_path_steps_in_order_with_staged_scripts(happy_run, boto):
    _, _, clusters = happy_run
    steps = cluster_steps(boto, clusters[0]["Id"])
    assert [s["Name"] for s in steps] == STEPS
    assert {s["Status"]["State"] for s in steps} == {"COMPLETED"}
    (code,) = {key.rsplit("/", 1)[0] for key in code_objects(boto)}
    for step in steps:
        config = step["Config"]
        assert config["Jar"] == "command-runner.jar" and step["ActionOnFailure"] == "CANCEL_AND_WAIT"
        assert config["Args"][:6] == [
            "spark-submit",
            "--deploy-mode",
            "client",
            "--py-files",
            f"s3://{BUCKET}/{code}/fruits_common.zip",
            f"s3://{BUCKET}/{code}/{step['Name']}.py",
        ]
        _, script, args = split_spark_submit(config["Args"])
        parse_with_job(script, args)  # what EMR received is what the job accepts
    clean_args = steps[0]["Config"]["Args"]
    # The lookback window of uploads folders ends with the run date's.
    clean_inputs = clean_args[clean_args.index("--input") + 1 : clean_args.index("--output")]
    assert clean_inputs[-1] == f"s3://{BUCKET}/uploads/{DATE}"
    embed_args = steps[1]["Config"]["Args"]
    assert embed_args[embed_args.index("--weights") + 1] == f"s3://{BUCKET}/{code}/mobilenet_v2_test.onnx"
    pca_args = steps[2]["Config"]["Args"]
    assert pca_args[pca_args.index("--k") + 1] == "50" and "--variance" not in pca_args


def test_templates_render_for_the_logical_date(happy_run):
    result, _, _ = happy_run
    rendered = result.rendered
    assert rendered["wait_for_uploads"]["bucket_key"] == f"s3://{BUCKET}/uploads/{DATE}/*"
    assert rendered["clean_success"]["bucket_key"] == [
        f"s3://{BUCKET}/stages/clean/ingest_date={DATE}/_SUCCESS",
        f"s3://{BUCKET}/stages/rejected/ingest_date={DATE}/_SUCCESS",
    ]
    assert rendered["report_success"]["bucket_key"] == [f"s3://{BUCKET}/reports/{DATE}/_SUCCESS"]
    assert rendered["create_cluster"]["job_flow_overrides"]["Name"] == f"fruits-pipeline-{DATE}"
    assert re.fullmatch(r"s-\w+", rendered["embed_step"]["step_id"])
    assert re.fullmatch(r"j-\w+", rendered["terminate_cluster"]["job_flow_id"])


def test_rerun_of_the_same_date_stages_nothing_and_submits_the_same_steps(happy_run, moto_endpoint, weights, boto):
    _, _, first_clusters = happy_run
    staged_before, artifacts_before = code_objects(boto), code_objects(boto, "code/artifacts/")
    with EmrEmulator():
        result = dags_test(DATE, pipeline_env(moto_endpoint, weights), conf=CONF)
    assert result.returncode == 0, result.explain()
    assert code_objects(boto) == staged_before  # same keys, none rewritten
    assert code_objects(boto, "code/artifacts/") == artifacts_before
    assert "nothing uploaded" in result.log("stage_code")

    clusters = boto("emr").list_clusters()["Clusters"]
    second = [c for c in clusters if c["Id"] != first_clusters[0]["Id"]]
    assert len(second) == 1
    first_args = [s["Config"]["Args"] for s in cluster_steps(boto, first_clusters[0]["Id"])]
    second_args = [s["Config"]["Args"] for s in cluster_steps(boto, second[0]["Id"])]
    assert second_args == first_args


def test_failing_embed_step_fails_the_run_and_still_terminates_the_cluster(moto_endpoint, weights, boto):
    reset_moto(moto_endpoint)
    prepare_bucket(boto)
    ops = OpsTopic(boto)
    with EmrEmulator() as emr:
        emr.fail_steps.add("embed")
        result = dags_test(DATE, ops.told(pipeline_env(moto_endpoint, weights)))
    assert result.returncode != 0
    states = result.states
    assert states["clean_step"] == states["clean_success"] == "success"
    assert states["embed_step"] == "failed"
    assert states["pca_step"] == states["report_step"] == "upstream_failed"
    assert states["terminate_cluster"] == "success"

    (cluster,) = boto("emr").list_clusters()["Clusters"]
    assert cluster["Status"]["State"] == "TERMINATED"
    steps = {s["Name"]: s["Status"]["State"] for s in cluster_steps(boto, cluster["Id"])}
    assert steps == {"clean": "COMPLETED", "embed": "FAILED", "pca": "CANCELLED", "report": "CANCELLED"}

    log = result.log("embed_step")
    assert "EMR step 'embed'" in log and f"on cluster {cluster['Id']} ended FAILED" in log
    assert "EMR gave no failure details" in log
    assert f"s3://{BUCKET}/logs/emr/{cluster['Id']}/steps/" in log

    # One message, for the task that failed for good (the tasks it stopped did not fail themselves).
    messages = ops.messages()
    assert len(messages) == 1, (messages, log[-4000:])
    (alert,) = messages
    assert alert["Subject"] == f"[fruits-pipeline] embed_step failed (fruits_pipeline, {DATE} 00:00:00+00:00)"
    assert f"Run: {result.run_id}" in alert["Message"]
    assert f"on cluster {cluster['Id']} ended FAILED" in alert["Message"]
    assert "Log: http" in alert["Message"] and "embed_step" in alert["Message"]
    # The lease went back after the cluster: the next night can write.
    assert result.states["give_back_lease"] == "success"


def test_no_uploads_skips_the_run_and_creates_no_cluster(moto_endpoint, weights, boto):
    reset_moto(moto_endpoint)
    prepare_bucket(boto, uploads=False)
    boto("s3").put_object(Bucket=BUCKET, Key="uploads/2026-04-30/IMG_0000.jpg", Body=b"jpeg bytes")
    ops = OpsTopic(boto)
    with EmrEmulator():
        result = dags_test(DATE, ops.told(pipeline_env(moto_endpoint, weights, sensor_timeout=3)))
    assert result.returncode == 0, result.explain()
    assert result.states["stage_code"] == "success"
    assert result.states["wait_for_uploads"] == "skipped"
    skipped = ("take_lease", "create_cluster", "add_steps", "clean_step", "terminate_cluster", "give_back_lease")
    assert {result.states[t] for t in skipped} == {"skipped"}
    assert boto("emr").list_clusters()["Clusters"] == []
    assert ops.messages() == []  # the night before had uploads: a quiet night, not an alarm


def test_the_third_night_in_a_row_without_uploads_fails_and_alerts(moto_endpoint, weights, boto):
    reset_moto(moto_endpoint)
    prepare_bucket(boto, uploads=False)
    boto("s3").put_object(Bucket=BUCKET, Key="uploads/2026-04-28/IMG_0000.jpg", Body=b"jpeg bytes")  # 4 days ago
    ops = OpsTopic(boto)
    with EmrEmulator():
        result = dags_test(DATE, ops.told(pipeline_env(moto_endpoint, weights, sensor_timeout=3)))
    assert result.returncode != 0
    assert result.states["wait_for_uploads"] == "failed"
    assert result.states["create_cluster"] == "upstream_failed"
    assert boto("emr").list_clusters()["Clusters"] == []
    (alert,) = ops.messages()
    assert alert["Subject"].startswith("[fruits-pipeline] wait_for_uploads failed")
    assert "No uploads for 3 nights in a row" in alert["Message"]
    assert f"s3://{BUCKET}/uploads/2026-04-30/, s3://{BUCKET}/uploads/2026-04-29/" in alert["Message"]


def test_a_stale_success_marker_is_not_taken_for_the_steps_output(moto_endpoint, weights, boto):
    """Yesterday's stages/embed/_SUCCESS is there; today's embed step 'completes' without writing a new one."""
    reset_moto(moto_endpoint)
    prepare_bucket(boto)
    boto("s3").put_object(Bucket=BUCKET, Key="stages/embed/_SUCCESS", Body=b"")
    with EmrEmulator() as emr:
        emr.silent_steps.add("embed")
        result = dags_test(DATE, pipeline_env(moto_endpoint, weights, sensor_timeout=4))
    assert result.returncode != 0
    assert (result.states["embed_step"], result.states["embed_success"]) == ("success", "failed")
    assert result.states["pca_step"] == "upstream_failed" and result.states["terminate_cluster"] == "success"
    assert "before the step started" in result.log("embed_success")
    (cluster,) = boto("emr").list_clusters()["Clusters"]
    assert cluster["Status"]["State"] == "TERMINATED"
