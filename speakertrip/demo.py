"""The offline end-to-end demo: synthetic corpus → triplet training → embeddings → scores → verify.

Everything runs on CPU from a fresh install, with no download: eSpeak NG voices make a corpus in
the VoxCeleb layout, VoxCeleb preparation turns it into manifests, a small ECAPA learns with the
multi-positive triplet loss (mean of the k hardest negatives), and the held-out speakers are
scored three ways: the trained model, the same encoder untrained, and a non-learned baseline
(mean log-mel + cosine). Two held-out speakers are then enrolled with :class:`speakertrip.Verifier`.

The trained model's EER comes out below the untrained encoder's, itself below the baseline's. Even the
quick run trains for a while (about 15 s on 2 cores), so the tests skip the example
(``tests/test_demo.py`` runs it and checks that order):

>>> from speakertrip.demo import run_demo
>>> results = run_demo("demo_out", quick=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from speakertrip.audio import load_audio
from speakertrip.data.manifest import Utterance, read_manifest, write_manifest
from speakertrip.data.embedding_store import EmbeddingStore
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.scoring import Trials, compute_metrics, metrics_table, plot_det, read_trials, score_trials

TRAINED, UNTRAINED, BASELINE = "trained ECAPA, triplet", "untrained ECAPA", "mean log-mel + cosine"


@dataclass(frozen=True)
class DemoSettings:
    """Corpus size and training budget of one demo run."""

    speakers: int  # in all: training + dev + held-out test
    test_speakers: int  # held out: scored, never trained on, never used to pick a threshold
    dev_speakers: int  # held out like the test speakers: validation, the verify threshold, operating points
    utterances: int  # per speaker
    sessions: int  # recording channels per speaker
    channels: int  # ECAPA width
    n_mels: int
    crop_seconds: float
    p: int  # speakers per batch
    k: int  # utterances per speaker in a batch
    steps: int
    lr: float
    verify_far: float | None  # the enrol/verify example's operating point (None: the dev EER threshold)


FULL = DemoSettings(speakers=600, test_speakers=40, dev_speakers=60, utterances=16, sessions=4, channels=128,
                    n_mels=40, crop_seconds=1.5, p=16, k=4, steps=1000, lr=4e-3, verify_far=0.01)
QUICK = DemoSettings(speakers=40, test_speakers=6, dev_speakers=3, utterances=8, sessions=2, channels=32,
                     n_mels=40, crop_seconds=1.0, p=8, k=4, steps=60, lr=4e-3, verify_far=None)


@dataclass(frozen=True)
class DemoData:
    """The demo's manifests and trial lists: training (``fit``), dev and held-out test."""

    fit: Path
    dev: Path
    dev_trials: Path
    test: Path
    test_trials: Path


def prepare_data(settings: DemoSettings, out: str | Path, seed: int = 0, workers: int | None = None,
                 progress: bool = True) -> DemoData:
    """The synthetic corpus in ``out/corpus``, its manifests and trial lists in ``out/data``.

    The last ``dev_speakers + test_speakers`` speakers speak held-out languages with held-out voice variants
    and are never trained on: the first ``dev_speakers`` of them (by id) form the dev set, the others the
    test set (:func:`split_held_out`), so dev and test speakers are alike, over the same kind of sessions
    and channels. The rest (``train.jsonl``) is the training set.
    """
    from speakertrip.corpora.synth import prepare_synth

    held_out = settings.dev_speakers + settings.test_speakers
    paths = prepare_synth(out, settings.speakers, held_out, settings.utterances, settings.sessions, seed, workers,
                          progress=progress)
    dev, dev_trials = split_held_out(read_manifest(paths["test"]), settings.test_speakers, paths["test"],
                                     paths["veri_test2"], seed)
    if progress:
        from speakertrip.data.prepared import prepared_table

        print(prepared_table({"train": paths["train"], "dev": dev, "dev_trials": dev_trials, "test": paths["test"],
                              "veri_test2": paths["veri_test2"]}))
    return DemoData(paths["train"], dev, dev_trials, paths["test"], paths["veri_test2"])


