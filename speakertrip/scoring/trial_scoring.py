"""Scoring a trial list from files: what ``speakertrip score`` runs.

Trials against an embedding store (enrolment ids mapped to several files when a map is given), optionally
normalised with a cohort and calibrated to LLRs; trials whose keys are missing can be dropped and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from speakertrip.data.embedding_store import load_store
from speakertrip.data.trials import Trials, read_trials
from speakertrip.errors import ConfigError, FormatError
from speakertrip.scoring.calibration import Calibration
from speakertrip.scoring.cohort import load_cohort
from speakertrip.scoring.cosine import cosine_scores, find_missing, trial_embeddings
from speakertrip.scoring.enrolment import read_enrolment_map, with_enrolment_models
from speakertrip.scoring.norm import normalize_trial_scores

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ScoredTrials:
    """The trials scored (after any dropped), their scores (N,) and how many trials were dropped."""

    trials: Trials
    scores: np.ndarray
    skipped: int = 0


def score_trial_list(trials: PathLike, embeddings: PathLike, enrolment_map: PathLike | None = None,
                     norm: str | None = None, cohort: PathLike | None = None, cohort_speaker_means: bool = False,
                     top_n: int | None = None, calibration: PathLike | None = None, skip_missing: bool = False,
                     device: str = "cpu") -> ScoredTrials:
    """Cosine scores of the trial list ``trials`` with the store ``embeddings``.

    ``norm`` (znorm, tnorm, snorm, asnorm) goes with a ``cohort`` store (one mean per speaker with
    ``cohort_speaker_means``; AS-norm keeps the ``top_n`` highest cohort scores of each side);
    ``calibration`` is a file written by ``speakertrip calibrate`` (the scores become LLRs);
    ``skip_missing`` drops trials whose keys are not in the store instead of failing.

    >>> import tempfile
    >>> from speakertrip.data.embedding_store import EmbeddingStore, save_store
    >>> folder = tempfile.mkdtemp()
    >>> store = save_store(EmbeddingStore(["a", "b"], np.array([[1.0, 0], [1, 1]], np.float32)), f"{folder}/e.npz")
    >>> _ = open(f"{folder}/t.txt", "w").write("a b target\\na c nontarget\\n")
    >>> scored = score_trial_list(f"{folder}/t.txt", store, skip_missing=True)
    >>> scored.scores.round(4), scored.skipped
    (array([0.7071], dtype=float32), 1)
    """
    if bool(norm) != bool(cohort):
        raise ConfigError("--norm and --cohort go together: a normalisation needs a cohort, and a cohort a --norm")
    listed = read_trials(trials)
    calibrate = Calibration.load(calibration) if calibration else None
    store = load_store(embeddings)
    if enrolment_map:
        store = with_enrolment_models(store, read_enrolment_map(enrolment_map), enrolment_map)
    cohort_store = load_cohort(cohort, cohort_speaker_means) if cohort else None
    if cohort_store is not None and cohort_store.dim != store.dim:
        raise FormatError(f"embeddings of different dimension: {store.dim} in {embeddings}, "
                          f"{cohort_store.dim} in the cohort {cohort}")
    skipped = 0
    if skip_missing:
        missing = find_missing(listed, store)
        if missing.all():
            raise FormatError(f"none of the trials has both keys in {embeddings}", trials)
        skipped = int(missing.sum())
        if skipped:
            listed = listed.subset(~missing)
    embedded = trial_embeddings(listed, store)
    scores = cosine_scores(embedded, device)
    if cohort_store is not None:
        scores = normalize_trial_scores(scores, embedded, cohort_store.embeddings, norm, top_n, device)
    if calibrate is not None:
        scores = calibrate(scores)
    return ScoredTrials(listed, scores, skipped)
