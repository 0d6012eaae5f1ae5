"""Trial lists in each format and score files, and each kind of bad line."""

import numpy as np
import pytest

from speakertrip import scoring
from speakertrip.errors import FormatError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, format, labels", [
    ("1 a/1.wav b/1.wav\n0 a/1.wav c/2.wav\n", "voxceleb", [True, False]),
    ("a/1.wav b/1.wav target\na/1.wav c/2.wav nontarget\n", "kaldi", [True, False]),
    ("a/1.wav b/1.wav\na/1.wav c/2.wav\n", "unlabeled", None),
    ("1\ta/1.wav   b/1.wav\n\n0 a/1.wav c/2.wav", "voxceleb", [True, False]),  # tabs, blank line, no final newline
])
def test_trial_formats_are_detected(tmp_path, text, format, labels):
    trials = scoring.read_trials(write(tmp_path, "trials.txt", text))
    assert trials.format == format and len(trials) == 2
    assert trials.enroll == ["a/1.wav", "a/1.wav"] and trials.test == ["b/1.wav", "c/2.wav"]
    assert (trials.labels is None) if labels is None else trials.labels.tolist() == labels


def test_subset_keeps_labels_aligned(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "t.txt", "1 a b\n0 a c\n1 d e\n"))
    kept = trials.subset(np.array([True, False, True]))
    assert kept.enroll == ["a", "d"] and kept.test == ["b", "e"] and kept.labels.tolist() == [True, True]


@pytest.mark.parametrize("text, message", [
    ("1 a b\n0 a c extra\n", r"t\.txt:2: expected 3 fields \(voxceleb trial list: LABEL ENROLL TEST with LABEL 1 or 0\), got 4 \(line: '0 a c extra'\)"),
    ("1 a b\n2 a c\n", r"t\.txt:2: expected label 1 or 0 first .* got '2'"),
    ("a b target\na c maybe\n", r"t\.txt:2: expected 'target' or 'nontarget' third .* got 'maybe'"),
    ("a b\na\n", r"t\.txt:2: expected 2 fields"),
    ("x a b c\n", r"t\.txt:1: not a trial list in a known format"),
    ("", r"t\.txt: empty trial list"),
    ("\n  \n", r"t\.txt: empty trial list"),
])
def test_bad_trial_lists(tmp_path, text, message):
    with pytest.raises(FormatError, match=message):
        scoring.read_trials(write(tmp_path, "t.txt", text))


def test_missing_trial_file_and_forced_format(tmp_path):
    with pytest.raises(FormatError, match="no such trial list"):
        scoring.read_trials(tmp_path / "absent.txt")
    path = write(tmp_path, "t.txt", "a b\n")
    with pytest.raises(FormatError, match="unknown trial-list format 'csv'; valid formats: voxceleb, kaldi, unlabeled"):
        scoring.read_trials(path, format="csv")
    with pytest.raises(FormatError, match="expected 3 fields"):
        scoring.read_trials(path, format="kaldi")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_file_round_trip_keeps_order_and_ties(tmp_path, dtype):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500).astype(dtype)
    scores[10:20] = scores[0]  # ties survive
    scores[20] = np.nextafter(scores[0], dtype(np.inf))  # and so does the next float up
    labels = rng.random(500) < 0.3
    keys = [f"k{i}" for i in range(500)]
    path = scoring.write_scores(tmp_path / "s.txt", keys, keys[::-1], scores, labels)
    scored = scoring.read_scores(path)
    assert scored.enroll == keys and scored.test == keys[::-1]
    np.testing.assert_array_equal(np.argsort(scored.scores, kind="stable"), np.argsort(scores, kind="stable"))
    assert len(np.unique(scored.scores)) == len(np.unique(scores))
    np.testing.assert_array_equal(scored.labels, labels)
    if dtype == np.float32:
        np.testing.assert_array_equal(scored.scores.astype(np.float32), scores)
    assert scoring.eer(scored.scores, scored.labels) == scoring.eer(scores, labels)


def test_score_file_labels_as_numbers_and_without_labels(tmp_path):
    scored = scoring.read_scores(write(tmp_path, "s.txt", "a b 0.5 1\na c -0.25 0\n"))
    assert scored.labels.tolist() == [True, False] and scored.scores.tolist() == [0.5, -0.25]
    scored = scoring.read_scores(write(tmp_path, "u.txt", "a b 0.5\na c 1e-3\n"))
    assert scored.labels is None and scored.scores.tolist() == [0.5, 0.001]
    assert scoring.format_scores(["a"], ["b"], np.array([0.5], np.float32)) == "a b 0.5\n"


@pytest.mark.parametrize("text, message", [
    ("a b 0.5 target\na c nan nontarget\n", r"s\.txt:2: score must be a finite number, got 'nan' \(1 such lines"),
    ("a b 0.5 target\na c -inf nontarget\n", r"s\.txt:2: score must be a finite number, got '-inf'"),
    ("a b 0.5 target\na c high nontarget\n", r"s\.txt:2: score must be a finite number, got 'high'"),
    ("a b 0.5 target\na c 0.1\n", r"s\.txt:2: expected 4 fields \(ENROLL TEST SCORE LABEL\), got 3"),
    ("a b 0.5\na c 0.1 target\n", r"s\.txt:2: expected 3 fields"),
    ("a b 0.5 yes\n", r"s\.txt:1: expected label target/nontarget or 1/0, got 'yes'"),
    ("a b\n", r"s\.txt:1: expected 'ENROLL TEST SCORE' or"),
    ("", r"s\.txt: empty score file"),
])
def test_bad_score_files(tmp_path, text, message):
    with pytest.raises(FormatError, match=message):
        scoring.read_scores(write(tmp_path, "s.txt", text))
