"""Tiny corpora for tests and bug reports: speech-like trees in the VoxCeleb and CN-Celeb layouts, bad files.

>>> import tempfile
>>> from speakertrip.testing import make_voxceleb_tree
>>> root = make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=2, sessions=1)
>>> [p.relative_to(root / "wav").parts[0] for p in sorted((root / "wav").rglob("*.wav"))]
['id10001', 'id10001', 'id10002', 'id10002']
>>> (root / "veri_test2.txt").read_text().splitlines()[0].startswith("1 id10001/")
True
"""

from __future__ import annotations

import string
from typing import Any
from pathlib import Path

import numpy as np
import soundfile as sf

VOWEL_FORMANTS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])


def speech_like(speaker: int, duration: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllabic signal whose pitch and formants belong to ``speaker``; float32 (T,).

    The speaker fixes the mean pitch (85–255 Hz), a vocal-tract length factor that scales the
    formants, and the spectral tilt; ``seed`` varies the pitch contour, vowels, syllable rhythm
    and noise of one utterance, so that utterances of one speaker differ but stay alike.
    """
    voice = np.random.default_rng(10_000 + speaker)
    f0_mean, tract, tilt = voice.uniform(85, 255), voice.uniform(0.8, 1.25), voice.uniform(0.6, 1.4)
    rng = np.random.default_rng([speaker, seed])
    count = max(1, int(round(duration * sample_rate)))
    t = np.arange(count) / sample_rate
    f0 = f0_mean * (1 + rng.uniform(-0.1, 0.1) * t / max(duration, 1e-3) + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    syllable_rate = rng.uniform(3.0, 5.0)
    syllable = np.floor(t * syllable_rate).astype(int)
    vowels = VOWEL_FORMANTS[rng.integers(0, len(VOWEL_FORMANTS), syllable.max() + 1)][syllable] / tract
    signal = np.zeros(count)
    for harmonic in range(1, int(sample_rate / 2 / f0.max())):
        frequency = harmonic * f0
        gain = sum(1.0 / (1.0 + ((frequency - vowels[:, i]) / (60.0 + 40 * i)) ** 2) for i in range(3))
        signal += gain * harmonic ** -tilt * np.sin(harmonic * phase)
    envelope = np.clip(np.sin(np.pi * (t * syllable_rate % 1.0)), 0, None) ** 0.5
    signal = signal * envelope + 0.01 * rng.standard_normal(count)
    return (0.3 * signal / np.abs(signal).max()).astype(np.float32)


def _video_id(rng: np.random.Generator) -> str:
    alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
    return "".join(rng.choice(alphabet, 11))


def make_voxceleb_tree(root: str | Path, num_speakers: int = 4, sessions: int = 2, utterances_per_session: int = 2,
                       duration: tuple[float, float] = (1.0, 2.0), sample_rate: int = 16000, seed: int = 0,
                       trial_list: bool = True) -> Path:
    """Write ``<root>/wav/idNNNNN/<video>/<utt>.wav`` and, if asked, ``<root>/veri_test2.txt``.

    Speakers are ``id10001``, ``id10002``, ...; each has ``sessions`` videos of
    ``utterances_per_session`` 16-bit wav files with durations drawn from ``duration`` seconds.
    The trial list (VoxCeleb format, ``label enrol test``, keys relative to ``wav/``) pairs every
    two utterances of the last half of the speakers (at least two), as Vox1-O holds out test
    speakers. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    keys: dict[str, list[str]] = {}
    for number in range(num_speakers):
        speaker = f"id{10001 + number}"
        for _ in range(sessions):
            video = _video_id(rng)
            for utterance in range(1, utterances_per_session + 1):
                key = f"{speaker}/{video}/{utterance:05d}.wav"
                path = root / "wav" / key
                path.parent.mkdir(parents=True, exist_ok=True)
                signal = speech_like(number + 1000 * seed, rng.uniform(*duration), sample_rate, int(rng.integers(1 << 31)))
                sf.write(path, signal, sample_rate, subtype="PCM_16")
                keys.setdefault(speaker, []).append(key)
    if trial_list and num_speakers >= 2:
        held_out = [key for speaker in sorted(keys)[-max(2, num_speakers // 2):] for key in keys[speaker]]
        lines = [f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}"
                 for i, a in enumerate(held_out) for b in held_out[i + 1:]]
        (root / "veri_test2.txt").write_text("\n".join(lines) + "\n")
    return root


def _speaker_flacs(folder: Path, speaker: int, names: list[str], duration: tuple[float, float], sample_rate: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Write ``folder/<name>.flac`` of ``speaker`` for each name; returns the signals."""
    folder.mkdir(parents=True, exist_ok=True)
    signals = [speech_like(speaker, rng.uniform(*duration), sample_rate, int(rng.integers(1 << 31))) for _ in names]
    for name, signal in zip(names, signals):
        sf.write(folder / f"{name}.flac", signal, sample_rate, subtype="PCM_16")
    return signals


def make_cnceleb_tree(root: str | Path, num_speakers: int = 6, eval_speakers: int = 2, genres: tuple[str, ...] =
                      ("interview", "singing"), utterances_per_genre: int = 2, enroll_utterances: int = 2,
                      duration: tuple[float, float] = (1.0, 2.0), sample_rate: int = 16000, seed: int = 0,
                      enroll_map: bool = True) -> Path:
    """Write a CN-Celeb1-shaped tree (as released on OpenSLR 82) of FLAC files; returns ``root``.

    Speakers ``id00000``, ``id00001``, ... each get ``data/<spk>/<genre>-01-<nnn>.flac``; the first
    ``num_speakers - eval_speakers`` are listed in ``dev/dev.lst``. Each evaluation speaker's first
    ``enroll_utterances`` files are concatenated into ``eval/enroll/<spk>-enroll.flac`` (listed in
    ``enroll.lst`` and, with ``enroll_map``, in ``enroll.map``); its other files are copied to
    ``eval/test/<spk>-<file>.flac`` (``test.lst``); ``trials.lst`` pairs every enrolment with every
    test file (``<spk>-enroll test/<file> 1|0``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"{genre}-01-{n:03d}" for genre in genres for n in range(1, utterances_per_genre + 1)]
    if not 0 < enroll_utterances < len(names):
        raise ValueError(f"enroll_utterances must leave test files: 0 < {enroll_utterances} < {len(names)}")
    speakers = [f"id{number:05d}" for number in range(num_speakers)]
    lists = root / "eval" / "lists"
    for folder in (root / "dev", root / "eval" / "enroll", root / "eval" / "test", lists):
        folder.mkdir(parents=True, exist_ok=True)
    (root / "dev" / "dev.lst").write_text("".join(f"{spk}\n" for spk in speakers[:num_speakers - eval_speakers]))
    enroll: list[str] = []
    tests: list[tuple[str, str]] = []
    mapped: list[str] = []
    for number, speaker in enumerate(speakers):
        signals = _speaker_flacs(root / "data" / speaker, 2000 + number + 1000 * seed, names, duration,
                                 sample_rate, rng)
        if number < num_speakers - eval_speakers:
            continue
        sf.write(root / "eval" / "enroll" / f"{speaker}-enroll.flac", np.concatenate(signals[:enroll_utterances]),
                 sample_rate, subtype="PCM_16")
        enroll.append(speaker)
        mapped.append(f"{speaker}-enroll " + " ".join(f"{speaker}/{name}.flac" for name in names[:enroll_utterances]))
        for name, signal in zip(names[enroll_utterances:], signals[enroll_utterances:]):
            sf.write(root / "eval" / "test" / f"{speaker}-{name}.flac", signal, sample_rate, subtype="PCM_16")
            tests.append((speaker, f"test/{speaker}-{name}.flac"))
    (lists / "enroll.lst").write_text("".join(f"{spk}-enroll enroll/{spk}-enroll.flac\n" for spk in enroll))
    (lists / "test.lst").write_text("".join(f"{test}\n" for _, test in tests))
    (lists / "trials.lst").write_text("".join(f"{spk}-enroll {test} {int(spk == owner)}\n"
                                              for spk in enroll for owner, test in tests))
    if enroll_map:
        (lists / "enroll.map").write_text("".join(f"{line}\n" for line in mapped))
    return root


def make_cnceleb2_tree(root: str | Path, num_speakers: int = 3, utterances: int = 4,
                       duration: tuple[float, float] = (1.0, 2.0), sample_rate: int = 16000, seed: int = 0) -> Path:
    """Write a CN-Celeb2-shaped tree: ``data/id1NNNN/<genre>-01-<nnn>.flac`` and ``spk.lst``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed + 1)
    speakers = [f"id{10000 + number:05d}" for number in range(num_speakers)]
    for number, speaker in enumerate(speakers):
        _speaker_flacs(root / "data" / speaker, 3000 + number + 1000 * seed,
                       [f"vlog-01-{n:03d}" for n in range(1, utterances + 1)], duration, sample_rate, rng)
    (root / "spk.lst").write_text("".join(f"{speaker}\n" for speaker in speakers))
    return root


def write_bad_audio(directory: str | Path, sample_rate: int = 16000) -> dict[str, Path]:
    """Write one file of each kind of bad input that readers must reject; returns kind → path.

    Kinds: ``missing`` (not written), ``empty`` (0 bytes), ``no_frames`` (a wav header, no
    samples), ``not_audio`` (text), ``corrupt`` (a RIFF header followed by garbage), ``silent``
    (all zeros), ``nan`` (float wav holding NaN), ``short`` (0.05 s of speech).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind: directory / f"{kind}.wav" for kind in
             ("missing", "empty", "no_frames", "not_audio", "corrupt", "silent", "nan", "short")}
    paths["empty"].write_bytes(b"")
    sf.write(paths["no_frames"], np.zeros(0, np.float32), sample_rate, subtype="PCM_16")
    paths["not_audio"].write_text("utt_id spk_id\nthis is not audio\n")
    paths["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(7, 200)))
    sf.write(paths["silent"], np.zeros(sample_rate // 2, np.float32), sample_rate, subtype="PCM_16")
    nan_signal = speech_like(0, 0.5, sample_rate)
    nan_signal[100] = np.nan
    sf.write(paths["nan"], nan_signal, sample_rate, subtype="FLOAT")
    sf.write(paths["short"], speech_like(0, 0.05, sample_rate), sample_rate, subtype="PCM_16")
    return paths


def make_musan_tree(root: str | Path, files: int = 2, duration: float = 1.0, sample_rate: int = 16000,
                    seed: int = 0) -> Path:
    """Write a MUSAN-layout folder: ``noise/free-sound``, ``music/fma`` and ``speech/librivox`` wavs."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    count = int(duration * sample_rate)
    for folder, make in (("noise/free-sound", lambda: rng.standard_normal(count) * 0.1),
                         ("music/fma", lambda: 0.2 * np.sin(2 * np.pi * rng.uniform(200, 800) * np.arange(count) / sample_rate)),
                         ("speech/librivox", lambda: speech_like(int(rng.integers(50, 99)), duration, sample_rate))):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for number in range(files):
            sf.write(root / folder / f"{folder.split('/')[0]}-{number:04d}.wav", make().astype(np.float32), sample_rate,
                     subtype="PCM_16")
    return root


def make_rir_tree(root: str | Path, rooms: int = 2, sample_rate: int = 16000, seed: int = 0) -> Path:
    """Write an RIRS_NOISES-layout folder of decaying-noise impulse responses (and one isotropic noise)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for number in range(rooms):
        folder = root / "simulated_rirs" / "smallroom" / f"Room{number + 1:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        length = int(0.1 * sample_rate)
        rir = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.02 * sample_rate))
        rir[0] = 1.0
        sf.write(folder / f"Room{number + 1:03d}-00001.wav", (0.5 * rir / np.abs(rir).max()).astype(np.float32),
                 sample_rate, subtype="FLOAT")
    real = root / "real_rirs_isotropic_noises"
    real.mkdir(parents=True, exist_ok=True)
    sf.write(real / "RVB2014_type1_noise_largeroom1_1.wav", rng.standard_normal(sample_rate).astype(np.float32) * 0.1,
             sample_rate, subtype="FLOAT")
    return root


def randomise_batch_norms(module: Any, seed: int = 0) -> Any:
    """Give every BatchNorm1d of ``module`` statistics and affine weights as a trained model has them (some
    scales negative); returns ``module`` in eval mode. An untrained model's (0, 1) statistics hide bugs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, torch.nn.BatchNorm1d):
                size = norm.num_features
                norm.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                norm.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
                if norm.affine:
                    norm.weight.copy_(1.0 + 0.7 * torch.randn(size, generator=generator))
                    norm.bias.copy_(0.1 * torch.randn(size, generator=generator))
    return module.eval()


def tiny_model(encoder: str = "ecapa", options: dict | None = None, features: Any = None, seed: int = 0,
               threshold: float | None = None) -> Any:
    """A small untrained :class:`~speakertrip.models.EmbeddingModel` (32 channels, 24 mels unless ``options`` /
    ``features`` say otherwise) with randomised BatchNorm statistics, in eval mode; ``threshold`` is recorded
    as its dev EER threshold.

    >>> tiny_model().embedding_dim
    192
    """
    import torch

    from speakertrip.features import FeatureConfig
    from speakertrip.models import EmbeddingModel

    torch.manual_seed(seed)
    evaluation = {} if threshold is None else {"eer_threshold": float(threshold)}
    model = EmbeddingModel(features or FeatureConfig(n_mels=24), encoder, options or {"channels": 32}, evaluation)
    return randomise_batch_norms(model, seed)


def tiny_model_artifact(directory: str | Path | None = None, encoder: str = "ecapa", threshold: float | None = 0.5,
                        seed: int = 0) -> Path:
    """Write a small untrained model artifact (:func:`tiny_model`) for examples and tests; returns its folder.

    ``threshold`` is recorded as the dev EER threshold (None records none). ``directory`` defaults
    to a new temporary folder.

    >>> import speakertrip as st
    >>> st.load_model(tiny_model_artifact()).encoder_name
    'ecapa'
    """
    import tempfile

    model = tiny_model(encoder, seed=seed, threshold=threshold)
    return model.save(Path(directory) if directory is not None else Path(tempfile.mkdtemp()) / "model")
