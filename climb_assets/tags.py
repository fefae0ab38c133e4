"""Op tags and pools that route heavy steps.

GPU steps (embedding, the base checkpoint, every proxy, baseline and proof training step) share the ``gpu`` pool:
capacity, one slot per device (see ``climb_assets.instance`` and ``climb_assets.devices``). Their tags route them to
GPU nodes when the deployment uses Dagster's Kubernetes executor (``dagster-k8s/config``: one ``nvidia.com/gpu``,
a GPU node selector and the matching toleration) or the Celery executor (the ``gpu`` queue); the default executors
ignore them. Clustering is a memory-heavy CPU step with its own request. Pools that protect the lake are locks with
one slot each, separate from capacity. See deploy/README.md.
"""

GPU_POOL = "gpu"
LAKE_WRITER_POOL = "lake_writer"  # de-duplication order and dbt's DuckDB file: one writer at a time
CLUSTER_VERSION_POOL = "cluster_version"  # one re-cluster at a time moves the current-version pointer
HOST_TAG = "climb/host"  # on runs the climb CLI executes in its own process: where their pid means something

K8S_MEMORY_CONFIG = {"container_config": {"resources": {"requests": {"cpu": "8", "memory": "64Gi"},
                                                        "limits": {"memory": "64Gi"}}}}  # fmt: skip
CLUSTER_TAGS = {"climb/resource": "memory", "dagster-k8s/config": K8S_MEMORY_CONFIG}

K8S_GPU_CONFIG = {
    "container_config": {
        "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"}}
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}

GPU_TAGS = {
    "climb/resource": "gpu",
    "dagster-celery/queue": "gpu",
    "dagster-k8s/config": K8S_GPU_CONFIG,
}