def split_held_out(held_out: Sequence[Utterance], test_speakers: int, test: Path, test_trials: Path,
                   seed: int = 0) -> tuple[Path, Path]:
    """Keep the last ``test_speakers`` held-out speakers (by id) in ``test`` and ``test_trials`` (rewritten);
    the others become the dev set, ``dev.jsonl`` and ``dev_trials.txt`` beside ``test``.

    Both trial lists are cross-session (:func:`speakertrip.data.split.make_trials`). The test list is
    balanced; the dev list holds every non-target pair, since the operating points recorded from it
    (``far=0.01``, ``far=0.001``) rest on the tail of its non-target scores. Returns the paths of the dev
    manifest and the dev trials.
    """
    from speakertrip.data.split import hold_out_speakers, make_trials, write_trials

    dev_rows, test_rows = hold_out_speakers(held_out, test_speakers, seed=None, option="test_speakers")
    dev, dev_trials = test.parent / "dev.jsonl", test.parent / "dev_trials.txt"
    for rows, manifest, trials, balanced in ((dev_rows, dev, dev_trials, False), (test_rows, test, test_trials, True)):
        write_manifest(rows, manifest)
        write_trials(make_trials(rows, max_trials=None, seed=seed, balanced=balanced, cross_session=True), trials)
    return dev, dev_trials


