"""The Verifier: enrol speakers, verify a claimed identity, identify an unknown voice.

Scores are cosines between an utterance embedding and a speaker's enrolment (by default their
centroid, the normalised mean of their enrolment embeddings; see ``scoring=``), never rescaled.
The decision is ``score >= threshold`` at an operating point chosen by one of:

- ``threshold=``: a cosine threshold;
- ``far=`` / ``frr=``: the threshold that falsely accepts (rejects) that fraction of the dev
  non-targets (targets) summarised in the model artifact (``speakertrip calibrate --model``);
- nothing: the dev EER threshold recorded in the artifact;

and with ``adapt=True`` the dev operating point is moved into the domain of the enrolled speakers.

When the artifact records a calibration, every result also carries the log-likelihood ratio of its
cosine (duration-aware when the artifact has that calibration; the enrolment store keeps no
durations, so the test side is taken as the shorter one). The calibration is fitted on
single-utterance trials; the README measures how well it carries over to several enrolment utterances. With ``norm="asnorm"`` scores are
adaptive-s-normalised against a cohort kept in the same store; such scores live on another scale,
so an explicit threshold is then required. An example runs in :mod:`speakertrip.verification`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speakertrip.errors import ConfigError
from speakertrip.evaluation.confidence import OperatingPointWarning
from speakertrip.evaluation.dev_calibration import DevCalibration
from speakertrip.evaluation.score_summary import check_rate
from speakertrip.models import embed_many, load_model
from speakertrip.models.backends import resolve_backend
from speakertrip.models.batched import item_duration
from speakertrip.scoring.enrolment import check_scoring, speaker_scores
from speakertrip.scoring.norm import apply_norm, cohort_stats, resolve_top_n
from speakertrip.verification.adaptation import MIN_ABOVE, ScoreAdaptation, impostor_scores
from speakertrip.verification.enrolment_store import EnrolmentStore, StoreNotFoundError, check_name
from speakertrip.verification.stores import open_store

NORMS = (None, "asnorm")
DEFAULT_SCORING = "centroid"


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of one verification: ``accepted`` is ``score >= threshold``; ``cosine`` is the raw cosine;
    ``llr`` its calibrated log-likelihood ratio (natural log), None when the artifact has no calibration."""

    name: str
    score: float
    accepted: bool
    threshold: float
    cosine: float
    llr: float | None = None


@dataclass(frozen=True)
class Match:
    """One candidate of :meth:`Verifier.identify`; ``llr`` as in :class:`VerificationResult`."""

    name: str
    score: float
    llr: float | None = None


def _as_list(utterances: Any) -> list:
    if isinstance(utterances, (str, Path)) or hasattr(utterances, "shape"):
        return [utterances]
    return list(utterances)


def _operating_point(model: Any, calibration: DevCalibration | None, threshold: Any, far: Any, frr: Any,
                     norm: str | None, adapt: bool = False) -> tuple[float, str]:
    """The decision threshold and how it was chosen (``"threshold"``, ``"far=0.01"``, ``"frr=0.05"``, ``"eer"``)."""
    given = [name for name, value in (("threshold", threshold), ("far", far), ("frr", frr)) if value is not None]
    if len(given) > 1:
        raise ConfigError(f"give at most one of threshold=, far= and frr= (got {' and '.join(given)})")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
                or not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
        return float(threshold), "threshold"
    if norm is not None:
        raise ConfigError(f"norm={norm!r} changes the score scale, so the model's cosine operating points do not "
                          "apply: pass threshold= calibrated on normalised scores")
    if far is not None or frr is not None:
        name, rate = ("far", check_rate("far", far)) if far is not None else ("frr", check_rate("frr", frr))
        if calibration is None:
            raise ConfigError(f"{name}= needs the dev score summary of a calibrated model, and this artifact has "
                              "none: calibrate it with `speakertrip calibrate --model M --trials T --data DIR "
                              "--out M2`, or pass threshold=")
        chosen = calibration.scores.threshold_for_far(rate) if name == "far" else \
            calibration.scores.threshold_for_frr(rate)
        doubt = None if adapt else calibration.doubt(name, rate)
        if doubt is not None:
            warnings.warn(doubt, OperatingPointWarning, stacklevel=3)
        return chosen, f"{name}={rate:g}"
    if model.threshold is None:
        raise ConfigError("the model artifact records no calibrated threshold (train with a dev trial list "
                          "to get one); pass threshold=, e.g. the EER threshold of `speakertrip metrics`")
    return float(model.threshold), "eer"


