"""One writer per storage root: a run takes a lease on ``<root>/locks/writer.json`` before it writes anything.

``max_active_runs=1`` only keeps one DAG's scheduled runs apart. An ``airflow dags test`` of a date, or a second
deployment pointed at the same bucket, would write beside the running night: embed's append would duplicate
rows and two pca jobs would race for the next version number. So the ``take_lease`` task, after the uploads
arrived and before the cluster or the first job, creates the lease object with a **conditional write** that
fails when it exists (S3 ``PutObject`` with ``If-None-Match: *``; locally ``O_CREAT | O_EXCL``), and the
``give_back_lease`` teardown deletes it after the last job (and the cluster) ended, whatever happened.

The lease names its holder (DAG, run, environment, host, when taken) and expires ``fruits_run_timeout`` after
it was taken: no run lives longer, since Airflow stops it then. A second writer fails at once with an error that
names the holder. A lease that expired (its run is gone without giving it back: a killed worker, a run marked
failed in the database) is **taken over** with a write conditional on the version read (``If-Match: <ETag>``),
so of two writers racing for a stale lease exactly one wins. The same run (a retry, a cleared run) takes its
own lease again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another run holds the storage root's lease; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, and until when (ISO times, UTC)."""

    dag_id: str
    run_id: str
    environment: str
    host: str
    taken_at: str
    expires_at: str

    @classmethod
    def of_run(cls, dag_id: str, run_id: str, environment: str, valid_for: dt.timedelta, now: dt.datetime) -> Holder:
        return cls(dag_id, run_id, environment, socket.gethostname(), now.isoformat(), (now + valid_for).isoformat())

    @classmethod
    def parse(cls, body: bytes) -> Holder | None:
        """The holder in a lease object; ``None`` when unreadable (a torn or foreign file: treated as expired)."""
        try:
            return cls(**json.loads(body))
        except (ValueError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    def same_run(self, other: Holder) -> bool:
        return (self.dag_id, self.run_id, self.environment) == (other.dag_id, other.run_id, other.environment)

    def expired(self, now: dt.datetime) -> bool:
        return dt.datetime.fromisoformat(self.expires_at) <= now

    def describe(self) -> str:
        return (
            f"run {self.run_id} of DAG {self.dag_id} (environment {self.environment}, host {self.host}), "
            f"taken at {self.taken_at}, valid until {self.expires_at}"
        )


class LeaseStore(Protocol):
    """The lease object, with compare-and-swap writes. ``version`` is an opaque token of what was read."""

    uri: str

    def create(self, body: bytes) -> bool:
        """Write ``body`` only if there is no lease; ``False`` if there is one."""

    def read(self) -> tuple[bytes, str] | None:
        """The lease's bytes and version, or ``None`` if there is none."""

    def replace(self, body: bytes, version: str) -> bool:
        """Overwrite the lease only if it is still at ``version``; ``False`` if it changed or went."""

    def delete(self, version: str) -> None:
        """Remove the lease (read at ``version`` by its holder)."""


def take(store: LeaseStore, me: Holder, now: dt.datetime) -> Holder:
    """Take the lease for ``me``: create it, take back our own, or take over an expired one; else raise
    :class:`LeaseHeld` naming the holder. Nothing else is written before this returns."""
    for _ in range(3):  # a lease given back between our create and our read: try again
        if store.create(me.to_bytes()):
            log.info("Took the writer lease %s until %s", store.uri, me.expires_at)
            return me
        current = store.read()
        if current is None:
            continue
        body, version = current
        holder = Holder.parse(body)
        if holder is not None and not holder.same_run(me) and not holder.expired(now):
            raise LeaseHeld(
                f"{store.uri} is held by {holder.describe()}: another run is writing under this storage root, "
                "so this one writes nothing. Wait for it to end; if it is gone, its lease expires at the time "
                "above (or delete the lease by hand once you are sure nothing writes)."
            )
        why = "our own" if holder is not None and holder.same_run(me) else "expired or unreadable"
        if store.replace(me.to_bytes(), version):
            log.warning("Took over the writer lease %s (%s; it was %s)", store.uri, why, body.decode(errors="replace"))
            return me
        # Someone else changed it between our read and our write: look again.
    current = store.read()
    holder = Holder.parse(current[0]) if current else None
    raise LeaseHeld(f"{store.uri} changes hands too fast to be taken (last seen: {holder and holder.describe()})")


def give_back(store: LeaseStore, me: Holder) -> bool:
    """Delete the lease if ``me``'s run holds it; returns whether it did (a lease taken over is left alone)."""
    current = store.read()
    if current is None:
        log.warning("The writer lease %s was already gone", store.uri)
        return False
    holder = Holder.parse(current[0])
    if holder is None or not holder.same_run(me):
        log.warning("The writer lease %s is held by %s now: left alone", store.uri, holder and holder.describe())
        return False
    store.delete(current[1])
    log.info("Gave back the writer lease %s", store.uri)
    return True


class LocalLeaseStore:
    """The lease as a local file: created with ``O_EXCL``; take-overs under an ``flock`` of a side file."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.path = Path(uri)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as side:
            fcntl.flock(side, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(side, fcntl.LOCK_UN)

    def _version(self) -> str:
        stat = self.path.stat()
        return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"

    def create(self, body: bytes) -> bool:
        with self._locked():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as file:
                file.write(body)
            return True

    def read(self) -> tuple[bytes, str] | None:
        with self._locked():
            try:
                return self.path.read_bytes(), self._version()
            except FileNotFoundError:
                return None

    def replace(self, body: bytes, version: str) -> bool:
        with self._locked():
            try:
                if self._version() != version:
                    return False
            except FileNotFoundError:
                return False
            with tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=".writer.", delete=False) as tmp:
                tmp.write(body)
            os.replace(tmp.name, self.path)  # a new inode: the version changes even within one mtime tick
            return True

    def delete(self, version: str) -> None:
        with self._locked(), contextlib.suppress(FileNotFoundError):
            if self._version() == version:
                self.path.unlink()


class S3LeaseStore:
    """The lease as an S3 object, with S3's conditional writes (``If-None-Match: *``, ``If-Match: <ETag>``)."""

    def __init__(self, uri: str, aws_conn_id: str) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.uri = uri
        self.hook = S3Hook(aws_conn_id=aws_conn_id)
        self.bucket, self.key = S3Hook.parse_s3_url(uri)

    @staticmethod
    def _refused(error: Exception) -> bool:
        # 412: the condition failed; 409: a concurrent conditional write to the same key won.
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        return code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}

    def _put(self, body: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.hook.conn.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json", **condition
            )
        except ClientError as error:
            if self._refused(error):
                return False
            raise
        return True

    def create(self, body: bytes) -> bool:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.hook.conn.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        return answer["Body"].read(), answer["ETag"]

    def replace(self, body: bytes, version: str) -> bool:
        return self._put(body, IfMatch=version)

    def delete(self, version: str) -> None:
        # The holder deletes its own lease; nobody takes over an unexpired one, so no condition is needed.
        self.hook.conn.delete_object(Bucket=self.bucket, Key=self.key)
