"""Speaker splits and generated trial lists: one speaker hold-out and one trial generator for every caller
(the synthetic corpus, ``prepare voxceleb --test-speakers``, fine-tuning's dev split, the demo).

>>> from speakertrip.data.manifest import Utterance
>>> utts = [Utterance(f"s{s}/{u}.wav", f"s{s}", f"{s}{u}.wav", 2.0, 16000, 32000) for s in range(5) for u in range(2)]
>>> train, dev = hold_out_speakers(utts, 0.4, seed=0)
>>> len({u.spk_id for u in train}), len({u.spk_id for u in dev})
(3, 2)
>>> make_trials(dev, max_trials=10)[:1]
[(1, 's2/0.wav', 's2/1.wav')]
"""

from __future__ import annotations

from collections import Counter
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Collection, Iterable, Mapping, Sequence

import numpy as np

from speakertrip.atomic import atomic_write
from speakertrip.data.manifest import Utterance
from speakertrip.errors import ConfigError

MIN_SPEAKERS = 2  # on each side of a split: a trial list needs two speakers, a triplet two as well


def split_by_speakers(utterances: Iterable[Utterance], speakers: Collection[str]) -> tuple[list[Utterance],
                                                                                           list[Utterance]]:
    """``(others, theirs)``: the utterances of speakers not in ``speakers`` and of those in it, in order."""
    others, theirs = [], []
    for utterance in utterances:
        (theirs if utterance.spk_id in speakers else others).append(utterance)
    return others, theirs


def choose_speakers(speakers: Iterable[str], count: int, seed: int | None = 0) -> set[str]:
    """``count`` of the distinct ``speakers`` (all of them when fewer): drawn at random with ``seed``, or the
    last ``count`` by id when ``seed`` is None (as Vox1-O holds out id10270-id10309)."""
    ordered = sorted(set(speakers))
    if seed is None:
        return set(ordered[max(0, len(ordered) - count):])
    return set(np.random.default_rng(seed).permutation(ordered)[:count].tolist())


def hold_out_speakers(utterances: Sequence[Utterance], count: float, seed: int | None = 0,
                      option: str = "--dev-speakers") -> tuple[list[Utterance], list[Utterance]]:
    """Split by speaker: ``count`` speakers held out (:func:`choose_speakers`; a fraction of them when below 1,
    then at least two). Returns ``(others, held_out)`` utterance lists; each side keeps at least two speakers,
    else a ConfigError names ``option``."""
    speakers = sorted({utterance.spk_id for utterance in utterances})
    wanted = max(MIN_SPEAKERS, int(round(count * len(speakers)))) if count < 1 else int(count)
    if not MIN_SPEAKERS <= wanted <= len(speakers) - MIN_SPEAKERS:
        room = (f"{MIN_SPEAKERS} .. {len(speakers) - MIN_SPEAKERS}" if len(speakers) >= 2 * MIN_SPEAKERS
                else f"none (a split takes {2 * MIN_SPEAKERS} speakers)")
        raise ConfigError(f"{option} {count:g}: cannot hold out {wanted} of {len(speakers)} speakers; both sides of "
                          f"a split need at least {MIN_SPEAKERS} speakers, so {room} can be held out "
                          "(give a separate held-out set, or more speakers)")
    return split_by_speakers(utterances, choose_speakers(speakers, wanted, seed))


def _draw_pairs(first: np.ndarray, stop: np.ndarray, limit: int | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i`` pairs with every ``j`` in ``[first[i], stop[i])``: all those pairs, or ``limit`` of them drawn
    at random without replacement (never listed: a flat index is mapped back to its pair). ``(i, j)`` arrays."""
    counts = np.maximum(stop - first, 0)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    flat = np.arange(total) if limit is None or total <= limit else np.sort(rng.choice(total, limit, replace=False))
    rows = np.searchsorted(ends, flat, side="right")
    return rows, first[rows] + flat - (ends[rows] - counts[rows])


def make_trials(utterances: Sequence[Utterance] | Mapping[str, str], max_trials: int | None = 20000,
                seed: int = 0, balanced: bool = False, cross_session: bool = False) -> list[tuple[int, str, str]]:
    """``(label, enrol key, test key)`` trials over distinct pairs of ``utterances`` (manifest rows, or a mapping
    key → speaker): no pair is listed twice, in either order, by construction.

    Targets are every pair of one speaker's utterances (with ``cross_session``, only pairs from different
    sessions, a session being the key's folder ``<spk>/<session>/``; all pairs of a one-session speaker),
    a random ``max_trials // 2`` of them when there are more. Non-targets are pairs of different speakers
    drawn at random: as many as the targets with ``balanced``, else as many as fill ``max_trials`` (every one
    without a limit). Keys are ordered by speaker, session and key; a pair's earlier key enrols, and the
    trials follow that order. The same ``seed`` gives the same list.
    """
    rows = utterances.items() if isinstance(utterances, Mapping) else ((u.utt_id, u.spk_id) for u in utterances)
    ordered = sorted((speaker, key.rpartition("/")[0], key) for key, speaker in rows)
    counts = Counter(speaker for speaker, _, _ in ordered)
    if len(counts) < MIN_SPEAKERS or max(counts.values()) < 2:
        raise ConfigError(f"a trial list needs at least {MIN_SPEAKERS} speakers and a speaker with two "
                          f"utterances; got {len(counts)} speaker(s) with at most {max(counts.values(), default=0)}")
    speaker_end, partners = np.empty(len(ordered), np.int64), np.empty(len(ordered), np.int64)
    start = 0  # rows [start, end) are one speaker's; a row pairs with the later rows of partners[row] .. end
    for _, group in groupby(ordered, key=itemgetter(0)):
        folders = [folder for _, folder, _ in group]
        end = start + len(folders)
        sessions = [len(list(session)) for _, session in groupby(folders)]
        speaker_end[start:end] = end
        partners[start:end] = (start + np.repeat(np.cumsum(sessions), sessions) if cross_session and len(sessions) > 1
                               else np.arange(start + 1, end + 1))
        start = end
    rng = np.random.default_rng(seed)
    target_rows = _draw_pairs(partners, speaker_end, None if max_trials is None else max_trials // 2, rng)
    chosen = len(target_rows[0])
    room = chosen if balanced else None if max_trials is None else max_trials - chosen
    other_rows = _draw_pairs(speaker_end, np.full(len(ordered), len(ordered)), room, rng)
    first, second = np.concatenate([target_rows[0], other_rows[0]]), np.concatenate([target_rows[1], other_rows[1]])
    labels = np.concatenate([np.ones(chosen, int), np.zeros(len(other_rows[0]), int)])
    keys = [key for _, _, key in ordered]
    return [(int(labels[n]), keys[first[n]], keys[second[n]]) for n in np.lexsort((second, first))]


def write_trials(trials: Sequence[tuple[int, str, str]], path: str | Path) -> Path:
    """Write ``label enrol test`` lines (the VoxCeleb format ``speakertrip`` reads everywhere); returns the path."""
    with atomic_write(path, "w") as handle:
        handle.write("".join(f"{label} {enrol} {test}\n" for label, enrol, test in trials))
    return Path(path)
