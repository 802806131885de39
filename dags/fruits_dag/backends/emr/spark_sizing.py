"""Spark and YARN sized for the run's instance types: the ``spark-defaults`` and ``yarn-site`` classifications.

EMR's defaults size nothing for this workload: each task runs a Python worker that holds an ONNX Runtime session
and decodes uploads of up to 64 MP, and the jobs size their partitions from ``defaultParallelism``, which without
``spark.default.parallelism`` is whatever executors happen to be registered at that moment. So the request
carries, computed from the smallest core (or task) instance type it may get (every executor must fit every node):

* ``yarn.nodemanager.resource.memory-mb``: the node's memory less what the OS and the node's daemons keep;
* executors of up to :data:`EXECUTOR_CORES` cores, as many per node as its vCPUs allow, sharing YARN's memory;
* ``spark.executor.memoryOverhead``: one Python worker per core (:data:`PYTHON_WORKER_MIB`) plus Spark's own 10%
  of the heap; the heap is what is left;
* ``spark.default.parallelism`` and ``spark.sql.shuffle.partitions``: the task slots of the cluster at its
  largest configured size, so partition counts are the same on every run;
* the driver (client mode, on the primary node) and its ``maxResultSize``; EBS volumes for shuffle and HDFS.

docs/aws.md shows the arithmetic for two instance types, and a test checks the code against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fruits_dag.plan import PlanError

# Memory a Python worker needs at most: the larger of embed's ONNX Runtime session with MobileNetV2 (~1 GiB RSS,
# ../shared/NOTES.md) and clean's worst accepted upload (a 64 MP HEIC: ~662 MiB decoded, plus the 64 MiB file;
# fruits_common.images.peak_bytes_bound), plus ~300 MiB for the interpreter, pandas and Arrow batches.
PYTHON_WORKER_MIB = 1536
EXECUTOR_CORES = 4  # up to 4 tasks per executor: one JVM's heap for several Python workers, not one per core
NODE_RESERVED_FRACTION = 0.125  # the OS, the NodeManager, the DataNode, EMR's agents...
NODE_RESERVED_MIN_MIB = 4096  # ...at least 4 GiB (EMR itself keeps 4 of a 16 GiB node)
HEAP_OVERHEAD_FRACTION = 0.10  # Spark's own off-heap share (its default memoryOverheadFactor)
MIN_HEAP_MIB = 2048
SHUFFLE_GIB_PER_VCPU = 16  # EBS per node: shuffle files and the staged archives in HDFS
MIN_EBS_GIB = 64

# vCPUs of a size; GiB of memory per vCPU of a family class (the letter before the generation): AWS's naming.
_SIZE_VCPUS = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48, "16xlarge": 64}
_GIB_PER_VCPU = {"c": 2, "m": 4, "r": 8, "x": 16}


@dataclass(frozen=True)
class Instance:
    """What sizing needs of an EC2 instance type."""

    vcpus: int
    memory_mib: int


def instance(instance_type: str) -> Instance:
    """vCPUs and memory of a general purpose (m), compute (c), memory (r) or x instance type, from its name."""
    family, _, size = instance_type.partition(".")
    match = re.fullmatch(r"([a-z])\d+[a-z]*", family)
    if not match or match.group(1) not in _GIB_PER_VCPU or size not in _SIZE_VCPUS:
        raise PlanError(
            f"cannot size Spark for instance type {instance_type!r}: use a c, m, r or x family of size "
            f"{', '.join(_SIZE_VCPUS)}"
        )
    vcpus = _SIZE_VCPUS[size]
    return Instance(vcpus, vcpus * _GIB_PER_VCPU[match.group(1)] * 1024)


@dataclass(frozen=True)
class Sizing:
    """The numbers of one cluster request (MiB, cores, GiB)."""

    yarn_memory_mib: int
    executor_cores: int
    executors_per_node: int
    executor_memory_mib: int
    executor_overhead_mib: int
    parallelism: int
    driver_memory_mib: int
    max_result_mib: int
    ebs_gib: int

    def classifications(self, event_log_dir: str) -> list[dict]:
        """The ``Configurations`` entries of ``RunJobFlow``; Spark's event logs go to ``event_log_dir``."""
        spark = {
            # The event logs outlive the transient cluster: a history server reads them from S3 (docs/aws.md).
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": event_log_dir,
            "spark.executor.cores": str(self.executor_cores),
            "spark.executor.memory": f"{self.executor_memory_mib}m",
            "spark.executor.memoryOverhead": f"{self.executor_overhead_mib}m",
            "spark.driver.memory": f"{self.driver_memory_mib}m",
            "spark.driver.maxResultSize": f"{self.max_result_mib}m",
            "spark.default.parallelism": str(self.parallelism),
            "spark.sql.shuffle.partitions": str(self.parallelism),
            # Executors lost with a node (Spot, scale-in) are replaced; their tasks are retried elsewhere.
            "spark.task.maxFailures": "4",
        }
        yarn = {
            "yarn.nodemanager.resource.memory-mb": str(self.yarn_memory_mib),
            "yarn.scheduler.maximum-allocation-mb": str(self.yarn_memory_mib),
        }
        return [
            {"Classification": "spark-defaults", "Properties": spark},
            {"Classification": "yarn-site", "Properties": yarn},
        ]

    def ebs(self) -> dict:
        """``EbsConfiguration`` of a worker node."""
        volume = {"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": self.ebs_gib}, "VolumesPerInstance": 1}
        return {"EbsBlockDeviceConfigs": [volume], "EbsOptimized": True}


def size(worker_types: list[str], primary_type: str, max_workers: int) -> Sizing:
    """Spark and YARN for workers of any of ``worker_types`` (sized for the smallest), ``max_workers`` of them at
    most, and the driver on a ``primary_type`` node."""
    nodes = [instance(t) for t in worker_types]
    vcpus, memory = min(n.vcpus for n in nodes), min(n.memory_mib for n in nodes)
    yarn = memory - max(NODE_RESERVED_MIN_MIB, int(memory * NODE_RESERVED_FRACTION))
    cores = min(EXECUTOR_CORES, vcpus)
    per_node = vcpus // cores
    container = yarn // per_node
    # container = heap + overhead, overhead = python + 10% of heap  =>  heap = (container - python) / 1.1
    python = cores * PYTHON_WORKER_MIB
    heap = int((container - python) / (1 + HEAP_OVERHEAD_FRACTION))
    if heap < MIN_HEAP_MIB:
        raise PlanError(
            f"instance type {min(worker_types, key=lambda t: instance(t).memory_mib)} is too small for the jobs: "
            f"{container} MiB per executor leave {heap} MiB of heap after {cores} Python workers of "
            f"{PYTHON_WORKER_MIB} MiB (at least {MIN_HEAP_MIB}); use a larger size or an r family"
        )
    primary = instance(primary_type)
    driver = (primary.memory_mib - max(NODE_RESERVED_MIN_MIB, int(primary.memory_mib * NODE_RESERVED_FRACTION))) // 2
    return Sizing(
        yarn_memory_mib=yarn,
        executor_cores=cores,
        executors_per_node=per_node,
        executor_memory_mib=heap,
        executor_overhead_mib=container - heap,
        parallelism=max_workers * per_node * cores,
        driver_memory_mib=driver,
        max_result_mib=driver // 2,
        ebs_gib=max(MIN_EBS_GIB, SHUFFLE_GIB_PER_VCPU * vcpus),
    )
