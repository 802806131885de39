"""Backends: how the jobs of a run are launched and watched. One module per backend, each with a ``Backend``.

The DAG asks the configured backend for its tasks and never branches on which one it is:

* :meth:`Backend.code_store`, :meth:`Backend.bundle`: where ``stage_code`` puts the code bundle, and what it is;
* :meth:`Backend.prepare`: what else the run needs staged (the EMR nodes' ONNX model and wheelhouses);
* :meth:`Backend.plan_extras`: what the backend adds to the run's plan (XCom), e.g. the EMR cluster request;
* :meth:`Backend.key_sensor`, :meth:`Backend.uploads_sensor`: sensors on files of the storage layout (the
  ``_SUCCESS`` markers; the night's uploads, which alert after too many nights without any);
* :meth:`Backend.lease_store`: where the run's writer lease lives (:mod:`fruits_dag.lease`);
* :meth:`Backend.setup`, :meth:`Backend.job_task`, :meth:`Backend.teardown`: the tasks before the first job (a
  cluster), the task that runs one job, and what must run whatever happens (ending the cluster).

Adding a backend (EMR Serverless, say) means adding one module here whose ``BACKEND`` is its :class:`Backend`
subclass; the Variable ``fruits_backend`` accepts every module's name.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import Asset, BaseOperator

from fruits_dag import assets
from fruits_dag.bundle import Bundle, CodeStore, build_bundle
from fruits_dag.lease import LeaseStore
from fruits_dag.params import RunParams
from fruits_dag.plan import RunPlan
from fruits_dag.settings import Settings

log = logging.getLogger(__name__)

CheckFn = Callable[..., bool]


def from_plan(key: str) -> str:
    """Template for one value of the run's plan (``stage_code``'s XCom); the DAG renders templates natively.

    Templates rather than XComArgs keep the graph a chain: an XComArg would add an edge from stage_code to each task.
    """
    return f"{{{{ ti.xcom_pull(task_ids='stage_code', key='{key}') }}}}"


def marker_is_fresh(step_task_id: str, job: str | None = None, outlet: Asset | None = None) -> CheckFn:
    """``check_fn`` for a ``_SUCCESS`` sensor: the marker must not be older than the step that writes it.

    Some markers outlive a run (``stages/embed/_SUCCESS`` is rewritten by every run), so existing is not enough:
    the step task (``step_task_id``) returns ``{"started": ISO time, ...}`` and every marker found must have been
    modified at or after it. Storage clocks give whole seconds (S3's LastModified), so the comparison does too.
    Works for ``S3KeySensor`` and the local sensor alike: both pass ``LastModified`` as an aware datetime.

    With an ``outlet`` (the job's asset, also in the sensor's ``outlets``), a fresh marker also sets the asset
    event's extras from the summary ``job`` wrote (its URI is in the run's plan), so the event carries them.
    """

    def check(files: list[dict[str, Any]], **context: Any) -> bool:
        step = context["ti"].xcom_pull(task_ids=step_task_id) or {}
        if not step.get("started"):
            log.warning("Task %s left no start time: cannot tell a fresh marker from a stale one", step_task_id)
            return False
        started = dt.datetime.fromisoformat(step["started"]).replace(microsecond=0)
        stale = [f for f in files if f.get("LastModified") is None or f["LastModified"] < started]
        for f in stale:
            # S3KeySensor gives no Key for an exact key; it logged the key it pokes just before.
            log.info(
                "Marker %s was last modified at %s, before the step started at %s: an earlier run's, waiting "
                "for this step's",
                f.get("Key") or "(the key above)",
                f.get("LastModified"),
                started.isoformat(),
            )
        if stale:
            return False
        if outlet is not None and job is not None:
            summary_uri = context["ti"].xcom_pull(task_ids="stage_code", key=f"{job}_summary")
            run_date = context["ti"].xcom_pull(task_ids="stage_code", key="run_date")
            context["outlet_events"][outlet].extra = assets.extras(job, run_date, assets.read_summary(summary_uri))
        return True

    return check


@dataclass(frozen=True)
class Prepared:
    """What :meth:`Backend.prepare` staged: the model file embed loads (None: the settings' weights) and values
    for the backend's own plan extras."""

    model: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """The tasks and storage of one way of running the jobs; built from the settings when the DAG is parsed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Sensors give their worker slot back between pokes.
        self.sensor_args: dict[str, Any] = {
            "mode": "reschedule",
            "poke_interval": settings.poke_interval,
            "timeout": settings.sensor_timeout,
        }

    @abstractmethod
    def code_store(self) -> CodeStore:
        """Where ``stage_code`` stages the bundle."""

    def bundle(self) -> Bundle:
        """The code bundle ``stage_code`` stages: the jobs, the shared package and a local weights file."""
        return build_bundle(self.settings.jobs_dir, self.settings.weights)

    def prepare(self, params: RunParams) -> Prepared:
        """Stage what the run needs besides the bundle (nothing by default)."""
        return Prepared()

    def plan_extras(self, plan: RunPlan, params: RunParams, run_id: str, prepared: Prepared) -> dict[str, Any]:
        """More XCom values of the run's plan, for this backend's own tasks (none by default)."""
        return {}

    @abstractmethod
    def key_sensor(self, task_id: str, keys: str, **kwargs: Any) -> BaseOperator:
        """A sensor that waits for ``keys`` (a plan template: one key, a list, or a wildcard pattern)."""

    @abstractmethod
    def uploads_sensor(self, task_id: str, pattern: str, earlier: str) -> BaseOperator:
        """The wait for a night's uploads (``pattern``, a wildcard): skip the run when none come, fail when the
        nights before (``earlier``, a plan template of their folders) had none either
        (:class:`fruits_dag.alerts.UploadsWait`)."""

    @abstractmethod
    def lease_store(self, uri: str) -> LeaseStore:
        """The object or file ``uri`` that holds the storage root's writer lease."""

    def setup(self) -> Sequence[BaseOperator]:
        """Tasks between the uploads sensor and the first job (none by default)."""
        return ()

    @abstractmethod
    def job_task(self, name: str, index: int) -> BaseOperator:
        """The task that runs job ``name`` (the ``index``-th of the plan) and returns ``{"started": ISO time}``."""

    def after_jobs(self) -> Sequence[BaseOperator]:
        """Tasks after the last job's output is confirmed, before the teardown (none by default)."""
        return ()

    def teardown(self, setup: Sequence[BaseOperator], last: BaseOperator) -> BaseOperator:
        """Tasks that must run after ``last`` whatever happened (nothing by default); returns the task after
        which the run writes nothing more (its lease may be given back then)."""
        return last


def get_backend(settings: Settings) -> Backend:
    """The backend the settings name (``fruits_dag.backends.<settings.backend>``)."""
    module = importlib.import_module(f"{__name__}.{settings.backend}")
    return module.BACKEND(settings)
