"""Audio: reading files and crops (:mod:`.io`), trimming silence (:mod:`.trim`), and the training-time
waveform augmentation (:mod:`.augment`: noise, music, babble, reverberation, speed).

>>> import numpy as np
>>> from speakertrip.audio import prepare_waveform
>>> prepare_waveform(np.ones(32000, np.float32), 32000, 16000).shape
(16000,)
"""

from __future__ import annotations

from speakertrip.audio.io import (
                                  AudioInfo,
                                  PathLike,
                                  Signal,
                                  audio_info,
                                  check_sample_rate,
                                  load_audio,
                                  prepare_waveform,
                                  read_crop,
                                  resample,
                                  to_float,
)
from speakertrip.audio.trim import trim_silence

__all__ = ["AudioInfo", "PathLike", "Signal", "audio_info", "check_sample_rate", "load_audio", "prepare_waveform", "read_crop",
           "resample", "to_float", "trim_silence"]
