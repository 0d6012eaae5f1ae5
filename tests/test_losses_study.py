"""The loss study: its speaker-level bootstrap against trial lists rebuilt by hand, its tables, and a --quick run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from speakertrip.scoring import compute_metrics
from speakertrip.scoring.bootstrap import speaker_bootstrap_intervals, speaker_replicates, weighted_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import study_losses  # noqa: E402


def trial_list(seed, speakers=6, trials=300):
    rng = np.random.default_rng(seed)
    enroll = rng.integers(speakers, size=trials)
    test = np.where(rng.random(trials) < 0.5, enroll, rng.integers(speakers, size=trials))
    labels = (enroll == test).astype(np.int8)
    scores = np.round(rng.normal(size=trials) + 1.5 * labels, 1)  # ties on purpose
    return [f"s{i}" for i in enroll], [f"s{i}" for i in test], labels, scores


def test_replicate_weights_are_speaker_copies():
    enroll, test, labels, _ = trial_list(0)
    weights = speaker_replicates(enroll, test, resamples=50, seed=3)
    names = sorted(set(enroll) | set(test))
    rng = np.random.default_rng(3)
    copies = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=50)
    count = {name: copies[:, i] for i, name in enumerate(names)}
    for i, (a, b) in enumerate(zip(enroll, test)):
        expected = count[a] if a == b else count[a] * count[b]
        np.testing.assert_array_equal(weights[:, i], expected)
    assert weights.dtype == np.int64 and (weights.sum(axis=1) > 0).all()


def test_weighted_metrics_equal_the_metrics_of_the_rebuilt_trial_list():
    enroll, test, labels, scores = trial_list(1)
    weights = speaker_replicates(enroll, test, resamples=20, seed=0)
    eers, dcfs = weighted_metrics(scores, labels, weights, p_target=0.05)
    for row, eer, dcf in zip(weights, eers, dcfs):
        repeated = np.repeat(np.arange(len(scores)), row)  # every trial as often as the replicate counts it
        if labels[repeated].all() or not labels[repeated].any():
            assert np.isnan(eer) and np.isnan(dcf)
            continue
        reference = compute_metrics(scores[repeated], labels[repeated], p_targets=(0.05,))
        assert eer == pytest.approx(reference.eer, abs=1e-12)
        assert dcf == pytest.approx(reference.min_dcf[0.05], abs=1e-12)


def test_speaker_intervals_are_wider_than_trial_intervals_when_speakers_differ():
    rng = np.random.default_rng(2)
    speakers = 12
    enroll = rng.integers(speakers, size=2000)
    test = np.where(rng.random(2000) < 0.5, enroll, rng.integers(speakers, size=2000))
    labels = (enroll == test).astype(np.int8)
    hardness = rng.uniform(0.5, 3.0, size=speakers)  # some speakers are much harder than others
    scores = rng.normal(size=2000) + hardness[enroll] * labels
    by_speaker = speaker_bootstrap_intervals(scores, labels, enroll.astype(str), test.astype(str), resamples=300)
    by_trial = compute_metrics(scores, labels, bootstrap=300).intervals
    width = lambda bounds: bounds[1] - bounds[0]  # noqa: E731
    assert width(by_speaker["eer"]) > 1.5 * width(by_trial["eer"])
    assert by_speaker["eer"][0] < compute_metrics(scores, labels).eer < by_speaker["eer"][1]


def test_summary_marks_a_clearly_worse_loss_significant_and_a_tie_not():
    enroll, test, labels, _ = trial_list(4, speakers=20, trials=3000)

    class Trials:
        pass

    trials = Trials()
    trials.enroll = [f"{s}/v/1.wav" for s in enroll]
    trials.test = [f"{s}/v/2.wav" for s in test]
    trials.labels = labels
    rng = np.random.default_rng(0)
    runs = {name: [rng.normal(size=len(labels)) + shift * labels for _ in range(3)]
            for name, shift in (("good", 3.0), ("also good", 3.0), ("bad", 1.0))}
    table = study_losses.summarise(runs, trials, resamples=200)
    assert table["bad"]["eer_vs_best"]["significant"] and table["bad"]["min_dcf_vs_best"]["significant"]
    best = table["good"]["eer_vs_best"]["best"]
    other = "also good" if best == "good" else "good"
    assert not table[other]["eer_vs_best"]["significant"]
    assert table["bad"]["eer_std"] == pytest.approx(np.std(table["bad"]["eer"], ddof=1))
    low, high = table["bad"]["eer_ci"]
    assert low < table["bad"]["eer_mean"] < high
    text = study_losses.markdown({"list": table}, "header")
    assert "| bad |" in text and "worse" in text and "best" in text


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_resumes(tmp_path):
    from speakertrip.testing import make_voxceleb_tree

    real = make_voxceleb_tree(tmp_path / "real", num_speakers=4, sessions=2, utterances_per_session=2)
    (real / "veri_test2.txt").rename(real / "trials.txt")
    argv = ["--quick", "--out", str(tmp_path / "study"), "--realvoices", str(real), "--seeds", "2", "--steps", "2",
            "--bootstrap", "50", "--losses", "AAM-softmax", "hybrid AAM + multi-positive"]
    results = study_losses.main(argv)
    assert set(results) == {"eSpeak held-out", "real voices"}
    for table in results.values():
        assert set(table) == {"AAM-softmax", "hybrid AAM + multi-positive"}
        assert all(len(row["eer"]) == 2 for row in table.values())
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["results"]["real voices"]["AAM-softmax"]["eer"] == results["real voices"]["AAM-softmax"]["eer"]
    assert "| AAM-softmax |" in (tmp_path / "study" / "study.md").read_text()
    runs = sorted((tmp_path / "study" / "runs").rglob("scores.npz"))
    stamps = [path.stat().st_mtime_ns for path in runs]
    assert len(runs) == 4 and study_losses.main(argv) == results  # the second run reads the saved scores
    assert [path.stat().st_mtime_ns for path in runs] == stamps
    partial = study_losses.main([*argv, "--seeds", "3", "--finished-only"])  # seed 2 never ran: left out
    assert partial == results
