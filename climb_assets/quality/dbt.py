"""The ``dbt_quality`` project (repository root) as Dagster assets, built lazily: nothing runs dbt at import.

Like dagster-open-platform, the ``DbtProject`` sits behind a cached function; the code location calls it when it
builds its definitions. Under ``dagster dev``/``dg`` (or before any manifest exists, e.g. a bare pytest run before
``make dbt-parse``) the project is parsed first, with this interpreter's dbt, so the asset graph always loads.
"""

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from climb_assets.cluster.lake import current_version, require_current_version
from climb_assets.home import ClimbHome
from climb_assets.lake import dbt_environment
from climb_assets.resources import ClimbHomeResource
from climb_assets.tags import LAKE_WRITER_POOL

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_quality"
# dbt lives next to this interpreter; the virtualenv's bin/ need not be on PATH.
DBT_EXECUTABLE = shutil.which("dbt") or str(Path(sys.executable).parent / "dbt")


@contextmanager
def lake_environment(home: ClimbHome, cluster_version: str) -> Iterator[None]:
    """The lake's paths in this process's environment while a dbt process starts (it inherits them; dbt-dagster's
    ``cli`` takes no environment of its own), then the environment as it was, so no later step sees another
    home's or another version's paths."""
    values = dbt_environment(home, cluster_version)
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parse_dbt_project(home: ClimbHome) -> Path:
    """``dbt parse`` with the lake's paths in the environment (the sources read them); returns the manifest."""
    project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
    with lake_environment(home, current_version(home) or "unfitted"):  # parsing reads no data
        DbtCliResource(project_dir=project, dbt_executable=DBT_EXECUTABLE).cli(
            ["parse", "--quiet"], target_path=project.target_path
        ).wait()
    return project.manifest_path


@cache
def dbt_project() -> DbtProject:
    project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
    if os.environ.get("DAGSTER_IS_DEV_CLI") or not project.manifest_path.exists():
        parse_dbt_project(ClimbHome.from_env())
    return project


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=dbt_project(), dbt_executable=DBT_EXECUTABLE)


class QualityGroupTranslator(DagsterDbtTranslator):
    """dbt models sit in the ``quality`` group beside the Python quality assets, not in ``default``."""

    def get_asset_spec(self, manifest, unique_id, project):
        return super().get_asset_spec(manifest, unique_id, project).replace_attributes(group_name="quality")


@cache
def build_dbt_quality_assets() -> dg.AssetsDefinition:
    project = dbt_project()

    @dbt_assets(manifest=project.manifest_path, project=project, pool=LAKE_WRITER_POOL,
                dagster_dbt_translator=QualityGroupTranslator())  # fmt: skip
    def dbt_quality_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, climb: ClimbHomeResource):
        """dbt_quality: per-document and per-cluster quality and the keep/prune decision; dbt tests become asset
        checks."""
        home = climb.home()
        # the profile and sources read the lake's paths under the version read once here (a clear error before dbt
        # starts when nothing is fitted yet); the merge checks the decisions name the version it reads
        with lake_environment(home, require_current_version(home)):
            build = dbt.cli(["build"], context=context)  # dbt's process starts here
        yield from build.stream()

    return dbt_quality_models


if __name__ == "__main__":  # `make dbt-parse`: prepare the manifest (CI must, see DESIGN.md's pitfalls)
    print(parse_dbt_project(ClimbHome.from_env()))
