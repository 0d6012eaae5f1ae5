"""The one silence trimmer: centred frames agree with librosa; uncentred frames with a pad (the synthetic corpus)."""

import librosa
import numpy as np

from speakertrip.audio import trim_silence
from speakertrip.testing import speech_like


def test_centred_frames_match_librosa():
    rng = np.random.default_rng(2)
    signal = np.concatenate([1e-4 * rng.standard_normal(5000), speech_like(3, 0.7), 1e-4 * rng.standard_normal(7000)])
    for top_db in (20.0, 40.0, 60.0):
        _, (start, end) = librosa.effects.trim(signal.astype(np.float32), top_db=top_db, frame_length=400,
                                               hop_length=160)
        trimmed = trim_silence(signal.astype(np.float32), 16000, top_db=top_db)
        assert (len(trimmed), trimmed[0]) == (end - start, np.float32(signal[start]))
    assert trim_silence(np.full(1000, 0.1, np.float32), 16000).size == 1000  # uniform loudness: nothing cut


def test_uncentred_frames_keep_the_loud_part_and_a_pad():
    rate = 16000
    tone = np.sin(2 * np.pi * 200 * np.arange(rate) / rate)
    padded = np.concatenate([np.zeros(rate), tone, 1e-4 * np.ones(2 * rate)])
    trimmed = trim_silence(padded, rate, frame_seconds=0.01, pad_seconds=0.1, centered=False)
    assert abs(len(trimmed) - 1.2 * rate) <= rate // 100
    np.testing.assert_array_equal(trimmed, padded[int(0.9 * rate): int(0.9 * rate) + len(trimmed)])


def test_silence_and_short_signals_come_back_whole():
    assert trim_silence(np.zeros(16000), 16000).size == 16000
    assert trim_silence(np.zeros(16000), 16000, centered=False).size == 16000
    assert trim_silence(np.ones(100), 16000, centered=False).size == 100  # shorter than one frame
