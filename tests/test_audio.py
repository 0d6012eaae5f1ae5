import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional

from speakertrip.audio import audio_info, load_audio, prepare_waveform, read_crop, resample, to_float
from speakertrip.errors import AudioError
from speakertrip.testing import speech_like, write_bad_audio

RATE = 16000


@pytest.fixture(scope="module")
def stereo():
    left, right = speech_like(1, 1.0, RATE, seed=1), speech_like(2, 1.0, RATE, seed=2)
    return np.stack([left, right], axis=1)


@pytest.mark.parametrize("suffix, subtype, tolerance", [
    ("wav", "PCM_16", 1 / 32768), ("wav", "PCM_24", 1e-6), ("wav", "PCM_32", 1e-6), ("wav", "FLOAT", 0),
    ("flac", "PCM_16", 1 / 32768), ("ogg", "VORBIS", None),
])
def test_reads_formats_and_downmixes(tmp_path, stereo, suffix, subtype, tolerance):
    path = tmp_path / f"a.{suffix}"
    sf.write(path, stereo, RATE, subtype=subtype)
    signal = load_audio(path)
    assert signal.dtype == np.float32 and signal.shape == (len(stereo),)
    info = audio_info(path)
    assert (info.frames, info.sample_rate, info.channels) == (len(stereo), RATE, 2)
    expected = stereo.mean(axis=1)
    if tolerance is None:  # lossy: compare energy, not samples
        assert abs(np.std(signal) / np.std(expected) - 1) < 0.1
    else:
        np.testing.assert_allclose(signal, expected, atol=tolerance)


@pytest.mark.parametrize("source_rate", [8000, 44100])
def test_resamples_close_to_torchaudio(tmp_path, source_rate):
    signal = speech_like(3, 0.5, source_rate)
    path = tmp_path / "a.wav"
    sf.write(path, signal, source_rate, subtype="FLOAT")
    loaded = load_audio(path, sample_rate=RATE)
    expected = torchaudio.functional.resample(torch.from_numpy(signal), source_rate, RATE).numpy()
    np.testing.assert_allclose(loaded, expected, atol=1e-3)  # torchaudio's kernel, applied by scipy: 3.9e-4 measured
    assert np.sqrt(np.mean((loaded - expected) ** 2) / np.mean(expected ** 2)) < 0.002  # 0.06 % measured
    assert len(loaded) == round(len(signal) * RATE / source_rate)


