"""Op tags and pools that route heavy steps.

GPU steps (embedding, clustering, proxy training) share the ``gpu`` pool, so a local multiprocess run never puts two
of them on one GPU (the instance gives every pool one slot, see ``climb_assets.instance``). Their tags route them to
GPU nodes when the deployment uses Dagster's Kubernetes executor (``dagster-k8s/config``: one ``nvidia.com/gpu``,
a GPU node selector and the matching toleration) or the Celery executor (the ``gpu`` queue); the default executors
ignore them. See README "Deploying on GPU nodes".
"""

GPU_POOL = "gpu"
LAKE_WRITER_POOL = "lake_writer"

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
