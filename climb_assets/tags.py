"""Op tags and pools that route heavy steps.

GPU steps (embedding, clustering, proxy training) share the ``gpu`` pool, so a local multiprocess run never puts two
of them on one GPU (the instance gives every pool one slot, see ``climb_assets.instance``), and they carry
``climb/resource: gpu`` so the deployment configs in ``deploy/`` route them to GPU nodes.
"""

GPU_POOL = "gpu"
LAKE_WRITER_POOL = "lake_writer"
GPU_TAGS = {"climb/resource": "gpu"}
