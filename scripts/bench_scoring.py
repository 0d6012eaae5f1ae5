"""Benchmark the scoring engine against its peers, side by side on the same inputs in one process.

1. 10 M labelled float32 scores: EER + minDCF at two P_targets vs one ``np.argsort`` (the floor).
2. 100 k trials: vs ``speechbrain.utils.metric_stats.EER``.
3. 1 M trials: vs scikit-learn ``roc_curve`` EER plus a Kaldi-style Python minDCF loop, the method
   of voxceleb_trainer's ``tuneThresholdfromScore`` / ``ComputeMinDcf`` (our own code).
4. AS-norm at VoxCeleb1-H scale: 550 k trials over 145 k embeddings (D 192), cohort of 6,000, top 300;
   the cohort statistics are checked against a WeSpeaker-style full row sort on a slice.

Every section checks that the answers agree before printing the time ratio.
Run: ``.venv/bin/python scripts/bench_scoring.py [--quick]`` (``--quick``: sizes / 10, for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from speakertrip import scoring
from speakertrip.data.embedding_store import EmbeddingStore
from speakertrip.scoring.metrics import eer_from_points, min_dcf_from_points


def best_time(function, repeats: int = 3):
    """(best wall time in seconds, result of the last call)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def synthetic_trials(count: int, target_share: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(count) < target_share
    scores = (rng.normal(size=count) * 0.12 + np.where(labels, 0.55, 0.15)).astype(np.float32)
    return scores, labels


def ours(scores: np.ndarray, labels: np.ndarray, p_targets=(0.01, 0.05)):
    """EER and minDCF at each P_target, all from one set of operating points."""
    points = scoring.operating_points(scores, labels)
    return eer_from_points(points)[0], [min_dcf_from_points(points, p)[0] for p in p_targets]


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """voxceleb_trainer's EER: the ROC point where |FNR - FPR| is smallest, the larger of the two."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    best = np.nanargmin(np.abs(fnr - fpr))
    return float(max(fpr[best], fnr[best]))


def kaldi_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss=1.0, c_fa=1.0) -> float:
    """The Kaldi / voxceleb_trainer method: sort, cumulative error rates and the DCF in Python loops."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    sorted_labels = [int(labels[i]) for i in order]
    misses, false_rejects_so_far, fnrs, fprs = 0, 0, [], []
    n_targets = sum(sorted_labels)
    n_nontargets = len(sorted_labels) - n_targets
    for label in sorted_labels:
        misses += label
        false_rejects_so_far += 1 - label
        fnrs.append(misses / n_targets)
        fprs.append(1 - false_rejects_so_far / n_nontargets)
    best = min(c_miss * fnr * p_target + c_fa * fpr * (1 - p_target) for fnr, fpr in zip(fnrs, fprs))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


def section_sort_floor(count: int) -> None:
    scores, labels = synthetic_trials(count)
    floor, _ = best_time(lambda: np.argsort(scores))
    ours_time, (eer, dcfs) = best_time(lambda: ours(scores, labels))
    all_time, metrics = best_time(lambda: scoring.compute_metrics(scores, labels), repeats=1)
    assert metrics.eer == eer and [metrics.min_dcf[p] for p in (0.01, 0.05)] == dcfs
    same64 = ours(scores.astype(np.float64), labels)
    assert same64 == (eer, dcfs), "float32 and float64 paths disagree"
    print(f"[1] {count:,} scores: np.argsort {floor:.3f} s | EER + minDCF@0.01,0.05 {ours_time:.3f} s "
          f"= {ours_time / floor:.2f}x the sort (target <= 1.5x) | all metrics incl. ROCCH-EER and minCllr "
          f"{all_time:.3f} s  [EER {100 * eer:.4f} %, minDCF {dcfs[0]:.4f} / {dcfs[1]:.4f}]")


def section_speechbrain(count: int) -> None:
    import torch
    from speechbrain.utils.metric_stats import EER as speechbrain_eer

    scores, labels = synthetic_trials(count, seed=1)
    positive, negative = torch.from_numpy(scores[labels]), torch.from_numpy(scores[~labels])
    peer_time, (peer_eer, _) = best_time(lambda: speechbrain_eer(positive, negative), repeats=1)
    our_time, our_eer = best_time(lambda: scoring.eer(scores, labels))
    step = 1 / min(labels.sum(), (~labels).sum())
    assert abs(peer_eer - our_eer) <= step, (peer_eer, our_eer)
    print(f"[2] {count:,} trials: speechbrain EER {peer_time:.2f} s | ours {our_time * 1000:.1f} ms = "
          f"{peer_time / our_time:,.0f}x faster (target >= 100x)  [EER {100 * our_eer:.4f} % vs "
          f"{100 * peer_eer:.4f} %, within one error step]")


def section_sklearn_kaldi(count: int) -> None:
    scores, labels = synthetic_trials(count, seed=2)
    peer_time, (peer_eer, peer_dcfs) = best_time(
        lambda: (sklearn_eer(scores, labels), [kaldi_min_dcf(scores, labels, p) for p in (0.01, 0.05)]), repeats=1)
    our_time, (our_eer, our_dcfs) = best_time(lambda: ours(scores, labels))
    step = 1 / min(labels.sum(), (~labels).sum())
    assert abs(peer_eer - our_eer) <= step, (peer_eer, our_eer)
    np.testing.assert_allclose(our_dcfs, peer_dcfs, atol=1e-9)
    print(f"[3] {count:,} trials: sklearn roc_curve EER + Kaldi-style minDCF loop {peer_time:.2f} s | ours "
          f"{our_time:.3f} s = {peer_time / our_time:,.0f}x faster (target >= 3x)  [minDCF identical, "
          f"EER {100 * our_eer:.4f} % vs {100 * peer_eer:.4f} %]")


def section_asnorm(n_embeddings: int, n_trials: int, cohort_size: int, dim: int = 192, top_n: int = 300) -> None:
    rng = np.random.default_rng(3)
    speakers = rng.normal(size=(n_embeddings // 8 + 1, dim)).astype(np.float32)
    owner = rng.integers(0, len(speakers), n_embeddings)
    embeddings = speakers[owner] + rng.normal(size=(n_embeddings, dim)).astype(np.float32)
    keys = [f"id{owner[i]:05d}/video/{i:06d}.wav" for i in range(n_embeddings)]
    store = EmbeddingStore(keys, embeddings)
    cohort = rng.normal(size=(cohort_size, dim)).astype(np.float32)
    pairs = rng.integers(0, n_embeddings, size=(n_trials, 2))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trials.txt")
        with open(path, "w") as handle:
            handle.writelines(f"{int(owner[a] == owner[b])} {keys[a]} {keys[b]}\n" for a, b in pairs)
        start = time.perf_counter()
        trials = scoring.read_trials(path)
        read_time = time.perf_counter() - start
    start = time.perf_counter()
    embedded = scoring.trial_embeddings(trials, store)
    raw = scoring.cosine_scores(embedded)
    cosine_time = time.perf_counter() - start
    start = time.perf_counter()
    normed = scoring.normalize_trial_scores(raw, embedded, cohort, "asnorm", top_n)
    norm_time = time.perf_counter() - start
    distinct = len(embedded.unit)
    # WeSpeaker-style reference on a slice: full product, full row sort, top-n mean and std
    slice_rows = embedded.unit[:4096]
    unit_cohort = scoring.l2_normalize(cohort)
    start = time.perf_counter()
    sorted_rows = np.sort(slice_rows @ unit_cohort.T, axis=1)[:, ::-1][:, :top_n]
    reference_mean, reference_std = sorted_rows.mean(axis=1), sorted_rows.std(axis=1)
    reference_time = (time.perf_counter() - start) * distinct / len(slice_rows)
    stats = scoring.cohort_stats(slice_rows, cohort, top_n)
    np.testing.assert_allclose(stats.mean, reference_mean, atol=1e-6)
    np.testing.assert_allclose(stats.std, reference_std, atol=1e-6)
    check = rng.choice(n_trials, 200, replace=False)  # and the normalised scores, trial by trial
    for i in check:
        e, t = store.get(trials.enroll[i]), store.get(trials.test[i])
        side = []
        for x in (e, t):
            values = np.sort(scoring.l2_normalize(x[None]) @ unit_cohort.T, axis=None)[::-1][:top_n]
            side.append((values.mean(), values.std()))
        s = (scoring.l2_normalize(e[None]) @ scoring.l2_normalize(t[None]).T).item()
        expected = 0.5 * ((s - side[0][0]) / side[0][1] + (s - side[1][0]) / side[1][1])
        assert abs(normed[i] - expected) < 1e-4, (normed[i], expected)
    total = cosine_time + norm_time
    print(f"[4] AS-norm, {n_trials:,} trials over {distinct:,} embeddings (D {dim}), cohort {cohort_size:,}, "
          f"top {top_n}: lookup + cosine {cosine_time:.2f} s, cohort stats + norm {norm_time:.2f} s, total "
          f"{total:.2f} s (target < 20 s; reading the list {read_time:.2f} s more) | WeSpeaker-style full sort, "
          f"extrapolated from 4,096 rows: {reference_time:.1f} s for the stats alone = "
          f"{reference_time / norm_time:.1f}x slower  [stats and 200 trials checked]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes / 10: a smoke run")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    print(f"numpy {np.__version__}, {len(os.sched_getaffinity(0))} cores, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    section_sort_floor(10_000_000 // scale)
    section_speechbrain(100_000 // scale)
    section_sklearn_kaldi(1_000_000 // scale)
    section_asnorm(145_000 // scale, 550_000 // scale, 6_000)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
