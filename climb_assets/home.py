"""Where all platform state lives: one directory, ``CLIMB_HOME`` (default ``./.climb``).

A fresh ``CLIMB_HOME`` is a fresh platform; tests and benchmarks point it at a temp dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CLIMB_HOME = ".climb"


@dataclass(frozen=True)
class ClimbHome:
    root: Path

    @classmethod
    def from_env(cls) -> "ClimbHome":
        return cls(Path(os.environ.get("CLIMB_HOME", DEFAULT_CLIMB_HOME)).expanduser().resolve())

    @classmethod
    def at(cls, root: str | os.PathLike | None) -> "ClimbHome":
        return cls.from_env() if not root else cls(Path(root).expanduser().resolve())

    @property
    def landing(self) -> Path:
        """New crawl shards are dropped here; the sensor watches it."""
        return self.root / "landing"

    @property
    def lake(self) -> Path:
        """Each asset's Parquet output."""
        return self.root / "lake"

    @property
    def dagster(self) -> Path:
        """The Dagster instance (DAGSTER_HOME)."""
        return self.root / "dagster"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def climbmix(self) -> Path:
        return self.root / "climbmix"

    @property
    def targets(self) -> Path:
        """Held-out target sets (the demo writes its target kind here)."""
        return self.root / "targets"

    @property
    def models(self) -> Path:
        """Models built offline once and cached (static embedding model, tokenizer)."""
        return self.root / "models"

    def lake_dir(self, asset: str) -> Path:
        return self.lake / asset

    def ensure(self) -> "ClimbHome":
        for path in (self.landing, self.lake, self.dagster, self.mlflow, self.climbmix, self.targets, self.models):
            path.mkdir(parents=True, exist_ok=True)
        return self