class Verifier:
    """Speaker verification and identification against an enrolment store.

    Parameters
    ----------
    model : an ``EmbeddingModel``, or the directory of a model artifact
    store : an SQLite file path or a ``postgresql://`` URL (PostgreSQL + pgvector; see
        :mod:`speakertrip.verification.postgres_store`), created by the first enrolment (other calls
        on a missing one raise StoreNotFoundError); or an open :class:`EnrolmentStore`
    threshold : accept scores >= this cosine
    far : accept at the threshold with this false-accept rate on the artifact's dev non-targets (0 < far < 1)
    frr : accept at the threshold with this false-reject rate on the artifact's dev targets (0 < frr < 1)
        (at most one of threshold, far, frr; none: the artifact's dev EER threshold)
    norm : None (raw cosine) or ``"asnorm"`` (needs a cohort: :meth:`enroll_cohort`, and a threshold)
    cohort_top_n : AS-norm uses the ``cohort_top_n`` highest cohort scores of each side
    scoring : how a speaker's several enrolment utterances are compared with a test
        (:data:`speakertrip.scoring.enrolment.ENROLMENT_SCORINGS`: centroid, mean, max, top3)
    backend : how utterances are embedded (:mod:`speakertrip.models.backends`: auto, float32, bfloat16, int8,
        onnxruntime, eager); auto is bfloat16 on CPUs that compute it natively, else float32
    adapt : move the dev operating point (far, frr or the EER) into the domain of the store's speakers,
        without labels: the enrolled speakers against each other and the cohort are in-domain impostors
        (:mod:`speakertrip.verification.adaptation`); LLRs follow. Computed when the Verifier is made, from
        what the store holds then.

    An operating point the artifact's dev trials cannot vouch for (too few dev errors at that rate, or a wide
    speaker-bootstrap interval: :mod:`speakertrip.evaluation.confidence`) gives an ``OperatingPointWarning``
    saying what to do.

    >>> import tempfile
    >>> from speakertrip.testing import make_voxceleb_tree, tiny_model_artifact
    >>> root = make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=1, sessions=1, trial_list=False)
    >>> alice = sorted((root / "wav").rglob("*.wav"))
    >>> verifier = Verifier(tiny_model_artifact(), store=root / "speakers.db")  # at the artifact's EER threshold
    >>> verifier.enroll("alice", alice[:1])
    1
    >>> result = verifier.verify("alice", alice[1])
    >>> result.name, result.threshold
    ('alice', 0.5)
    """

    def __init__(self, model: Any, store: str | Path | EnrolmentStore = "speakers.db",
                 threshold: float | None = None, norm: str | None = None, cohort_top_n: int = 300,
                 far: float | None = None, frr: float | None = None, scoring: str = DEFAULT_SCORING,
                 backend: str = "auto", adapt: bool = False):
        if isinstance(model, (str, Path)):
            model = load_model(model)
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; valid: none, asnorm")
        self.scoring = check_scoring(scoring)
        if norm is not None and scoring != "centroid":
            raise ConfigError(f"norm={norm!r} normalises centroid scores; it cannot be combined with scoring={scoring!r}")
        self.calibration = DevCalibration.of_model(model.evaluation, "the model's evaluation")
        self.threshold, self.operating_point = _operating_point(model, self.calibration, threshold, far, frr, norm,
                                                                adapt)
        if cohort_top_n < 1:
            raise ConfigError(f"cohort_top_n must be >= 1, got {cohort_top_n}")
        self.model, self.norm, self.cohort_top_n = model, norm, cohort_top_n
        resolve_backend(model, backend)  # an unknown backend, or one this model cannot use, fails now
        self.backend = backend
        self._location, self._missing = store, None
        try:
            self._store: EnrolmentStore | None = open_store(store, model.identity, model.embedding_dim, create=False)
        except StoreNotFoundError as error:  # enrolment creates it
            self._store, self._missing = None, str(error)
        self.adaptation = self._adapt(far or frr) if adapt else None

    def _adapt(self, rate: float | None) -> ScoreAdaptation:
        """The map of this store's scores onto the dev scale; the threshold moves into the domain."""
        if self.operating_point == "threshold" or self.norm is not None or self.calibration is None:
            raise ConfigError("adapt=True moves the model's dev operating points (far=, frr= or the EER threshold) "
                              "into the domain of the enrolled speakers: it needs a calibrated model (speakertrip "
                              "calibrate --model) and neither threshold= nor norm=")
        impostors = impostor_scores(self.store, self.scoring)
        adaptation = ScoreAdaptation.fit(impostors.scores, self.calibration.scores.nontargets)
        self.threshold = adaptation.to_domain(self.threshold)
        self.operating_point += " adapted"
        if rate is not None and rate * len(impostors.scores) < MIN_ABOVE and self.operating_point.startswith("far"):
            warnings.warn(f"{self.operating_point}: {rate * len(impostors.scores):.3g} of the {len(impostors.scores)} "
                          f"in-domain impostor scores ({impostors.speakers} enrolled speakers, {impostors.cohort} "
                          f"cohort utterances) are expected above it, fewer than {MIN_ABOVE}: its threshold is "
                          "extrapolated; enrol more speakers or add a cohort (Verifier.enroll_cohort)",
                          OperatingPointWarning, stacklevel=3)
        return adaptation

    def close(self) -> None:
        """Close the store this Verifier opened (its write-ahead log folded into the file); a store passed in
        open stays open. A closed Verifier is not used again."""
        if self._store is not None and not isinstance(self._location, EnrolmentStore):
            self._store.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def store(self) -> EnrolmentStore:
        """The enrolment store; StoreNotFoundError while it does not exist (enrolment creates it)."""
        if self._store is None:
            raise StoreNotFoundError(self._missing)
        return self._store

    def _store_to_write(self) -> EnrolmentStore:
        if self._store is None:
            self._store = open_store(self._location, self.model.identity, self.model.embedding_dim)
        return self._store

    @property
    def dev_error_rates(self) -> tuple[float, float] | None:
        """``(far, frr)`` of the decision threshold on the artifact's dev trials, or None without calibration."""
        if self.calibration is None or self.norm is not None:
            return None
        threshold = self._dev_scale(self.threshold)
        return self.calibration.scores.far(threshold), self.calibration.scores.frr(threshold)

    def _dev_scale(self, cosine: float) -> float:
        """A cosine on the scale of the dev trials: mapped when adapted."""
        return cosine if self.adaptation is None else float(self.adaptation.to_dev(np.array([cosine]))[0])

    # ---- enrolment --------------------------------------------------------------------------
    def enroll(self, name: str, utterances: Any, replace: bool = False, sample_rate: int | None = None) -> int:
        """Add the embeddings of ``utterances`` (paths, arrays or tensors) to ``name``; returns its count.

        Enrolling again adds utterances; ``replace=True`` starts the speaker over. Every
        utterance is embedded before anything is written, so a bad file changes nothing.
        """
        name = check_name(name)
        items = _as_list(utterances)
        if not items:
            raise ConfigError(f"no utterances given to enrol {name!r}; pass at least one audio file")
        embeddings = self._embed(items, sample_rate)
        return self._store_to_write().add(name, embeddings, [_source(item, i) for i, item in enumerate(items)],
                                          replace=replace)

    def enroll_cohort(self, utterances: Any, sample_rate: int | None = None) -> int:
        """Replace the score-normalisation cohort (utterances of speakers who are not enrolled)."""
        items = _as_list(utterances)
        if not items:
            raise ConfigError("no cohort utterances given")
        self._store_to_write().set_cohort(self._embed(items, sample_rate),
                                          [_source(item, i) for i, item in enumerate(items)])
        return len(items)

    def remove(self, name: str) -> None:
        """Forget a speaker."""
        self.store.remove(name)

    def speakers(self) -> list[str]:
        """Enrolled names, sorted."""
        return [info.name for info in self.store.speakers()]

    # ---- scoring ----------------------------------------------------------------------------
    def verify(self, name: str, utterance: Any, sample_rate: int | None = None) -> VerificationResult:
        """Is ``utterance`` spoken by ``name``? Unknown names raise KeyNotFoundError."""
        if self.scoring == "centroid":
            enrolled = self.store.centroid(name)[None]
        else:
            enrolled = self.store.utterance_embeddings(name)[1]
        test, seconds = self._embed_test(utterance, sample_rate)
        cosine = float(speaker_scores(enrolled, np.zeros(len(enrolled), np.int64), test, self.scoring)[0, 0])
        score = cosine
        if self.norm == "asnorm":
            score = float(self._asnorm(np.array([cosine]), enrolled, test)[0])
        return VerificationResult(name, score, score >= self.threshold, self.threshold, cosine,
                                  self._llr(cosine, seconds))

    def identify(self, utterance: Any, top_k: int = 5, sample_rate: int | None = None,
                 open_set: bool = True) -> list[Match]:
        """The ``top_k`` best-scoring speakers, best first; with ``open_set`` only those >= the threshold.

        An empty list means "none of the enrolled speakers" (the same operating point as
        :meth:`verify`). With centroid scoring and no normalisation this is one matrix-vector
        product over all centroids (about 5 ms for 100k speakers of 192-d on a CPU); the other
        scorings read every speaker's utterance embeddings from the store (one query per speaker).
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        test, seconds = self._embed_test(utterance, sample_rate)
        if self.norm is None and self.scoring == "centroid":
            found = [(name, score, score) for name, score in self.store.search(test, top_k)]
        else:
            names, cosines = self._all_scores(test)
            scores = self._asnorm(cosines, self.store.centroids()[1], test) if self.norm and names else cosines
            best = np.argsort(-scores, kind="stable")[:top_k]
            found = [(names[i], float(scores[i]), float(cosines[i])) for i in best]
        return [Match(name, score, self._llr(cosine, seconds)) for name, score, cosine in found
                if not open_set or score >= self.threshold]

    def _all_scores(self, test: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Names (sorted) and the ``scoring`` cosines (S,) of every enrolled speaker with ``test`` (D,)."""
        if self.scoring == "centroid":
            names, centroids = self.store.centroids()
            return names, centroids @ test
        names = [info.name for info in self.store.speakers()]
        if not names:
            return names, np.zeros(0)
        matrices = [self.store.utterance_embeddings(name)[1] for name in names]
        speakers = np.repeat(np.arange(len(names)), [len(m) for m in matrices])
        return names, speaker_scores(np.concatenate(matrices), speakers, test, self.scoring, len(names))[0]

    def _llr(self, cosine: float, test_seconds: float) -> float | None:
        if self.calibration is None:
            return None
        return float(self.calibration.llr(np.array([self._dev_scale(cosine)]), test_seconds, test_seconds)[0])

    def _embed_test(self, utterance: Any, sample_rate: int | None) -> tuple[np.ndarray, float]:
        """The test embedding (D,) and its seconds of audio."""
        return self._embed([utterance], sample_rate)[0], item_duration(utterance, sample_rate)

    def _embed(self, items: Sequence[Any], sample_rate: int | None) -> np.ndarray:
        return embed_many(self.model, items, sample_rate=sample_rate, progress=len(items) > 20, backend=self.backend)

    def _asnorm(self, scores: np.ndarray, enrolled: np.ndarray, test: np.ndarray) -> np.ndarray:
        """Adaptive s-norm (:mod:`speakertrip.scoring.norm`) of ``scores`` (S,) between centroids (S, D)
        and one test embedding (D,)."""
        cohort = self.store.cohort()
        if len(cohort) == 0:
            raise ConfigError(f"norm='asnorm' needs a cohort in {self.store.location}; add one with "
                              "Verifier.enroll_cohort(files) or `speakertrip enroll --cohort`")
        top_n = resolve_top_n("asnorm", min(self.cohort_top_n, len(cohort)), len(cohort))
        return apply_norm(scores, "asnorm", cohort_stats(enrolled, cohort, top_n), cohort_stats(test[None], cohort, top_n))


def _source(item: Any, index: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    path = getattr(item, "path", None)
    return str(path) if path is not None else f"<{type(item).__name__} #{index}>"
