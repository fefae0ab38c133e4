"""The GPU routing tags and the deployment files are valid for the executors and the instance that read them.

The tags go through dagster-k8s's own parser and Job builder (as ``k8s_job_executor`` does per step) and dagster-celery's
queue tag; ``deploy/`` files go through Dagster's instance config schema, the K8sRunLauncher's config schema and the
Kubernetes client models; the README's code and run config blocks run or validate as written.
"""

import copy
import json
import re
import textwrap
from pathlib import Path

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.execution.api import create_execution_plan
from dagster._core.instance.config import (
    ConcurrencyConfig,
    PoolGranularity,
    dagster_instance_config,
)
from dagster_celery import celery_executor
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import (
    USER_DEFINED_K8S_CONFIG_KEY,
    USER_DEFINED_K8S_JOB_CONFIG_SCHEMA,
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from climb_assets.definitions import SEARCH_ITERATIONS, defs
from climb_assets.tags import GPU_POOL, GPU_TAGS, K8S_GPU_CONFIG

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
GPU_ASSETS = {"embeddings", "proxy_base_checkpoint", "random_search_baseline", "loss_guided_baseline", "climbmix_proof",
              "climbmix_transfer"} | {
    f"iteration_{k}/proxy_results" for k in range(1, SEARCH_ITERATIONS + 1)
}


def readme_blocks(language: str) -> list[str]:
    """The README's fenced blocks of one language, dedented (some sit inside list items)."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.DOTALL)
    return [textwrap.dedent(b) for b in blocks]


def readme_run_config(executor: str) -> dict:
    """The README's run config block for an executor (the one whose first line is ``# run config: <executor>``)."""
    blocks = [b for b in readme_blocks("yaml") if b.lstrip().startswith(f"# run config: {executor}\n")]
    assert len(blocks) == 1, executor
    return yaml.safe_load(blocks[0])


def k8s_job_for(step_tags) -> kubernetes.client.V1Job:
    """The Kubernetes Job the k8s_job_executor would launch for a step with these tags."""
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/climb:0.1.0",
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy="Always",
    )
    return construct_dagster_k8s_job(
        job_config,
        ["dagster", "api", "execute_step"],
        "climb-step",
        user_defined_k8s_config=get_user_defined_k8s_config(step_tags),
    )


def test_k8s_gpu_config_passes_the_dagster_k8s_schema_and_kubernetes_models():
    result = validate_config(USER_DEFINED_K8S_JOB_CONFIG_SCHEMA, K8S_GPU_CONFIG)
    assert result.success, result.errors
    parsed = UserDefinedDagsterK8sConfig.from_dict(K8S_GPU_CONFIG)  # checks every key against the k8s models
    resources = k8s_model_from_dict(kubernetes.client.V1ResourceRequirements, parsed.container_config["resources"])
    assert resources.limits == {"nvidia.com/gpu": "1"} and resources.requests["nvidia.com/gpu"] == "1"
    # the validator is not a rubber stamp: a misspelt pod spec field is rejected
    broken = copy.deepcopy(K8S_GPU_CONFIG)
    broken["pod_spec_config"]["node_selectr"] = broken["pod_spec_config"].pop("node_selector")
    with pytest.raises(Exception, match="node_selectr"):
        UserDefinedDagsterK8sConfig.from_dict(broken)


def test_exactly_the_gpu_assets_carry_the_pool_and_tags():
    graph = defs.resolve_asset_graph()
    tagged = set()
    ops = [
        (key.to_user_string(), op)
        for key in graph.get_all_asset_keys()
        for op in graph.assets_def_for_key(key).node_def.iterate_op_defs()
    ]  # a graph-backed asset (one step per proxy) is GPU work when its training op is
    for name, op in ops:
        if op.tags.get("climb/resource") == "gpu":
            tagged.add(name)
            assert op.pool == GPU_POOL, name
            assert op.tags[DAGSTER_CELERY_QUEUE_TAG] == "gpu"
            assert json.loads(op.tags[USER_DEFINED_K8S_CONFIG_KEY]) == K8S_GPU_CONFIG
            assert {k: op.tags[k] for k in GPU_TAGS if isinstance(GPU_TAGS[k], str)} == {
                k: v for k, v in GPU_TAGS.items() if isinstance(v, str)
            }
        else:
            assert op.pool != GPU_POOL and "nvidia.com/gpu" not in op.tags.get(USER_DEFINED_K8S_CONFIG_KEY, ""), name
    assert tagged == GPU_ASSETS


