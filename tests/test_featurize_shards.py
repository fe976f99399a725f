"""Whole-shard writes (duetmc.featurize.rows): a kill mid-shard loses only that shard, a resume writes the
bytes an uninterrupted run writes, finished rows keep their stored bytes, and the length-sorted rows
map back to their records."""

from __future__ import annotations

import numpy as np
import pytest

from duetmc import cache_spec
from duetmc.cache_spec import TextSettings
from duetmc.augment.viewsfile import write_views
from duetmc.featurize.text import TextEncoder, load_text_encoder
from test_featurize_text import RECORDS, featurize, records_of, text_group

ARGS = dict(batch_size=3, rows_per_shard=4)  # 9 texts: shards [0-3] [4-7] [8], batches [0-2] [3] [4-6] [7] [8]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, duetmc_home):
    d = tmp_path_factory.mktemp("shards")
    views = write_views(RECORDS, d / "views.jsonl")
    featurize(views, d / "ref", **ARGS)
    return views, text_group(d / "ref")


def test_a_kill_mid_shard_loses_only_that_shard_and_the_resume_is_identical(reference, tmp_path, monkeypatch):
    views, ref = reference
    calls, encode = [0], TextEncoder.encode

    def dies_mid_shard(self, *args, **kw):
        calls[0] += 1
        if calls[0] == 4:  # batch [7], after [4-6] of the same shard: not an Exception, nothing flushed
            raise KeyboardInterrupt
        return encode(self, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(TextEncoder, "encode", dies_mid_shard)
        with pytest.raises(KeyboardInterrupt):
            featurize(views, tmp_path / "c", **ARGS)
    done = np.asarray(text_group(tmp_path / "c")["done"][:])
    assert done[:4].all() and not done[4:].any()
    resumed = featurize(views, tmp_path / "c", **ARGS)
    assert (resumed.done, resumed.skipped, resumed.failed) == (5, 4, 0)
    g = text_group(tmp_path / "c")
    np.testing.assert_array_equal(g["features"][:], ref["features"][:])
    assert np.asarray(g["done"][:]).all()


def test_finished_rows_of_a_resumed_shard_keep_their_stored_bytes(reference, tmp_path):
    views, ref = reference
    featurize(views, tmp_path / "c", **ARGS)
    g = cache_spec.open_features(cache_spec.open_root(str(tmp_path / "c"), mode="a"), "text",
                                 TextSettings("tiny-text"), str(tmp_path / "c"))
    marked = np.full(g["features"].shape[1:], 7.0, np.float16)
    g["features"][4] = marked  # finished: must never be rewritten with recomputed values
    g["done"][5] = False
    again = featurize(views, tmp_path / "c", **ARGS)
    assert (again.done, again.skipped) == (1, 8)
    feats = text_group(tmp_path / "c")["features"][:]
    np.testing.assert_array_equal(feats[4], marked)
    np.testing.assert_array_equal(feats[5], ref["features"][5])


def test_length_sorted_rows_map_back_to_their_records(reference):
    _, g = reference
    texts = cache_spec.read_strings(g["texts"]).tolist()
    lengths = np.asarray(g["lengths"][:])
    assert (np.diff(lengths) <= 0).all()  # longest first: a batch pads to about its own length
    rec = records_of(g)
    assert [texts[r] for r in rec["text_row"]] == [r.text for r in RECORDS]
    enc, feats = load_text_encoder("tiny-text"), g["features"][:].astype(np.float32)
    for row, text in enumerate(texts):  # each stored row is its own text's features, as if run alone
        alone, n = enc([text], [-1], 77)
        assert int(n[0]) == lengths[row]
        np.testing.assert_allclose(feats[row, :, : int(n[0])], alone[0].numpy(), atol=2e-3, rtol=2e-3)
        assert not feats[row, :, int(n[0]):].any()
