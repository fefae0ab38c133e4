"""The demo corpus builder, on real installed text at a tiny scale."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import random
import sysconfig
from pathlib import Path

import polars as pl
import pytest

from climb_assets.demo import KINDS, PACKAGES, build_demo_corpus, shard_names
from climb_assets.demo.corpus import MAX_TOKENS, READERS, _chunk, _code_blocks, _tokens
from climb_assets.home import ClimbHome

SCALE = 0.01


def _build(root: Path, seed: int = 0) -> tuple[ClimbHome, list[dict]]:
    home = ClimbHome(root).ensure()
    return home, [build_demo_corpus(home, wave, seed=seed, scale=SCALE) for wave in (1, 2)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[ClimbHome, list[dict]]:
    return _build(tmp_path_factory.mktemp("demo_a"))


def _lines(path: Path) -> list[str]:
    """JSONL records: split on "\\n" only (str.splitlines would also split inside texts holding U+2028 etc.)."""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return [line for line in raw.decode().split("\n") if line]


def _rows(path: Path) -> tuple[list[dict], int]:
    """(parsed rows, count of lines that are not valid JSON) of one landed shard."""
    if path.suffix == ".parquet":
        return pl.read_parquet(path).to_dicts(), 0
    rows, invalid = [], 0
    for line in _lines(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            invalid += 1
    return rows, invalid


def _docs(home: ClimbHome, wave: int) -> list[dict]:
    """The good documents (not planted junk) of a wave's shards."""
    rows = [r for name in shard_names(wave) for r in _rows(home.landing / name)[0]]
    return [r for r in rows if r.get("kind") != "junk"]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


def test_waves_land_their_shards_in_every_format(built):
    home, summaries = built
    landed = sorted(p.name for p in home.landing.iterdir())
    assert landed == sorted(shard_names(1) + shard_names(2))
    assert {name.split(".", 1)[1] for name in landed} == {"jsonl.gz", "jsonl", "parquet"}
    assert [len(s["shards"]) for s in summaries] == [4, 2]
    for summary, wave in zip(summaries, (1, 2), strict=True):
        assert summary["total_docs"] == sum("-mirror-" not in d["id"] for d in _docs(home, wave))
        landed_bytes = sum((home.landing / name).stat().st_size for name in shard_names(wave))
        assert summary["total_mb"] == round(landed_bytes / 2**20, 3)


def test_waves_hold_disjoint_documents_of_several_kinds(built):
    home, summaries = built
    ids = [{d["id"] for d in _docs(home, wave)} for wave in (1, 2)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    kinds = {d["kind"] for wave in (1, 2) for d in _docs(home, wave)}
    assert len(kinds) >= 5 and kinds <= set(KINDS)
    assert set(summaries[0]["docs_per_kind"]) | set(summaries[0]["missing_kinds"]) == set(KINDS)


def test_documents_have_stable_ids_provenance_and_realistic_length(built):
    home, _ = built
    docs = [d for wave in (1, 2) for d in _docs(home, wave) if "-mirror-" not in d["id"]]
    for doc in docs:
        assert doc["id"].startswith(f"{doc['kind']}-") and doc["source"]
        assert 10 <= _tokens(doc["text"]) <= MAX_TOKENS * 1.2
    assert len({d["id"] for d in docs}) == len(docs)


def test_planted_duplicates_copy_text_under_a_new_id(built):
    home, summaries = built
    by_id = {d["id"]: d for wave in (1, 2) for d in _docs(home, wave)}
    mirrors = [d for d in by_id.values() if "-mirror-" in d["id"]]
    assert len(mirrors) == sum(s["duplicates"] for summary in summaries for s in summary["shards"]) > 0
    for mirror in mirrors:
        original = by_id[mirror["id"].rsplit("-mirror-", 1)[0]]
        assert original["text"] == mirror["text"] and original["id"] != mirror["id"]


def test_planted_bad_rows_are_present(built):
    home, summaries = built
    invalid_json = empty = non_string = no_text = null_text = 0
    for name in shard_names(1) + shard_names(2):
        rows, invalid = _rows(home.landing / name)
        invalid_json += invalid
        for row in rows:
            text = row.get("text")
            no_text += "text" not in row
            null_text += "text" in row and text is None
            non_string += text is not None and not isinstance(text, str)
            empty += isinstance(text, str) and not text.strip()
    assert invalid_json == 5 and no_text == 5 and non_string == 5 and null_text == 1 and empty == 12
    assert sum(s["junk_rows"] for summary in summaries for s in summary["shards"]) == 28


def test_target_set_is_held_out_of_the_landing_shards(built):
    home, summaries = built
    target = _read_jsonl(home.targets / "target.jsonl")
    assert len(target) == summaries[0]["target_docs"] >= 10
    assert {t["kind"] for t in target} == {"wikipedia"}
    landing = [d for wave in (1, 2) for d in _docs(home, wave)]
    assert not {t["id"] for t in target} & {d["id"] for d in landing}
    assert not {t["text"] for t in target} & {d["text"] for d in landing}
    assert any(d["kind"] == "wikipedia" for d in landing)  # the kind itself still lands


def test_multiple_choice_items_continue_a_target_document(built):
    home, summaries = built
    target_texts = [" ".join(t["text"].split()) for t in _read_jsonl(home.targets / "target.jsonl")]
    items = _read_jsonl(home.targets / "mc_target.jsonl")
    assert len(items) == summaries[0]["mc_items"] > 0
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        true = f"{item['context']} {item['choices'][item['answer']]}"
        assert any(text.startswith(true) for text in target_texts)
        wrong = [c for i, c in enumerate(item["choices"]) if i != item["answer"]]
        assert not any(text.startswith(f"{item['context']} {c}") for c in wrong for text in target_texts)
    assert len({item["answer"] for item in items}) > 1  # the answer position is shuffled


def test_same_seed_gives_byte_identical_files_and_rebuilding_is_a_no_op(built, tmp_path):
    home_a, _ = built
    home_b, summaries_b = _build(tmp_path / "b")
    files = sorted(p.relative_to(home_a.root) for p in home_a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(home_b.root) for p in home_b.root.rglob("*") if p.is_file())
    for rel in files:
        assert (home_a.root / rel).read_bytes() == (home_b.root / rel).read_bytes(), rel

    mtimes = {p: p.stat().st_mtime_ns for p in home_b.root.rglob("*") if p.is_file()}
    again = build_demo_corpus(home_b, 1, seed=0, scale=SCALE)
    assert again["written"] == [] and len(again["unchanged"]) == 6
    assert mtimes == {p: p.stat().st_mtime_ns for p in home_b.root.rglob("*") if p.is_file()}
    assert {k: v for k, v in again.items() if k not in ("written", "unchanged")} == {
        k: v for k, v in summaries_b[0].items() if k not in ("written", "unchanged")
    }


def test_another_seed_lands_other_documents(built, tmp_path):
    home_a, _ = built
    home_c = ClimbHome(tmp_path / "c").ensure()
    build_demo_corpus(home_c, 1, seed=1, scale=SCALE)
    assert {d["id"] for d in _docs(home_c, 1)} != {d["id"] for d in _docs(home_a, 1)}


def test_tech_docs_read_only_the_packages_constraints_pin():
    """pip (upgraded to whatever is newest at install time) and the venv's setuptools are installed here, but a new
    pip must not change the demo corpus: their files are never a source."""
    import pip

    assert Path(pip.__file__).parent.is_dir()
    tops = {source.label.split("/")[1].split("-")[0] for source in READERS["tech_docs"]()}
    assert {"pip", "setuptools", "pkg_resources", "_distutils_hack"}.isdisjoint(tops)
    assert {"polars", "torch", "dagster"} <= tops
    licences = {source.label.split("/")[1].split("-")[0] for source in PACKAGES.readers["licences"]()}
    assert "pip" not in licences and licences  # pip vendors a dozen licence files


def test_no_corpus_reads_this_projects_own_install():
    """Its install record names the directory the repository was cloned into, its METADATA holds the README: a corpus
    that read them would differ between two clones of one commit (the packages corpus did, by its JSON kind)."""
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / f"climb-{importlib.metadata.version('climb')}.dist-info" / "direct_url.json").is_file()
    readers = [READERS["tech_docs"], *PACKAGES.readers.values()]
    tops = {source.label.split("/")[1] for reader in readers for source in reader() if source.label.startswith("site-")}
    assert any(top.endswith(".dist-info") for top in tops)  # other distributions' records are read
    assert not [top for top in tops if top.startswith(("climb-", "climb_assets", "__editable__"))]


