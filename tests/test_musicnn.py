"""The musicnn port: TF1 checkpoint reader, numbers against the original TF graph, shapes, tags."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from duetmc.featurize import musicnn as mn
from duetmc.featurize.tfcheckpoint import CheckpointError, masked_crc32c, read_checkpoint, read_index

REFERENCE = Path(__file__).parent / "fixtures" / "musicnn_reference.npz"
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
PATCH = mn.PATCH_FRAMES


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def encoders():
    return {name: mn.load_musicnn(name) for name in mn.MODELS}


def _ref_wav(ref) -> torch.Tensor:
    return torch.from_numpy(ref["wav_int16"].astype(np.float32) / 32768)[None]


# -- checkpoint reader -------------------------------------------------------------------------


def test_reader_reads_real_musicnn_checkpoint():
    state = read_checkpoint(mn.checkpoint_dir("musicnn-mtt"))
    assert len(state) == 150
    assert state["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert state["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert state["dense/kernel"].shape == (1506, 200)
    assert state["dense_1/bias"].shape == (50,)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in state.values())
    assert (state["batch_normalization_9/moving_variance"] > 0).all()
    ignored = sorted(set(state) - set(mn.model_variables(state)))
    assert len(ignored) == 86 and {"beta1_power", "beta2_power"} <= set(ignored)
    assert all(k.endswith(("/Adam", "/Adam_1")) for k in ignored if not k.startswith("beta"))
    msd = read_checkpoint(mn.checkpoint_dir("musicnn-msd"))
    assert msd.keys() == state.keys()
    assert not np.array_equal(msd["dense_1/kernel"], state["dense_1/kernel"])


def _copy_checkpoint(tmp_path: Path) -> Path:
    src = mn.checkpoint_dir("musicnn-mtt")
    for name in (".index", ".data-00000-of-00001"):
        shutil.copy(src / name, tmp_path / f"model{name}")
    return tmp_path / "model"


def test_reader_detects_corrupt_data(tmp_path):
    prefix = _copy_checkpoint(tmp_path)
    num_shards, entries = read_index(f"{prefix}.index")
    assert num_shards == 1
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entries["dense/kernel"].offset + 10] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model\.data-00000.*'dense/kernel'.*CRC32C"):
        read_checkpoint(prefix)


def test_reader_detects_corrupt_index_and_missing_files(tmp_path):
    prefix = _copy_checkpoint(tmp_path)
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    raw[20] ^= 0x01  # inside the first data block's keys
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model\.index: CRC32C mismatch"):
        read_checkpoint(prefix)
    with pytest.raises(CheckpointError, match=r"nothing\.index: checkpoint index file not found"):
        read_checkpoint(tmp_path / "nothing")
    prefix = _copy_checkpoint(tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match=r"model\.data-00000-of-00001: data file missing"):
        read_checkpoint(prefix)


def test_reader_refuses_snappy_blocks(tmp_path):
    prefix = _copy_checkpoint(tmp_path)
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    # the first data block starts at byte 0; its end is where a valid (type 0, CRC) trailer follows
    size = next(
        s
        for s in range(len(raw) - 53)
        if raw[s] == 0 and struct.unpack("<I", raw[s + 1 : s + 5])[0] == masked_crc32c(bytes(raw[: s + 1]))
    )
    raw[size] = 1  # block type byte: snappy, with a CRC that matches so only the type is wrong
    raw[size + 1 : size + 5] = struct.pack("<I", masked_crc32c(bytes(raw[: size + 1])))
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model\.index: snappy-compressed index blocks are not supported"):
        read_checkpoint(prefix)


# -- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"conv2d_3/kernl": s.pop("conv2d_3/kernel")}), r"'conv2d_3/kernel' is missing"),
        (lambda s: s.pop("batch_normalization_10/moving_mean"), r"'batch_normalization_10/moving_mean' is missing"),
        (lambda s: s.update({"dense_2/kernel": np.zeros((50, 3), np.float32)}), r"unexpected variables \['dense_2/kernel'\]"),
        (lambda s: s.update({"dense_1/bias": np.zeros(49, np.float32)}), r"do not fit the musicnn architecture"),
    ],
    ids=["renamed", "missing", "unexpected", "wrong-shape"],
)
def test_load_fails_loudly_on_checkpoint_mismatch(monkeypatch, edit, message):
    real = read_checkpoint(mn.checkpoint_dir("musicnn-mtt"))

    def edited(_prefix):
        state = dict(real)
        edit(state)
        return state

    monkeypatch.setattr(mn, "read_checkpoint", edited)
    with pytest.raises(mn.MusicnnError, match=message):
        mn.load_musicnn("musicnn-mtt")


def test_unknown_encoder_name():
    with pytest.raises(mn.MusicnnError, match="unknown musicnn encoder 'musicnn-foo'"):
        mn.load_musicnn("musicnn-foo")


def test_weights_sha256(encoders):
    state = mn.model_variables(read_checkpoint(mn.checkpoint_dir("musicnn-mtt")))
    assert encoders["musicnn-mtt"].weights_sha256 == mn.weights_sha256(state)
    assert mn.weights_sha256(dict(reversed(list(state.items())))) == mn.weights_sha256(state)
    assert encoders["musicnn-mtt"].weights_sha256 != encoders["musicnn-msd"].weights_sha256
    changed = dict(state)
    changed["dense_1/bias"] = state["dense_1/bias"].copy()
    changed["dense_1/bias"][0] += 1e-6
    assert mn.weights_sha256(changed) != mn.weights_sha256(state)
    assert len(encoders["musicnn-mtt"].weights_sha256) == 64


# -- numbers against the original TensorFlow graph (tests/fixtures/make_musicnn_reference.py) ----


def test_logmel_matches_librosa(encoders, ref):
    mel = encoders["musicnn-mtt"].logmel(_ref_wav(ref))[0].numpy()
    assert mel.shape == ref["logmel"].shape == (251, 96)
    np.testing.assert_allclose(mel, ref["logmel"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(mn.MODELS))
def test_port_matches_tensorflow_per_patch(encoders, ref, name):
    """Same log-mel patches in, per-patch outputs equal to the TF1 graph with the checkpoint."""
    pre = name.split("-")[1]
    patches = torch.from_numpy(np.stack([ref["logmel"][s : s + PATCH] for s in ref["patch_starts"]]))
    with torch.no_grad():
        frames, penultimate, logits = encoders[name].run_patches(patches)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), ref[f"{pre}_tags"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(penultimate.numpy(), ref[f"{pre}_penultimate"], atol=1e-4, rtol=1e-5)
    last = frames[-1].numpy()
    expected = ref["mtt_frames_last"] if pre == "mtt" else ref["msd_frames_last_every4"]
    # features reach ~100 and sum up to 561 x 7 float32 products: 5e-4 is 5e-6 of their scale
    np.testing.assert_allclose(last if pre == "mtt" else last[::4], expected, atol=5e-4, rtol=1e-5)


@pytest.mark.parametrize("name", list(mn.MODELS))
def test_waveform_to_tags_matches_tensorflow(encoders, ref, name):
    pre = name.split("-")[1]
    probs = encoders[name].tags(_ref_wav(ref))
    assert probs.shape == (1, 50)
    np.testing.assert_allclose(probs[0].numpy(), ref[f"{pre}_tags"].mean(0), atol=1e-4, rtol=0)


def test_forward_frames_match_tensorflow_and_drop_the_overlap(encoders, ref):
    enc = encoders["musicnn-mtt"]
    out = enc(_ref_wav(ref))
    assert out.shape == (1, 1, 251, 753) and out.dtype == torch.float32
    assert list(ref["patch_starts"]) == enc.patch_starts(251) == [0, 64]
    # frames 187..250 come from the end-aligned patch (starting at 64), i.e. its rows 123..186
    np.testing.assert_allclose(out[0, 0, 187:].numpy(), ref["mtt_frames_last"][123:], atol=5e-4, rtol=1e-5)
    first = enc.run_patches(enc.logmel(_ref_wav(ref))[:, :PATCH])[0]
    torch.testing.assert_close(out[0, 0, :187], first[0], atol=1e-4, rtol=1e-5)  # batch size changes conv kernels


# -- shapes, patching, errors --------------------------------------------------------------------


def test_encoder_attributes(encoders):
    enc = encoders["musicnn-msd"]
    assert (enc.name, enc.sample_rate, enc.n_layers, enc.dim) == ("musicnn-msd", 16000, 1, 753)
    assert enc.min_samples == 186 * 256 and len(enc.layer_names) == 1
    assert enc.tag_names == mn.TAG_NAMES_MSD and len(mn.TAG_NAMES_MTT) == len(mn.TAG_NAMES_MSD) == 50
    assert mn.TAG_NAMES_MTT[5] == "drums" and mn.TAG_NAMES_MSD[0] == "rock"
    widths = [s.stop - s.start for s in enc.part_slices.values()]
    assert widths == [561, 64, 64, 64] and sum(widths) == enc.dim
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


def test_patch_starts():
    assert mn.MusicnnEncoder.patch_starts(187) == [0]
    assert mn.MusicnnEncoder.patch_starts(374) == [0, 187]
    assert mn.MusicnnEncoder.patch_starts(400) == [0, 187, 213]
    with pytest.raises(ValueError, match="186 mel frames is shorter than one musicnn patch"):
        mn.MusicnnEncoder.patch_starts(186)


def test_shapes_batch_independence_and_determinism(encoders):
    enc = encoders["musicnn-mtt"]
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, enc.min_samples + 256 * 40 + 17, generator=gen)
    out = enc(wav)
    assert out.shape == (2, 1, 227, 753)  # 1 + S // 256 frames: patches at 0 and 40
    assert torch.isfinite(out).all()
    single = enc(wav[1:])
    torch.testing.assert_close(out[1:], single, atol=1e-4, rtol=1e-5)
    assert torch.equal(single, enc(wav[1:]))
    tags = enc.tags(wav[:1])
    assert tags.shape == (1, 50) and ((tags > 0) & (tags < 1)).all()
    assert enc(wav[:1, : enc.min_samples]).shape == (1, 1, 187, 753)


def test_train_mode_cannot_unlock_batch_norm(encoders):
    enc = encoders["musicnn-mtt"]
    wav = 0.1 * torch.randn(3, enc.min_samples, generator=torch.Generator().manual_seed(1))
    before = enc(wav)
    enc.train()
    assert not enc.training and not enc.input_bn.training
    assert torch.equal(enc(wav), before)


def test_too_short_or_wrong_rank_input(encoders):
    enc = encoders["musicnn-mtt"]
    with pytest.raises(ValueError, match=r"47615 samples \(2\.98 s\) is shorter than one musicnn patch.*47616"):
        enc(torch.zeros(1, enc.min_samples - 1))
    with pytest.raises(ValueError, match=r"\[batch, samples\] waveform, got shape \(48000,\)"):
        enc.tags(torch.zeros(48000))


# -- tags on rendered General MIDI clips ---------------------------------------------------------


def _render(notes: list[tuple[int, float, float, int]], program: int, is_drum: bool) -> torch.Tensor:
    import pretty_midi

    assert SOUNDFONT.is_file(), f"{SOUNDFONT} missing: apt-get install fluid-soundfont-gm"
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(program, is_drum=is_drum)
    inst.notes = [pretty_midi.Note(vel, pitch, t, t + dur) for pitch, t, dur, vel in notes]
    pm.instruments.append(inst)
    audio = pm.fluidsynth(fs=16000, synthesizer=str(SOUNDFONT)).astype(np.float32)
    return torch.from_numpy(0.5 * audio / np.abs(audio).max())[None]


def test_drum_clip_is_tagged_drums_and_piano_clip_piano(encoders):
    enc = encoders["musicnn-mtt"]
    beat = []
    for i in range(24):  # 6 s of a rock beat at 120 bpm: hi-hat eighths, kick on 1, snare on 3
        t = i * 0.25
        beat.append((42, t, 0.1, 90))
        if i % 4 in (0, 2):
            beat.append((36 if i % 4 == 0 else 38, t, 0.1, 110))
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    melody = [72, 74, 76, 79, 77, 76, 74, 72]
    keys = [(p - 12, b * 0.5, 2.0, 70) for b in range(0, 12, 4) for p in chords[b // 4]]
    keys += [(melody[b % 8], b * 0.5, 0.45, 85) for b in range(12)]
    tags = enc.tags(torch.cat([_render(beat, 0, True)[:, :96000], _render(keys, 0, False)[:, :96000]]))
    top3 = [[mn.TAG_NAMES_MTT[i] for i in row.argsort(descending=True)[:3]] for row in tags]
    assert "drums" in top3[0] and "piano" not in top3[0], top3
    assert "piano" in top3[1] and "drums" not in top3[1], top3
    drums, piano = mn.TAG_NAMES_MTT.index("drums"), mn.TAG_NAMES_MTT.index("piano")
    assert tags[0, drums] > 2 * tags[1, drums] and tags[1, piano] > 2 * tags[0, piano]