def test_k8s_job_executor_puts_gpu_steps_on_gpu_nodes_and_celery_queues_them_on_gpu():
    # the README's recipe, run as written
    recipe = next(b for b in readme_blocks("python") if "k8s_job_executor" in b)
    namespace: dict = {}
    exec(recipe, namespace)  # noqa: S102 (the README block is the code under test)
    k8s_defs = namespace["defs"]
    for job in ("search_job", "recluster_job", "ingest_shard_job"):
        assert k8s_defs.resolve_job_def(job).executor_def is k8s_job_executor

    plan = create_execution_plan(k8s_defs.resolve_job_def("search_job"))
    # one mapped step per proxy, per baseline proxy and per proof run (``[?]`` until the candidates are known)
    gpu_steps = {f"iteration_{k}__proxy_results.iteration_{k}_{stage}_train[?]"
                 for k in range(1, SEARCH_ITERATIONS + 1) for stage in ("proxy", "confirm")}  # fmt: skip
    gpu_steps |= {"proxy_base_checkpoint", "loss_guided_baseline", "random_search_baseline.random_search_train[?]",
                  "climbmix_proof.proof_train[?]", "climbmix_transfer.transfer_train[?]"}
    assert {s.key for s in plan.steps if s.pool == GPU_POOL} == gpu_steps
    for step in plan.steps:
        pod = k8s_job_for(step.tags).spec.template.spec
        resources = pod.containers[0].resources
        limits = (resources.limits if resources else None) or {}
        if step.key in gpu_steps:
            assert limits == {"nvidia.com/gpu": "1"}
            assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
            assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [
                ("nvidia.com/gpu", "Exists", "NoSchedule")
            ]
            assert step.tags[DAGSTER_CELERY_QUEUE_TAG] == "gpu"
        else:
            assert "nvidia.com/gpu" not in limits and not pod.node_selector and not pod.tolerations
            assert DAGSTER_CELERY_QUEUE_TAG not in step.tags  # the default "dagster" queue


def test_readme_run_configs_are_valid_executor_config():
    for executor, name in ((k8s_job_executor, "k8s_job_executor"), (celery_executor, "celery_executor")):
        config = readme_run_config(name)["execution"]["config"]
        result = validate_config(executor.config_schema.config_type, config)
        assert result.success, (name, result.errors)
    multiprocess = readme_run_config("multiprocess")["execution"]["config"]
    assert validate_config(dg.multiprocess_executor.config_schema.config_type, multiprocess["multiprocess"]).success
    for block in readme_blocks("yaml"):
        assert isinstance(yaml.safe_load(block), dict)


def test_instance_snippet_is_accepted_and_limits_the_gpu_pool_to_one_slot(tmp_path):
    config, instance_class = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert instance_class is None
    launcher = validate_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"])
    assert config["run_launcher"]["class"] == "K8sRunLauncher" and launcher.success, launcher.errors
    for volume in config["run_launcher"]["config"]["volumes"]:
        k8s_model_from_dict(kubernetes.client.V1Volume, k8s_snake_case_dict(kubernetes.client.V1Volume, volume))
    pools = ConcurrencyConfig.from_concurrency_settings(config["concurrency"], None).pool_config
    assert pools.default_pool_limit == 1 and pools.pool_granularity == PoolGranularity.OP

    # the snippet's concurrency block on a real (local) instance: the gpu pool gets one slot, a second claim waits
    local = {k: config[k] for k in ("concurrency", "run_monitoring", "telemetry")}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(local))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config == pools
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(GPU_POOL)
        assert storage.get_concurrency_info(GPU_POOL).slot_count == 1
        assert storage.claim_concurrency_slot(GPU_POOL, "run-a", "iteration_1__proxy_results").is_claimed
        assert not storage.claim_concurrency_slot(GPU_POOL, "run-b", "climbmix_proof").is_claimed
        storage.free_concurrency_slots_for_run("run-a")
        assert storage.claim_concurrency_slot(GPU_POOL, "run-b", "climbmix_proof").is_claimed


def test_helm_values_snippet_matches_the_instance_snippet():
    values = yaml.safe_load((DEPLOY / "dagster-k8s-values-snippet.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    # the chart renders concurrency.pools camelCase keys into dagster.yaml's snake_case ones
    helm_keys = {
        "defaultLimit": "default_limit",
        "granularity": "granularity",
        "opGranularityRunBuffer": "op_granularity_run_buffer",
    }
    assert values["concurrency"]["enabled"] is True
    assert {helm_keys[k]: v for k, v in values["concurrency"]["pools"].items()} == instance["concurrency"]["pools"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "deploy_definitions"]
    assert "deploy_definitions.py" in (DEPLOY / "README.md").read_text()
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for pod_config in (deployment, launcher):
        for volume in pod_config["volumes"]:
            k8s_model_from_dict(kubernetes.client.V1Volume, k8s_snake_case_dict(kubernetes.client.V1Volume, volume))
        for mount in pod_config["volumeMounts"]:
            k8s_model_from_dict(
                kubernetes.client.V1VolumeMount, k8s_snake_case_dict(kubernetes.client.V1VolumeMount, mount)
            )
    for env in deployment["env"]:
        k8s_model_from_dict(kubernetes.client.V1EnvVar, k8s_snake_case_dict(kubernetes.client.V1EnvVar, env))
    # every pod that runs climb code mounts the same CLIMB_HOME
    assert {m["mountPath"] for m in deployment["volumeMounts"] + launcher["volumeMounts"]} == {"/data/climb"}
    assert "CLIMB_HOME=/data/climb" in launcher["envVars"]


def test_clustering_asks_kubernetes_for_memory_not_a_gpu():
    from climb_assets.tags import CLUSTER_TAGS, CLUSTER_VERSION_POOL

    clusters = defs.resolve_asset_graph().assets_def_for_key(dg.AssetKey("cluster_centroids")).op
    assert clusters.pool == CLUSTER_VERSION_POOL and clusters.pool != GPU_POOL
    assert validate_config(USER_DEFINED_K8S_JOB_CONFIG_SCHEMA, CLUSTER_TAGS["dagster-k8s/config"]).success
    pod = k8s_job_for(clusters.tags).spec.template.spec
    resources = pod.containers[0].resources
    assert resources.requests == {"cpu": "8", "memory": "64Gi"} and resources.limits == {"memory": "64Gi"}
    assert not pod.node_selector and not pod.tolerations