def test_bad_arguments_are_refused(tmp_path):
    home = ClimbHome(tmp_path / "x").ensure()
    with pytest.raises(ValueError, match="wave"):
        build_demo_corpus(home, 3, scale=SCALE)
    with pytest.raises(ValueError, match="scale"):
        build_demo_corpus(home, 1, scale=0)
    with pytest.raises(ValueError, match="target kind"):
        build_demo_corpus(home, 1, scale=SCALE, target_kind="poetry")
    assert not any(home.landing.iterdir())


def test_chunks_keep_all_text_within_the_length_bounds():
    paragraphs = [" ".join(f"w{i}-{j}" for j in range(n)) for i, n in enumerate([30, 250, 900, 40, 120, 5, 70] * 6)]
    chunks = _chunk(paragraphs, random.Random(0), "\n\n")
    assert " ".join(" ".join(chunks).split()) == " ".join(" ".join(paragraphs).split())
    assert all(_tokens(c) <= MAX_TOKENS for c in chunks[:-1]) and len(chunks) > 5
    assert chunks == _chunk(paragraphs, random.Random(0), "\n\n")


def test_code_blocks_split_at_definitions_and_keep_the_source_verbatim():
    source = Path(random.__file__).read_text()
    blocks = _code_blocks(source)
    assert "\n".join(blocks).strip("\n") == source.strip("\n")
    assert sum(b.lstrip().startswith(("def ", "class ", "@")) for b in blocks) > 20


def test_packages_corpus_is_other_text_with_a_blended_target(tmp_path):
    """The second corpus shares no kind with the demo; its target blends three kinds, held out by whole source."""
    home = ClimbHome(tmp_path / "packages").ensure()
    summary = build_demo_corpus(home, 1, scale=SCALE, recipe=PACKAGES)
    assert summary["corpus"] == "packages"
    present = set(summary["docs_per_kind"])
    assert present | set(summary["missing_kinds"]) == set(PACKAGES.kinds)
    assert len(present) >= 10 and not present & set(KINDS)

    target = _read_jsonl(home.targets / "target.jsonl")
    per_kind = {kind: sum(d["kind"] == kind for d in target) for kind in PACKAGES.target_kinds}
    assert summary["target_docs_per_kind"] == per_kind
    assert min(per_kind.values()) >= 10 and max(per_kind.values()) <= 3 * min(per_kind.values())
    landing = _docs(home, 1)
    held_sources = {d["id"].rsplit("-", 1)[0] for d in target}
    assert not {d["id"] for d in landing} & {d["id"] for d in target}
    assert not {d["id"].rsplit("-", 1)[0] for d in landing} & held_sources

    items = _read_jsonl(home.targets / "mc_target.jsonl")
    assert items and all(len(item["choices"]) == 4 for item in items)
    distractor_kinds = present - set(PACKAGES.target_kinds)
    assert len(distractor_kinds) >= 3