def test_bad_inputs_raise_audio_errors_naming_the_file(tmp_path):
    paths = write_bad_audio(tmp_path)
    expected = {"missing": "no such audio file", "empty": "empty file", "no_frames": "no samples",
                "not_audio": "not a readable audio file", "corrupt": "not a readable audio file",
                "silent": "all samples are zero", "nan": "NaN", "short": "shorter than the minimum 0.1 s"}
    for kind, message in expected.items():
        with pytest.raises(AudioError, match=message) as caught:
            load_audio(paths[kind], min_duration=0.1)
        assert str(paths[kind]) in str(caught.value), kind
    with pytest.raises(AudioError, match="directory"):
        audio_info(tmp_path)
    (tmp_path / "b.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(64))
    with pytest.raises(AudioError, match="speakertrip convert"):
        load_audio(tmp_path / "b.m4a")


def with_list_chunk(path):
    """Insert an odd-sized LIST chunk before 'data', as some tools write."""
    raw = path.read_bytes()
    data = raw.index(b"data")
    extra = b"LIST" + (3).to_bytes(4, "little") + b"abc\x00"
    path.write_bytes(raw[:data] + extra + raw[data:])
    return path


@pytest.mark.parametrize("channels, variant", [(1, "plain"), (2, "plain"), (3, "extensible"), (1, "list_chunk"),
                                               (1, "truncated")])
def test_read_crop_of_pcm16_wav_equals_soundfile(tmp_path, channels, variant):
    signal = np.stack([speech_like(c, 1.0, RATE, seed=c) for c in range(channels)], axis=1)
    path = tmp_path / "a.wav"
    sf.write(path, signal, RATE, subtype="PCM_16")
    if variant == "list_chunk":
        with_list_chunk(path)
    if variant == "truncated":  # the header promises more samples than the file holds
        path.write_bytes(path.read_bytes()[:-1001])
    whole, _ = sf.read(path, dtype="int16", always_2d=True)
    expected = whole.mean(axis=1, dtype=np.float32).astype(np.int16) if channels > 1 else whole[:, 0]
    for start, count in [(0, 100), (1234, 4000), (len(whole) - 50, 4000), (len(whole) + 10, 10)]:
        crop = read_crop(path, start, count)
        assert crop.dtype == np.int16 and crop.flags.writeable
        np.testing.assert_array_equal(crop, expected[start : start + count])


def test_read_crop_through_soundfile_reads_only_the_crop(tmp_path, stereo, monkeypatch):
    sf.write(tmp_path / "stereo.flac", stereo, RATE, subtype="PCM_16")
    stereo_int, _ = sf.read(tmp_path / "stereo.flac", dtype="int16")
    requested = []
    original_read = sf.SoundFile.read
    def recording_read(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return original_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", recording_read)
    crop = read_crop(tmp_path / "stereo.flac", 10, 500)
    assert crop.dtype == np.int16 and requested == [500]
    np.testing.assert_allclose(crop, stereo_int[10:510].mean(axis=1), atol=1)
    with pytest.raises(AudioError, match="no such audio file"):
        read_crop(tmp_path / "missing.wav", 0, 10)


def test_read_crop_float_and_resampled(tmp_path):
    signal = speech_like(5, 1.0, 8000)
    sf.write(tmp_path / "a.wav", signal, 8000, subtype="FLOAT")
    crop = read_crop(tmp_path / "a.wav", 4000, 2000)
    assert crop.dtype == np.float32
    np.testing.assert_array_equal(crop, signal[4000:6000])
    full = resample(signal, 8000, RATE)
    crop = read_crop(tmp_path / "a.wav", 4000, 6000, sample_rate=RATE)
    assert crop.dtype == np.float32 and len(crop) == 6000
    np.testing.assert_allclose(crop[200:-200], full[4200:9800], atol=2e-3)  # edges differ: filter context
    with pytest.raises(AudioError, match="must be >= 0"):
        read_crop(tmp_path / "a.wav", -1, 10)


def test_prepare_waveform_on_arrays_and_tensors():
    signal = speech_like(6, 0.5, RATE)
    np.testing.assert_array_equal(prepare_waveform(signal, RATE), signal)
    as_int = (signal * 32767).astype(np.int16)
    np.testing.assert_allclose(prepare_waveform(as_int, RATE), signal, atol=1e-4)
    two = np.stack([signal, signal * 0.5])
    expected = signal * 0.75
    np.testing.assert_allclose(prepare_waveform(torch.from_numpy(two), RATE), expected, atol=1e-7)
    np.testing.assert_allclose(prepare_waveform(two.T, RATE), expected, atol=1e-7)
    assert prepare_waveform(signal, RATE, 8000).shape == (4000,)
    for bad, message in [(np.zeros(100), "all samples are zero"), (np.array([]), "no samples"),
                         (np.array([0.1, np.inf]), "NaN or infinite"), (np.zeros((2, 2, 2)), "1-D or 2-D")]:
        with pytest.raises(AudioError, match=message):
            prepare_waveform(bad, RATE, name="clip-7")
    with pytest.raises(AudioError, match="clip-7: 0.500 s of audio is shorter than the minimum 1 s"):
        prepare_waveform(signal, RATE, min_duration=1.0, name="clip-7")


def test_to_float_scales_integers_on_any_device():
    assert to_float(torch.tensor([16384, -32768], dtype=torch.int16)).tolist() == [0.5, -1.0]
    assert to_float(np.array([1 << 30], np.int32)).tolist() == [0.5]
    floats = torch.tensor([0.25], dtype=torch.float64)
    assert to_float(floats).dtype == torch.float32
    if torch.cuda.is_available():
        assert to_float(torch.ones(2, dtype=torch.int16, device="cuda")).device.type == "cuda"
