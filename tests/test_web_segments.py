"""Audio segments for the web app: decoded from the original file, WAV bytes, byte ranges, a bounded cache."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import tone, write_audio

from duetmc.web.http import ApiError, check_host, parse_range, serve_app
from duetmc.web.segments import Segment, SegmentCache, SegmentError, encode_segment, etag


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_segment_is_the_clips_samples(tmp_path, ext):
    sr = 16000
    data = tone(3.0, sr, freq=300.0)
    path = write_audio(tmp_path / f"a.{ext}", data, sr)
    wav = encode_segment(Segment(str(path), 1.0, 2.5))
    out, out_sr = sf.read(io.BytesIO(wav), dtype="float32")
    assert out_sr == sr and out.shape == (int(1.5 * sr),)
    assert sf.info(io.BytesIO(wav)).subtype == "PCM_16"
    if ext != "ogg":  # lossless sources: the segment is the file's samples to 16-bit precision
        np.testing.assert_allclose(out, data[sr:int(2.5 * sr), 0], atol=2 / 32768)


def test_whole_file_and_channel_mixdown(tmp_path):
    sr = 8000
    path = write_audio(tmp_path / "six.wav", tone(1.0, sr, channels=6), sr)
    out, _ = sf.read(io.BytesIO(encode_segment(Segment(str(path)))))
    assert out.shape == (sr, 2)


def test_bad_segments_are_one_line_errors(tmp_path):
    path = write_audio(tmp_path / "a.wav", tone(1.0, 8000), 8000)
    with pytest.raises(SegmentError, match="outside the file"):
        encode_segment(Segment(str(path), 5.0, 6.0))
    with pytest.raises(SegmentError, match="gone"):
        etag(Segment(str(tmp_path / "missing.wav")))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(SegmentError, match="cannot decode"):
        encode_segment(Segment(str(tmp_path / "text.wav")))


def test_cache_is_bounded_by_bytes_and_follows_file_changes(tmp_path):
    sr = 8000
    paths = [write_audio(tmp_path / f"{i}.wav", tone(1.0, sr, freq=200.0 + 50 * i), sr) for i in range(4)]
    one = len(encode_segment(Segment(str(paths[0]))))
    cache = SegmentCache(max_bytes=2 * one + 10)
    first, tag = cache.get(Segment(str(paths[0])))
    assert cache.get(Segment(str(paths[0])))[0] is first  # a hit returns the stored bytes
    for p in paths[1:]:
        cache.get(Segment(str(p)))
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    write_audio(paths[3], tone(1.0, sr, freq=999.0), sr)
    os.utime(paths[3], ns=(1, 1))
    data, tag2 = cache.get(Segment(str(paths[3])))
    assert tag2 != etag(Segment(str(paths[2]))) and sf.read(io.BytesIO(data))[0].shape == (sr,)
    tiny = SegmentCache(max_bytes=10)
    tiny.get(Segment(str(paths[0])))
    assert len(tiny) == 0 and tiny.nbytes == 0  # larger than the budget: served, never kept


@pytest.mark.parametrize("header,expected", [
    (None, None), ("bytes=0-", (0, 99)), ("bytes=10-19", (10, 19)), ("bytes=90-500", (90, 99)),
    ("bytes=-10", (90, 99)), ("bytes=-500", (0, 99)), ("bytes=0-1,5-6", None), ("items=0-5", None),
    ("bytes=-", None)])
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0", "bytes=20-10"])
def test_unsatisfiable_range_is_416(header):
    with pytest.raises(ApiError) as info:
        parse_range(header, 100)
    assert info.value.status == 416 and info.value.headers["Content-Range"] == "bytes */100"


def test_host_warning():
    assert check_host("127.0.0.1") is None and check_host("localhost") is None and check_host("::1") is None
    assert "anyone who can reach" in check_host("0.0.0.0")


def test_public_host_prints_a_warning(monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    serve_app(object(), "0.0.0.0", 8123, ["hello"])
    out = capsys.readouterr()
    assert "warning: listening on 0.0.0.0" in out.err and "hello" in out.out and calls[0]["port"] == 8123
    serve_app(object(), "127.0.0.1", 8123, [])
    assert "warning" not in capsys.readouterr().err
