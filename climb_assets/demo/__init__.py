"""The built-in corpora, built offline from text that ships inside installed packages."""

from climb_assets.demo.corpus import (
    DEMO,
    KINDS,
    CorpusRecipe,
    DemoCorpus,
    assemble_corpus,
    build_demo_corpus,
    shard_names,
)
from climb_assets.demo.packages_corpus import PACKAGES

RECIPES: dict[str, CorpusRecipe] = {recipe.name: recipe for recipe in (DEMO, PACKAGES)}

__all__ = [
    "DEMO", "KINDS", "PACKAGES", "RECIPES", "CorpusRecipe", "DemoCorpus", "assemble_corpus", "build_demo_corpus",
    "shard_names",
]  # fmt: skip
