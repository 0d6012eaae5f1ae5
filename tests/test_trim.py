"""The one silence trimmer: centred frames are librosa's; uncentred frames with a pad (the synthetic corpus)."""

import numpy as np

from speakertrip.audio import trim_silence
from speakertrip.testing import speech_like


def test_centred_frames_cut_to_the_speech():
    rng = np.random.default_rng(2)
    speech = speech_like(3, 0.7)
    signal = np.concatenate([1e-4 * rng.standard_normal(5000), speech, 1e-4 * rng.standard_normal(7000)])
    trimmed = trim_silence(signal.astype(np.float32), 16000, top_db=40.0)
    assert abs(len(trimmed) - len(speech)) <= 2 * 160  # within a hop at each end
    padded = trim_silence(signal.astype(np.float32), 16000, top_db=40.0, pad_seconds=0.1)
    assert len(padded) == len(trimmed) + 2 * 1600
    assert trim_silence(np.full(1000, 0.1, np.float32), 16000).size == 1000  # uniform loudness: nothing cut


def test_uncentred_frames_keep_the_loud_part_and_a_pad():
    rate = 16000
    tone = np.sin(2 * np.pi * 200 * np.arange(rate) / rate)
    padded = np.concatenate([np.zeros(rate), tone, 1e-4 * np.ones(2 * rate)])
    trimmed = trim_silence(padded, rate, frame_seconds=0.01, pad_seconds=0.1, centered=False)
    assert len(trimmed) == int(1.2 * rate)  # 10 ms frames start on the tone's first and last samples
    np.testing.assert_array_equal(trimmed, padded[int(0.9 * rate): int(2.1 * rate)])


def test_uncentred_frames_against_a_loop():
    rng = np.random.default_rng(0)
    signal = np.concatenate([1e-3 * rng.standard_normal(3000), speech_like(1, 1.0), 1e-3 * rng.standard_normal(5000)])
    frame, hop = 400, 160
    powers = [np.mean(signal[i: i + frame].astype(np.float64) ** 2) for i in range(0, len(signal) - frame + 1, hop)]
    loud = [i for i, p in enumerate(powers) if 10 * np.log10(p / max(powers)) > -30]
    trimmed = trim_silence(signal, 16000, top_db=30, centered=False)
    np.testing.assert_array_equal(trimmed, signal[loud[0] * hop: loud[-1] * hop + frame])


def test_silence_and_short_signals_come_back_whole():
    assert trim_silence(np.zeros(16000, np.float32), 16000).size == 16000
    assert trim_silence(np.zeros(16000), 16000, centered=False).size == 16000
    assert trim_silence(np.ones(100), 16000, centered=False).size == 100  # shorter than one frame
