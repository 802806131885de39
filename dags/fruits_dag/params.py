"""The run parameters of ``fruits_pipeline`` (the trigger form in the UI, ``--conf`` on the CLI).

Their names are a contract. Airflow validates each one against its JSON schema when a run is triggered, so a bad
value is refused with a message before anything runs; :meth:`RunParams.from_mapping` reads them back typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from airflow.sdk import Param

from fruits_dag.settings import INSTANCE_TYPE

Mode = Literal["incremental", "full"]
Refit = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class RunParams:
    """A run's parameters, typed."""

    input_uri: str = "uploads"
    mode: Mode = "incremental"
    pca_k: int | None = None
    pca_variance: float = 0.95
    pca_refit: Refit = "auto"
    core_instance_count: int = 2
    core_instance_type: str = "m5.xlarge"
    spot_task_instances: int = 0
    max_instances: int | None = None

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> RunParams:
        """From the run's (already validated) ``params``; missing names take their defaults."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{name: params[name] for name in names if name in params})


def dag_params() -> dict[str, Param]:
    """The DAG's ``params``: defaults (those of :class:`RunParams`), JSON schemas and the trigger form's help."""
    default = RunParams()
    return {
        "input_uri": Param(
            default.input_uri,
            type="string",
            minLength=1,
            title="Input prefix",
            description_md="Where the images are: a prefix under the storage root (`uploads`, "
            "`datasets/fruits-360`) or a full URI (`s3://...` on EMR, an absolute folder locally). "
            "`incremental` reads its `<run date>/` subfolder, `full` everything under it.",
        ),
        "mode": Param(
            default.mode,
            enum=list(get_args(Mode)),
            title="Mode",
            description_md="`incremental`: only the run date's uploads; `full`: every file under the input prefix "
            "(bulk loads such as Fruits-360). Images already ingested are skipped either way.",
        ),
        "pca_k": Param(
            default.pca_k,
            type=["null", "integer"],
            minimum=1,
            maximum=1280,
            title="PCA components (k)",
            description_md="Number of PCA components. Empty: the smallest k that reaches `pca_variance`.",
        ),
        "pca_variance": Param(
            default.pca_variance,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="PCA explained variance",
            description_md="Fraction of variance to keep when `pca_k` is empty.",
        ),
        "pca_refit": Param(
            default.pca_refit,
            enum=list(get_args(Refit)),
            title="PCA refit",
            description_md="`auto`: fit a new PCA basis only when there is none or the current one has drifted "
            "(setting `fruits_pca_drift_threshold`); `always`: fit a new version now; `never`: project onto the "
            "current version whatever the drift. Every other run projects only its new images onto the current "
            "version.",
        ),
        "core_instance_count": Param(
            default.core_instance_count,
            type="integer",
            minimum=1,
            maximum=50,
            title="EMR core nodes",
            description_md="Number of EMR core nodes, always on-demand: they hold YARN's application masters, HDFS "
            "and the shuffle files, which a Spot interruption would lose (ignored by the local backend).",
        ),
        "core_instance_type": Param(
            default.core_instance_type,
            type="string",
            pattern=f"^{INSTANCE_TYPE.pattern}$",
            title="EMR core node type",
            description_md="EC2 instance type of the core nodes, e.g. `m5.xlarge`, or Graviton (`m7g.xlarge`): "
            "each node installs the wheelhouse of its own architecture. Ignored by the local backend.",
        ),
        "spot_task_instances": Param(
            default.spot_task_instances,
            type="integer",
            minimum=0,
            maximum=100,
            title="EMR Spot task nodes",
            description_md="Task nodes on Spot beside the on-demand core: an instance fleet of `core_instance_type` "
            "and the setting `fruits_emr_spot_instance_types` (same size), price-capacity-optimized, over the "
            "stack's subnets, taking on-demand when no Spot capacity comes within 10 minutes. Losing one costs its "
            "running tasks, which Spark retries elsewhere. 0: none.",
        ),
        "max_instances": Param(
            default.max_instances,
            type=["null", "integer"],
            minimum=1,
            maximum=100,
            title="EMR managed scaling ceiling",
            description_md="Empty: a fixed cluster. A number: EMR managed scaling may add Spot task nodes while the "
            "steps need them, up to this many core and task nodes in all, and remove them again; the core "
            "stays at `core_instance_count`.",
        ),
    }
