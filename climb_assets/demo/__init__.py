"""The built-in demo corpus, built offline from text that ships inside installed packages."""

from climb_assets.demo.corpus import KINDS, DemoCorpus, assemble_corpus, build_demo_corpus, shard_names

__all__ = ["KINDS", "DemoCorpus", "assemble_corpus", "build_demo_corpus", "shard_names"]
