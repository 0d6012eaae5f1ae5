"""The eSpeak NG ctypes binding: output format, what the parameters do, and errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from speakertrip.corpora.espeak import Espeak, EspeakError, engine, find_library
from speakertrip.errors import ConfigError

TEXT = "the quick brown fox jumps over the lazy dog"


def median_f0(samples: np.ndarray, sample_rate: int) -> float:
    """Median over loud 40 ms frames of the autocorrelation-peak pitch (60–500 Hz)."""
    size = int(0.04 * sample_rate)
    frames = samples[: len(samples) // size * size].reshape(-1, size).astype(np.float64)
    frames = frames[(frames**2).mean(axis=1) > 0.1 * (frames**2).mean(axis=1).max()]
    spectra = np.fft.rfft(frames - frames.mean(axis=1, keepdims=True), n=2 * size)
    correlation = np.fft.irfft(np.abs(spectra) ** 2)[:, :size]
    shortest, longest = sample_rate // 500, sample_rate // 60
    lags = shortest + np.argmax(correlation[:, shortest:longest], axis=1)
    return float(np.median(sample_rate / lags))


def test_library_and_data_are_found():
    library, data = find_library()
    assert library.is_file()
    assert data is None or (data / "phontab").is_file()


def test_synthesis_gives_int16_speech_at_the_engine_rate():
    tts = engine()
    assert tts is engine()  # one engine per process
    samples = tts.synthesize(TEXT, language="en")
    assert tts.sample_rate == 22050
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert 1.5 < len(samples) / tts.sample_rate < 5.0
    assert np.abs(samples).max() > 3000
    assert len(tts.synthesize("yes", language="en")) < len(samples) / 3


def test_languages_and_variants_are_listed():
    tts = engine()
    assert {"en", "en-us", "de", "fr", "sw"} <= tts.languages
    assert {"m3", "f2", "klatt"} <= tts.variants
    assert any(voice.identifier == "gmw/de" and "de" in voice.languages for voice in tts.voices)


def test_parameters_change_the_voice():
    tts = engine()
    low = median_f0(tts.synthesize(TEXT, "en", "m3", pitch=10), tts.sample_rate)
    high = median_f0(tts.synthesize(TEXT, "en", "m3", pitch=90), tts.sample_rate)
    assert high > 1.4 * low
    assert median_f0(tts.synthesize(TEXT, "en", "f2"), tts.sample_rate) > 1.3 * median_f0(
        tts.synthesize(TEXT, "en", "m3"), tts.sample_rate)
    slow, fast = tts.synthesize(TEXT, "en", rate=100), tts.synthesize(TEXT, "en", rate=300)
    assert len(slow) > 2 * len(fast)
    gapped = tts.synthesize(TEXT, "en", rate=175, word_gap=20)
    assert len(gapped) > len(tts.synthesize(TEXT, "en", rate=175)) + 7 * 0.15 * tts.sample_rate
    quiet, loud = tts.synthesize(TEXT, "en", volume=30), tts.synthesize(TEXT, "en", volume=150)
    assert np.abs(loud.astype(float)).mean() > 3 * np.abs(quiet.astype(float)).mean()
    german, english = tts.synthesize("guten morgen", "de"), tts.synthesize("guten morgen", "en")
    assert len(german) != len(english) or not np.array_equal(german, english)


@pytest.mark.parametrize("arguments, message", [
    ({"language": "xx"}, "unknown eSpeak language 'xx'; valid: af, "),
    ({"language": "en", "variant": "nobody"}, "unknown eSpeak voice variant 'nobody'; valid: "),
    ({"rate": 20}, "eSpeak rate=20: expected an integer in [80, 450]"),
    ({"pitch": 150}, "eSpeak pitch=150: expected an integer in [0, 99]"),
    ({"pitch_range": 1.5}, "eSpeak pitch_range=1.5: expected an integer"),
    ({"volume": -1}, "eSpeak volume=-1"),
])
def test_bad_voice_or_parameter_is_a_clear_error(arguments, message):
    with pytest.raises(ConfigError) as error:
        engine().synthesize(TEXT, **arguments)
    assert message in str(error.value)


def test_unloadable_library_or_data_is_a_clear_error(tmp_path):
    with pytest.raises(EspeakError, match="cannot load the eSpeak NG library"):
        Espeak(library=tmp_path / "libespeak-ng.so", data=find_library()[1])
    with pytest.raises(EspeakError, match="not an eSpeak NG data folder"):
        Espeak(library=find_library()[0], data=tmp_path)
