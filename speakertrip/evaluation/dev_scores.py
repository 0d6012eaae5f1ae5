"""Dev scores: the cosine scores of a labelled dev trial list, with the seconds of audio and the speaker of each side.

Trials are read and checked once, here; everything downstream (metrics, calibration, the operating-point
summary) works on the checked :class:`DevScores`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from torch import nn

from speakertrip.data.embedding_store import EmbeddingStore, load_store
from speakertrip.data.trials import Trials, read_trials
from speakertrip.errors import ConfigError, FormatError, KeyNotFoundError
from speakertrip.data.items import read_items
from speakertrip.data.split import make_trials, write_trials
from speakertrip.extraction.corpus import embed_across_ranks
from speakertrip.models.batched import item_duration
from speakertrip.scoring import OperatingPoints, ScoreGroups, check_trials, score_trials, voxceleb_speaker

MAX_GENERATED_TRIALS = 200_000


@dataclass(frozen=True)
class DevScores:
    """Cosine scores (N,) of a labelled dev trial list, labels (N,) (bool after the check, which runs on
    construction), the seconds of audio of each side (N,) (None when unknown: scores from a store) and the
    speaker of each side (N,) (None when unknown: see :func:`key_speakers`).

    >>> dev = DevScores(np.array([0.9, 0.2, 0.4]), np.array([1, 0, 1]))
    >>> dev.labels.dtype, dev.points.misses.tolist()
    (dtype('bool'), [0, 0, 1, 2])
    """

    scores: np.ndarray
    labels: np.ndarray
    enroll_seconds: np.ndarray | None = None
    test_seconds: np.ndarray | None = None
    source: str | None = None
    enroll_speakers: np.ndarray | None = None
    test_speakers: np.ndarray | None = None

    def __post_init__(self) -> None:
        scores, labels = check_trials(self.scores, self.labels, self.source)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        for name in ("enroll_speakers", "test_speakers"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=str)
                if value.shape != scores.shape:
                    raise FormatError(f"{name} must name the speaker of each of the {len(scores)} trials, "
                                      f"got shape {value.shape}", self.source)
                object.__setattr__(self, name, value)

    @cached_property
    def points(self) -> OperatingPoints:
        """Every operating point of the dev trials (one sort)."""
        return OperatingPoints.from_groups(ScoreGroups.from_scores(self.scores, self.labels))

    @property
    def has_durations(self) -> bool:
        return self.enroll_seconds is not None and self.test_seconds is not None

    @property
    def has_speakers(self) -> bool:
        return self.enroll_speakers is not None and self.test_speakers is not None


def key_speakers(keys: Iterable[str], known: Mapping[str, str | None] | None = None) -> dict[str, str] | None:
    """The speaker of each key: as ``known`` says (a manifest's ``spk_id``, a folder's first folder), else the
    key's first folder (VoxCeleb keys ``SPEAKER/VIDEO/UTT.wav``); None when some key has no speaker."""
    speakers = {}
    for key in keys:
        speaker = (known or {}).get(key)
        if speaker is None:
            try:
                speaker = voxceleb_speaker(key)
            except FormatError:
                return None
        speakers[key] = speaker
    return speakers


def _with_speakers(scores: np.ndarray, listed: Trials, speakers: dict[str, str] | None,
                   enroll_seconds: np.ndarray | None = None, test_seconds: np.ndarray | None = None) -> DevScores:
    sides = (None, None) if speakers is None else ([speakers[key] for key in listed.enroll],
                                                    [speakers[key] for key in listed.test])
    return DevScores(scores, listed.labels, enroll_seconds, test_seconds, listed.source, *sides)


def labelled_trials(trials: str | Path | Trials) -> Trials:
    """A labelled trial list (read from a path when given one); an unlabelled list is an error naming it."""
    listed = trials if isinstance(trials, Trials) else read_trials(trials)
    if listed.labels is None:
        raise FormatError("validation and calibration need a labelled trial list (target/nontarget)",
                          listed.source)
    return listed


def score_dev_trials(model: nn.Module, items: Mapping[str, Any], trials: str | Path | Trials,
                     device: Any = None, progress: bool = False, rank: int = 0, world_size: int = 1,
                     speakers: Mapping[str, str | None] | None = None) -> DevScores:
    """Embed the items (manifest utterances, paths) named in the labelled ``trials`` and cosine-score them;
    ``items`` maps trial keys to items, ``speakers`` trial keys to speakers (default: a manifest utterance's
    ``spk_id``, else :func:`key_speakers`).

    Under DDP (``world_size`` > 1, every rank calls it) each rank embeds every ``world_size``-th item and
    the embeddings are gathered, so no rank waits out the whole dev set at a barrier.
    """
    listed = labelled_trials(trials)
    keys = sorted(set(listed.enroll) | set(listed.test))
    missing = [key for key in keys if key not in items]
    if missing:
        raise KeyNotFoundError(f"{listed.source}: {len(missing)} trial key(s) are not in the dev data, "
                               f"e.g. {', '.join(missing[:3])}")
    embeddings = embed_across_ranks(model, [items[key] for key in keys], rank, world_size, device=device,
                                    progress=progress)
    seconds = {key: item_duration(items[key], None) for key in keys}
    if speakers is None:
        speakers = {key: getattr(items[key], "spk_id", None) for key in keys}
    return _with_speakers(score_trials(listed, EmbeddingStore(keys, embeddings)), listed,
                          key_speakers(keys, speakers), np.array([seconds[key] for key in listed.enroll]),
                          np.array([seconds[key] for key in listed.test]))


def dev_scores(model: nn.Module, trials: str | Path, data: str | Path | None = None,
               embeddings: str | Path | None = None, progress: bool = False) -> DevScores:
    """Dev scores of ``trials``: embedded by ``model`` from ``data`` (an audio folder, keys relative paths,
    or a manifest, keys ``utt_id`` s; durations known) or looked up in the store ``embeddings`` (durations
    unknown)."""
    if (data is None) == (embeddings is None):
        raise ConfigError("give exactly one of --data (audio folder or manifest) and --embeddings (a store)")
    listed = labelled_trials(trials)
    if embeddings is not None:
        return _with_speakers(score_trials(listed, load_store(embeddings)), listed,
                              key_speakers(set(listed.enroll) | set(listed.test)))
    found = read_items(data)
    return score_dev_trials(model, dict(zip(found.keys, found.items)), listed, progress=progress,
                            speakers=dict(zip(found.keys, found.speakers)))


def generate_trials(data: str | Path, path: str | Path, max_trials: int | None = MAX_GENERATED_TRIALS,
                    seed: int = 0) -> Path:
    """Write to ``path`` a labelled trial list over the utterances of the labelled folder or manifest ``data``,
    as fine-tuning makes its dev list (:func:`speakertrip.data.split.make_trials`), targets across sessions:
    every pair (or a random ``max_trials`` of them, up to half targets). Returns ``path``."""
    return write_trials(make_trials(read_items(data).utterances(), max_trials, seed, cross_session=True), path)
