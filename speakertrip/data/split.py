"""Speaker splits and trial lists for small labelled sets (a few tens of speakers of your own).

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
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from speakertrip.atomic import atomic_write
from speakertrip.data.manifest import Utterance
from speakertrip.errors import ConfigError

MIN_SPEAKERS = 2  # on each side of a split: a trial list needs two speakers, a triplet two as well


def hold_out_speakers(utterances: Sequence[Utterance], dev: float, seed: int = 0
                      ) -> tuple[list[Utterance], list[Utterance]]:
    """Split by speaker: ``dev`` speakers (a count, or a fraction when below 1) drawn at random for dev.

    Returns ``(train, dev)`` utterance lists; each side keeps at least two speakers.
    """
    speakers = sorted({utterance.spk_id for utterance in utterances})
    count = int(round(dev * len(speakers))) if dev < 1 else int(dev)
    count = max(MIN_SPEAKERS, count)
    if len(speakers) - count < MIN_SPEAKERS:
        raise ConfigError(f"cannot hold out {count} dev speakers of {len(speakers)}: both the training and the "
                          f"dev set need at least {MIN_SPEAKERS} speakers (give a separate dev set, or more speakers)")
    chosen = set(np.random.default_rng(seed).permutation(speakers)[:count].tolist())
    return ([u for u in utterances if u.spk_id not in chosen], [u for u in utterances if u.spk_id in chosen])


def make_trials(utterances: Sequence[Utterance], max_trials: int = 20000, seed: int = 0
                ) -> list[tuple[int, str, str]]:
    """``(label, enrol utt_id, test utt_id)`` over pairs of ``utterances``: every target pair and as many
    non-target pairs (a random sample when there are more), together at most ``max_trials``."""
    counts = Counter(utterance.spk_id for utterance in utterances)
    if len(counts) < MIN_SPEAKERS or max(counts.values()) < 2:
        raise ConfigError(f"a trial list needs at least {MIN_SPEAKERS} speakers and a speaker with two "
                          f"utterances; got {len(counts)} speaker(s) with at most {max(counts.values(), default=0)}")
    ordered = sorted(utterances, key=lambda utterance: utterance.utt_id)
    pairs = list(combinations(range(len(ordered)), 2))
    same = [ordered[a].spk_id == ordered[b].spk_id for a, b in pairs]
    targets = [pair for pair, is_target in zip(pairs, same) if is_target]
    others = [pair for pair, is_target in zip(pairs, same) if not is_target]
    rng = np.random.default_rng(seed)
    half = max_trials // 2
    if len(targets) > half:
        targets = [targets[i] for i in sorted(rng.choice(len(targets), half, replace=False))]
    room = max_trials - len(targets)
    if len(others) > room:
        others = [others[i] for i in sorted(rng.choice(len(others), room, replace=False))]
    chosen = sorted([(1, pair) for pair in targets] + [(0, pair) for pair in others], key=lambda item: item[1])
    return [(label, ordered[a].utt_id, ordered[b].utt_id) for label, (a, b) in chosen]


def write_trials(trials: Sequence[tuple[int, str, str]], path: str | Path) -> Path:
    """Write ``label enrol test`` lines (the VoxCeleb format ``speakertrip`` reads everywhere); returns the path."""
    with atomic_write(path, "w") as handle:
        handle.write("".join(f"{label} {enrol} {test}\n" for label, enrol, test in trials))
    return Path(path)
