"""Search index (vlbridge.api.index_build / search_index, `vlbridge index`) on tiny saved models.

Spec: the index holds the CLIP's unit image embeddings and {id, key, path, caption, source} rows;
exact search equals a numpy brute force; faiss HNSW / IVF reach high recall@10 against it; an add
appends only new images with stable ids; a killed build resumes to the same index; stored copies
serve images without files; no served path leaves the index folder and its data folders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.serve_helpers import write_images
from vlbridge.errors import UserError


@pytest.fixture(scope="module")
def clip(serve_models):
    from vlbridge.api import ClipModel

    return ClipModel.from_pretrained(serve_models[0].clip)


@pytest.fixture()
def folder(tmp_path):
    return write_images(tmp_path / "photos", 9, seed=3)


def build(clip, source, out, **options):
    from vlbridge.api.index_build import build_index

    return build_index(clip, source, out, **options)


def test_build_writes_unit_embeddings_and_metadata(clip, folder, tmp_path):
    from vlbridge.api import SearchIndex
    from vlbridge.data.records import open_image

    report = build(clip, f"folder:{folder}", tmp_path / "index")
    assert (report.added, report.count, report.kind) == (9, 9, "exact")
    index = SearchIndex.open(tmp_path / "index")
    paths = sorted(folder.glob("*.png"))
    assert [row["id"] for row in index.metadata] == list(range(9))
    assert [row["path"] for row in index.metadata] == [str(p.resolve()) for p in paths]
    assert [row["caption"] for row in index.metadata] == [p.with_suffix(".txt").read_text().strip() for p in paths]
    expected = clip.bundle.embed_images([open_image(p) for p in paths]).numpy()
    np.testing.assert_allclose(index.embeddings, expected, atol=1e-5)
    assert (tmp_path / "index" / "img_emb" / "img_emb_0.npy").is_file()  # clip-retrieval's embeddings layout
    assert (tmp_path / "index" / "metadata" / "metadata_0.jsonl").is_file()


def test_exact_search_equals_brute_force(clip, folder, tmp_path):
    from vlbridge.api import SearchIndex

    build(clip, f"folder:{folder}", tmp_path / "index")
    index = SearchIndex.open(tmp_path / "index")
    queries = clip.embed_texts(["a red circle", "two small shapes", "a blue heart"]).numpy()
    similarities = queries @ index.embeddings.T
    for k in (1, 4, 9, 50):
        hits = index.search(queries, k)
        for row, query_hits in zip(similarities, hits):
            order = np.argsort(-row, kind="stable")[: min(k, 9)]
            assert [hit.id for hit in query_hits] == order.tolist()
            np.testing.assert_allclose([hit.score for hit in query_hits], row[order], atol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_recall_at_10_against_exact(kind):
    from vlbridge.api.index_build import make_faiss_index
    from vlbridge.api.search_index import unit_rows

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    embeddings = unit_rows(centres[rng.integers(0, 40, 4000)] + 0.5 * rng.normal(size=(4000, 32)))
    queries = unit_rows(centres[rng.integers(0, 40, 50)] + 0.5 * rng.normal(size=(50, 32)))
    index, params = make_faiss_index(kind, embeddings)
    _, approximate = index.search(queries, 10)
    exact = np.argsort(-(queries @ embeddings.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert recall >= 0.9, f"{kind} recall@10 {recall:.3f} with {params}"


def test_choose_kind_by_size():
    from vlbridge.api.index_build import EXACT_MAX, HNSW_MAX, choose_kind

    assert [choose_kind(n) for n in (10, EXACT_MAX - 1, EXACT_MAX, HNSW_MAX - 1, HNSW_MAX)] == \
        ["exact", "exact", "hnsw", "hnsw", "ivf"]
    assert choose_kind(10, "ivf") == "ivf"
    with pytest.raises(UserError, match="index kind must be"):
        choose_kind(10, "lsh")


def test_add_appends_only_new_images_and_keeps_ids(clip, folder, tmp_path):
    from vlbridge.api import SearchIndex
    from vlbridge.api.index_build import add_to_index

    build(clip, f"folder:{folder}", tmp_path / "index", kind="hnsw")
    before = SearchIndex.open(tmp_path / "index")
    write_images(folder, 12, seed=3)  # the same 9 images plus 3 new ones
    report = add_to_index(tmp_path / "index", f"folder:{folder}")
    assert (report.added, report.already, report.count, report.kind) == (3, 9, 12, "hnsw")
    after = SearchIndex.open(tmp_path / "index")
    assert after.metadata[:9] == before.metadata and after.faiss_index.ntotal == 12
    np.testing.assert_array_equal(after.embeddings[:9], before.embeddings)
    again = add_to_index(tmp_path / "index", f"folder:{folder}")
    assert (again.added, again.already) == (0, 12)
    query = clip.embed_texts(["a green star"])
    approximate, exact = after.search(query, 5)[0], after.search(query, 5, exact=True)[0]
    assert [h.score for h in approximate] == pytest.approx([h.score for h in exact], abs=1e-5)


def test_killed_build_resumes_to_the_same_index(clip, folder, tmp_path, monkeypatch):
    from vlbridge.api import SearchIndex
    from vlbridge.api import index_build

    build(clip, f"folder:{folder}", tmp_path / "fresh", part_size=4)
    real_write = index_build._write_part
    calls = []

    def write_then_die(*args):
        real_write(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(index_build, "_write_part", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build(clip, f"folder:{folder}", tmp_path / "resumed", part_size=4)
    monkeypatch.setattr(index_build, "_write_part", real_write)
    assert json.loads((tmp_path / "resumed" / "index.json").read_text())["count"] == 8
    report = build(clip, f"folder:{folder}", tmp_path / "resumed", part_size=4)
    assert (report.added, report.already, report.count) == (1, 8, 9)
    fresh, resumed = SearchIndex.open(tmp_path / "fresh"), SearchIndex.open(tmp_path / "resumed")
    assert resumed.metadata == fresh.metadata
    np.testing.assert_allclose(resumed.embeddings, fresh.embeddings, atol=1e-6)


def test_images_without_files_are_stored_in_the_index(clip, tmp_path):
    from vlbridge.api import SearchIndex
    from vlbridge.data.formats import export_records, load_image_text
    from vlbridge.data.records import open_image

    build(clip, "shapes?split=test&n=3&image_size=40", tmp_path / "index")
    shards = export_records(load_image_text("shapes?split=train&n=4&image_size=40"), tmp_path / "wds", "wds", progress=False)
    from vlbridge.api.index_build import add_to_index

    add_to_index(tmp_path / "index", shards.read_back)
    index = SearchIndex.open(tmp_path / "index")
    assert len(index) == 7
    for row in range(7):
        entry = index.entry(row)
        assert entry["path"].startswith("images/") and entry["key"].startswith(entry["source"] + "#")
        assert open_image(index.image_file(row)).size == (40, 40)
    assert index.entry(3)["source"] == shards.read_back


def test_served_paths_never_leave_the_index_and_its_data(clip, folder, tmp_path):
    from vlbridge.api import SearchIndex

    build(clip, f"folder:{folder}", tmp_path / "index")
    meta = tmp_path / "index" / "metadata" / "metadata_0.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    secret = tmp_path / "secret.png"
    secret.write_bytes((folder / f"{rows[0]['path'].rsplit('/', 1)[-1]}").read_bytes())
    rows[0]["path"] = "../secret.png"
    rows[1]["path"] = str(secret)
    rows[2]["path"] = "images/../../secret.png"
    meta.write_text("".join(json.dumps(row) + "\n" for row in rows))
    index = SearchIndex.open(tmp_path / "index")
    for row in (0, 1, 2):
        with pytest.raises(UserError, match="outside the index"):
            index.image_file(row)
    assert index.image_file(3) == (folder / rows[3]["path"].rsplit("/", 1)[-1]).resolve()
    for row in (-1, 9):
        with pytest.raises(UserError, match="no image"):
            index.entry(row)


def test_build_refuses_other_folders_and_other_clips(clip, folder, tmp_path, serve_models):
    from vlbridge.api import ClipModel
    from vlbridge.api.index_build import add_to_index
    from helpers.eval_helpers import save_tiny_run

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="is not a search index"):
        build(clip, f"folder:{folder}", tmp_path / "busy")
    build(clip, f"folder:{folder}", tmp_path / "index")
    other = ClipModel.from_pretrained(save_tiny_run(tmp_path / "other-clip", seed=1))
    with pytest.raises(UserError, match="was built with CLIP"):
        add_to_index(tmp_path / "index", f"folder:{folder}", other)
    with pytest.raises(UserError, match="could be indexed"):
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "a.png").write_text("not an image")
        (tmp_path / "junk" / "a.txt").write_text("a caption")
        build(clip, f"folder:{tmp_path / 'junk'}", tmp_path / "junk-index")


def test_index_cli_build_info_search(serve_models, folder, tmp_path, capsys):
    from vlbridge.cli import main

    models, _ = serve_models
    out = tmp_path / "index"
    assert main(["index", "build", "--clip", str(models.clip), "--from", f"folder:{folder}", "--out", str(out)]) == 0
    assert "9 images added, 0 already there, 0 skipped; 9 images, exact search" in capsys.readouterr().out
    assert main(["index", "info", str(out)]) == 0
    assert f"part 0: 9 images from folder:{folder}" in capsys.readouterr().out
    assert main(["index", "search", str(out), "a red circle", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.count("\t") == 3 for line in lines)
    assert main(["index", "add", str(out), "--from", f"folder:{folder}"]) == 0
    assert "0 images added, 9 already there" in capsys.readouterr().out
    assert main(["index", "info", str(tmp_path / "nothing")]) == 2
    assert "is not a search index" in capsys.readouterr().err
