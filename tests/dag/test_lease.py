"""One writer per storage root (``fruits_dag.lease``): the lease on a local folder and on moto's S3, then the DAG.

The store tests run the same rules on both stores: a second writer is refused naming the holder, a stale lease is
taken over by exactly one of several racing writers, the same run takes its own lease back, and only the holder
gives it back. The DAG tests run ``airflow dags test`` against moto: a run facing a live lease writes nothing.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing

import pytest

from dag_harness import OpsTopic, aws_connection, dags_test, emr_variables, reset_moto
from fruits_dag import lease
from moto_emr import EmrEmulator

BUCKET = "fruits-lease"
DATE = "2026-05-01"
NOW = dt.datetime(2026, 5, 2, 2, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def holder(run_id: str, environment: str = "prod", taken: dt.datetime = NOW, valid: dt.timedelta = HOUR):
    return lease.Holder.of_run("fruits_pipeline", run_id, environment, valid, taken)


@pytest.fixture(params=["local", "s3"])
def store_factory(request, tmp_path, moto_endpoint, boto, monkeypatch):
    """Makes stores of one lease: a local file, or an object in moto's S3 (through the aws_default connection)."""
    if request.param == "local":
        uri = str(tmp_path / "root" / "locks" / "writer.json")
        return lambda: lease.LocalLeaseStore(uri)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(moto_endpoint))
    reset_moto(moto_endpoint)
    boto("s3").create_bucket(Bucket=BUCKET)
    return lambda: lease.S3LeaseStore(f"s3://{BUCKET}/locks/writer.json", "aws_default")


def test_a_second_writer_is_refused_with_the_holder_named(store_factory):
    store = store_factory()
    first = holder("scheduled__2026-05-01T02:00:00+00:00")
    assert lease.take(store, first, NOW) == first
    with pytest.raises(lease.LeaseHeld) as refused:
        lease.take(store_factory(), holder("manual__2026-05-02T03:00:00+00:00"), NOW + dt.timedelta(minutes=5))
    message = str(refused.value)
    assert "held by run scheduled__2026-05-01T02:00:00+00:00 of DAG fruits_pipeline (environment prod" in message
    assert f"valid until {first.expires_at}" in message and "writes nothing" in message
    # The holder's lease is untouched.
    assert lease.Holder.parse(store.read()[0]) == first


def test_the_same_run_takes_its_own_lease_back_and_a_same_named_run_elsewhere_does_not(store_factory):
    store = store_factory()
    run_id = "scheduled__2026-05-01T02:00:00+00:00"
    lease.take(store, holder(run_id), NOW)
    retry = holder(run_id, taken=NOW + dt.timedelta(minutes=10))
    assert lease.take(store, retry, retry_time := NOW + dt.timedelta(minutes=10)) == retry
    assert lease.Holder.parse(store.read()[0]).taken_at == retry_time.isoformat()
    with pytest.raises(lease.LeaseHeld, match="environment prod"):
        lease.take(store, holder(run_id, environment="staging"), NOW + dt.timedelta(minutes=11))


def test_an_expired_or_unreadable_lease_is_taken_over(store_factory):
    store = store_factory()
    lease.take(store, holder("scheduled__2026-04-30T02:00:00+00:00", taken=NOW - 2 * HOUR), NOW - 2 * HOUR)
    now = holder("scheduled__2026-05-01T02:00:00+00:00")
    assert lease.take(store, now, NOW) == now
    assert lease.Holder.parse(store.read()[0]) == now

    # A torn or foreign file says nothing about a live writer: taken over too.
    body, version = store.read()
    assert store.replace(b"{not json", version)
    again = holder("manual__2026-05-02T05:00:00+00:00")
    assert lease.take(store, again, NOW) == again