def training_config(settings: DemoSettings, data: DemoData, exp_dir: Path, seed: int,
                    loss: tuple[str, dict[str, Any]] | None = None, validate: bool = True) -> Any:
    """The demo's :class:`speakertrip.training.config.TrainConfig`: small ECAPA and the demo's loss.

    ``loss`` = (kind, options) replaces the demo's loss, as ``scripts/study_losses.py`` does; without
    ``validate`` training never embeds the dev set.
    """
    from speakertrip.training.config import TrainConfig

    fit, dev, dev_trials = data.fit, data.dev if validate else None, data.dev_trials if validate else None
    kind, options = loss or ("multi_positive", {"margin": 0.3, "hardest_negatives": settings.k})
    return TrainConfig.from_dict({
        "data": {"train": str(fit), "dev": dev and str(dev), "dev_trials": dev_trials and str(dev_trials),
                 "crop_seconds": settings.crop_seconds, "workers": 1},
        "features": {"n_mels": settings.n_mels},
        "model": {"encoder": "ecapa", "options": {"channels": settings.channels, "embedding_dim": 128,
                                                  "attention_channels": 64, "se_channels": 64}},
        "loss": {"kind": kind, "p": settings.p, "k": settings.k, "options": options},
        "optim": {"lr": settings.lr},
        "train": {"exp_dir": str(exp_dir), "epochs": 1000, "steps": settings.steps, "seed": seed,
                  "device": "cpu", "log_every": max(1, settings.steps // 20),
                  "validate_every": max(1, settings.steps // 4), "average_last": 2},
    }, source="demo")


def mean_logmel_embeddings(utterances: Sequence[Utterance], n_mels: int) -> np.ndarray:
    """The non-learned baseline: each utterance's mean log-mel vector (no mean normalisation), (N, n_mels)."""
    frontend = LogMelFrontend(FeatureConfig(n_mels=n_mels, mean_norm=False))
    rows = []
    with torch.inference_mode():
        for utterance in utterances:
            wave = torch.from_numpy(load_audio(utterance.path, frontend.config.sample_rate))[None]
            features, _ = frontend(wave)
            rows.append(features[0].mean(0))
    return torch.stack(rows).numpy()


def score_system(utterances: Sequence[Utterance], embeddings: np.ndarray, trials: Trials) -> tuple[np.ndarray, Any]:
    """Cosine scores of ``trials`` and their metrics for one system's (N, D) embeddings."""
    store = EmbeddingStore([u.utt_id for u in utterances], np.ascontiguousarray(embeddings, dtype=np.float32))
    scores = score_trials(trials, store)
    return scores, compute_metrics(scores, trials.labels.astype(np.int8))


def verify_example(model: Any, test: Sequence[Utterance], store: Path, enroll_count: int = 3,
                   far: float | None = None) -> list[str]:
    """Enrol two held-out speakers through the Python API; verify a genuine and an impostor utterance at the
    threshold of ``far`` on the dev trials (None: the dev EER threshold)."""
    from speakertrip.verification.verifier import Verifier

    by_speaker: dict[str, list[Utterance]] = {}
    for u in test:
        by_speaker.setdefault(u.spk_id, []).append(u)
    alice, bob = sorted(by_speaker)[:2]
    verifier = Verifier(model, store=store, far=far)
    lines = []
    for name in (alice, bob):
        count = verifier.enroll(name, [u.path for u in by_speaker[name][:enroll_count]], replace=True)
        lines.append(f"enrolled {name} with {count} utterances")
    genuine, impostor = by_speaker[alice][enroll_count], by_speaker[bob][enroll_count]
    for label, utterance in (("genuine", genuine), ("impostor", impostor)):
        result = verifier.verify(alice, utterance.path)
        decision = "ACCEPT" if result.accepted else "REJECT"
        lines.append(f"verify {alice} <- {utterance.utt_id} ({label}): score {result.score:+.3f} "
                     f"threshold {result.threshold:+.3f} ({verifier.operating_point}) -> {decision}")
    return lines


def run_demo(out: str | Path = "demo_out", quick: bool = False, seed: int = 0, workers: int | None = None,
             progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the whole demo into ``out``; returns each system's metrics as a dict (rates as fractions).

    Writes ``out/synth`` (corpus and manifests), ``out/exp`` (training run, ``curves.png``, ``model/``),
    ``out/det.png``, ``out/speakers.db`` and ``out/results.json``.
    """
    from speakertrip.models import embed_many, load_model
    from speakertrip.training.averaging import build_model
    from speakertrip.training.trainer import SUMMARY_FILE, train

    settings, out, started = (QUICK if quick else FULL), Path(out), time.perf_counter()
    say = print if progress else (lambda *_: None)
    say(f"[1/5] synthetic corpus: {settings.speakers} eSpeak speakers ({settings.test_speakers} held out for the "
        f"test, {settings.dev_speakers} for dev)")
    data = prepare_data(settings, out / "synth", seed, workers, progress)

    say(f"[2/5] training ECAPA (C={settings.channels}) with the multi-positive triplet loss, {settings.steps} steps")
    config = training_config(settings, data, out / "exp", seed)
    config.train.progress = progress
    exp_dir = train(config)
    say((exp_dir / SUMMARY_FILE).read_text().rstrip())
    trained = load_model(exp_dir / "model")
    torch.manual_seed(seed)
    untrained = build_model(config)

    say("[3/5] embedding the held-out speakers")
    test = read_manifest(data.test)
    trials = read_trials(data.test_trials)
    waves = [u.path for u in test]
    systems = {
        TRAINED: trained.embed_batch(waves),
        UNTRAINED: embed_many(untrained, waves),
        BASELINE: mean_logmel_embeddings(test, settings.n_mels),
    }

    say("[4/5] scoring the held-out trial list")
    scored = {name: score_system(test, embeddings, trials) for name, embeddings in systems.items()}
    det = plot_det({name: (scores, trials.labels) for name, (scores, _) in scored.items()}, out / "det.png",
                   title="held-out synthetic speakers")

    say("[5/5] enrol and verify through the Python API")
    decisions = verify_example(trained, test, out / "speakers.db", far=settings.verify_far)

    results = {name: metrics.to_dict() for name, (_, metrics) in scored.items()}
    summary = {"settings": asdict(settings), "seed": seed, "seconds": round(time.perf_counter() - started, 1),
               "systems": results, "verify": decisions}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    say("")
    say(f"held-out speakers: {len({u.spk_id for u in test})}, trials: {len(trials)}")
    say(metrics_table({name: metrics for name, (_, metrics) in scored.items()}))
    say("")
    for line in decisions:
        say(line)
    say("")
    say(f"DET curves       {det}")
    say(f"training curves  {exp_dir / 'curves.png'}")
    say(f"model artifact   {exp_dir / 'model'}")
    say(f"total time       {summary['seconds']:.0f} s")
    return results