def test_only_the_holder_gives_the_lease_back(store_factory):
    store = store_factory()
    mine, theirs = holder("run-a"), holder("run-b", taken=NOW + 2 * HOUR)
    lease.take(store, mine, NOW)
    lease.take(store, theirs, NOW + 2 * HOUR)  # mine expired: taken over
    assert lease.give_back(store, mine) is False
    assert lease.Holder.parse(store.read()[0]) == theirs
    assert lease.give_back(store, theirs) is True
    assert store.read() is None
    assert lease.give_back(store, theirs) is False  # already gone: nothing to do


def _race(factory, index: int, results) -> None:
    me = holder(f"racer-{index}")
    try:
        lease.take(factory(), me, NOW)
        results.put(me.run_id)
    except lease.LeaseHeld:
        results.put(None)


def test_of_writers_racing_for_a_stale_lease_exactly_one_wins(store_factory):
    store = store_factory()
    lease.take(store, holder("gone", taken=NOW - 2 * HOUR), NOW - 2 * HOUR)
    results = multiprocessing.get_context("fork").Queue()
    racers = [
        multiprocessing.get_context("fork").Process(target=_race, args=(store_factory, n, results)) for n in range(6)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    winners = [r for r in (results.get(timeout=10) for _ in racers) if r]
    assert len(winners) == 1, winners
    assert lease.Holder.parse(store.read()[0]).run_id == winners[0]


# -- the DAG against moto --------------------------------------------------------------------------------------------


def put_lease(boto, who: lease.Holder) -> None:
    boto("s3").put_object(Bucket=BUCKET, Key="locks/writer.json", Body=who.to_bytes())


@pytest.fixture
def bucket(moto_endpoint, boto):
    reset_moto(moto_endpoint)
    s3 = boto("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=f"uploads/{DATE}/IMG_0001.jpg", Body=b"jpeg bytes")
    return s3


def written(s3) -> set[str]:
    """What the run wrote beside the uploads and the lease (the staged code aside)."""
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    return {k for k in keys if not k.startswith(("uploads/", "code/", "locks/"))}


@pytest.mark.usefixtures("airflow_db")
def test_a_run_facing_a_live_lease_fails_before_writing_and_says_who_holds_it(moto_endpoint, weights, boto, bucket):
    other = lease.Holder.of_run(
        "fruits_pipeline", "scheduled__2026-05-01T02:00:00+00:00", "staging", 10 * HOUR, dt.datetime.now(dt.UTC)
    )
    put_lease(boto, other)
    ops = OpsTopic(boto)
    with EmrEmulator():
        result = dags_test(DATE, ops.told(emr_variables(moto_endpoint, BUCKET, weights)))
    assert result.returncode != 0
    assert result.states["take_lease"] == "failed"
    assert result.states["create_cluster"] == "upstream_failed"
    assert result.states["give_back_lease"] in ("skipped", "upstream_failed")  # not its lease to give back
    assert boto("emr").list_clusters()["Clusters"] == []
    assert written(bucket) == set()
    assert lease.Holder.parse(bucket.get_object(Bucket=BUCKET, Key="locks/writer.json")["Body"].read()) == other
    (alert,) = ops.messages()
    assert alert["Subject"].startswith("[fruits-pipeline] take_lease failed")
    assert "scheduled__2026-05-01T02:00:00+00:00 of DAG fruits_pipeline (environment staging" in alert["Message"]


@pytest.mark.usefixtures("airflow_db")
def test_a_run_takes_over_a_stale_lease_and_gives_it_back(moto_endpoint, weights, boto, bucket):
    stale = lease.Holder.of_run(
        "fruits_pipeline", "crashed-run", "fruits-lease", HOUR, dt.datetime.now(dt.UTC) - 3 * HOUR
    )
    put_lease(boto, stale)
    with EmrEmulator():
        result = dags_test(DATE, emr_variables(moto_endpoint, BUCKET, weights))
    assert result.returncode == 0, result.explain()
    log = result.log("take_lease")
    assert "Took over the writer lease" in log and "crashed-run" in log
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET, Prefix="locks/")
    assert {k.split("/")[1] for k in written(bucket) if k.startswith("stages/")} >= {"clean", "embed"}
