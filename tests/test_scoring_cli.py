"""`speakertrip score`, `metrics` and `calibrate` end to end on files the test writes."""

import json

import numpy as np
import pytest

from speakertrip import scoring
from speakertrip.cli import main
from speakertrip.data.embedding_store import EmbeddingStore, load_store, save_store


@pytest.fixture()
def corpus(tmp_path):
    """12 speakers x 5 utterances of 16-dim embeddings, a VoxCeleb trial list and a cohort store."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    keys = [f"id{s:05d}/vid/{u}.wav" for s in range(12) for u in range(5)]
    embeddings = np.repeat(centres, 5, axis=0) + 0.9 * rng.normal(size=(60, 16))
    save_store(EmbeddingStore(keys, embeddings.astype(np.float32)), tmp_path / "emb.npz")
    cohort_keys = [f"id2{s:04d}/c/{u}.wav" for s in range(30) for u in range(3)]
    save_store(EmbeddingStore(cohort_keys, rng.normal(size=(90, 16)).astype(np.float32)), tmp_path / "cohort")
    lines = []
    for a in range(0, 60, 2):
        for b in range(1, 60, 7):
            lines.append(f"{int(a // 5 == b // 5)} {keys[a]} {keys[b]}")
    lines += [f"1 {keys[a]} {keys[a + 1]}" for a in range(0, 60, 5)]
    (tmp_path / "trials.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_score_writes_scores_and_prints_table(corpus, capsys):
    assert main(["score", "--trials", str(corpus / "trials.txt"), "--embeddings", str(corpus / "emb.npz"),
                 "--out", str(corpus / "scores.txt"), "--det", str(corpus / "det.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:5] == ["trials", "targets", "EER", "(%)", "minDCF@0.01"]
    trials = scoring.read_trials(corpus / "trials.txt")
    scored = scoring.read_scores(corpus / "scores.txt")
    assert scored.enroll == trials.enroll and scored.labels.tolist() == trials.labels.tolist()
    expected = scoring.score_trials(trials, load_store(corpus / "emb.npz"))
    np.testing.assert_array_equal(scored.scores.astype(np.float32), expected)
    assert f"{100 * scoring.eer(expected, trials.labels):.3f}" in out.splitlines()[1]
    assert (corpus / "det.png").stat().st_size > 0


def test_score_json_with_asnorm_and_metrics_agree(corpus, capsys):
    common = ["--trials", str(corpus / "trials.txt"), "--embeddings", str(corpus / "emb.npz")]
    assert main(["score", *common, "--norm", "asnorm", "--cohort", str(corpus / "cohort"), "--top-n", "20",
                 "--out", str(corpus / "as.txt"), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert {"trials", "targets", "eer", "eer_threshold", "min_dcf"} <= set(reported)
    assert set(reported["min_dcf"]) == {"0.01", "0.05"} and 0 <= reported["eer"] <= 1
    assert main(["metrics", str(corpus / "as.txt"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["eer"] == pytest.approx(reported["eer"]) and again["min_dcf"] == pytest.approx(reported["min_dcf"])
    scored = scoring.read_scores(corpus / "as.txt")
    assert again["eer"] == pytest.approx(scoring.eer(scored.scores, scored.labels))
    # speaker-mean cohort: 30 speakers
    assert main(["score", *common, "--norm", "snorm", "--cohort", str(corpus / "cohort"),
                 "--cohort-speaker-means", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trials"] == reported["trials"]


def test_metrics_of_several_files_bootstrap_and_calibration(corpus, capsys):
    common = ["--trials", str(corpus / "trials.txt"), "--embeddings", str(corpus / "emb.npz")]
    main(["score", *common, "--out", str(corpus / "cos.txt")])
    main(["score", *common, "--norm", "znorm", "--cohort", str(corpus / "cohort"), "--out", str(corpus / "z.txt")])
    capsys.readouterr()
    assert main(["metrics", str(corpus / "cos.txt"), str(corpus / "z.txt"), "--p-target", "0.1",
                 "--bootstrap", "50", "--det", str(corpus / "both.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "system" and "minDCF@0.1" in lines[0] and len(lines) == 3
    assert lines[1].startswith(str(corpus / "cos.txt")) and "[" in lines[1]
    assert main(["calibrate", str(corpus / "cos.txt"), "--out", str(corpus / "cal.json")]) == 0
    assert "scale" in capsys.readouterr().out
    assert main(["metrics", str(corpus / "cos.txt"), "--calibration", str(corpus / "cal.json"), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert reported["cllr"] < 1.0 and set(reported["act_dcf"]) == {"0.01", "0.05"}


def test_unlabeled_list_writes_scores_to_stdout(corpus, capsys):
    (corpus / "u.txt").write_text("id00000/vid/0.wav id00000/vid/1.wav\nid00000/vid/0.wav id00003/vid/1.wav\n")
    assert main(["score", "--trials", str(corpus / "u.txt"), "--embeddings", str(corpus / "emb.npz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("id00000/vid/0.wav id00000/vid/1.wav ")


def test_skip_missing_drops_and_counts(corpus, capsys):
    text = (corpus / "trials.txt").read_text()
    (corpus / "t2.txt").write_text(text + "1 id09999/x/1.wav id00000/vid/0.wav\n0 id00000/vid/0.wav id09999/x/2.wav\n")
    args = ["score", "--trials", str(corpus / "t2.txt"), "--embeddings", str(corpus / "emb.npz")]
    assert main(args) == 2
    assert "2 of 47 keys of" in capsys.readouterr().err
    assert main(args + ["--skip-missing", "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 of" in captured.err
    assert json.loads(captured.out)["trials"] == len(text.splitlines())


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: (d / "bad.txt").write_text("1 a b\n1 a\n"), ["score", "--trials", "{d}/bad.txt", "--embeddings",
                                                             "{d}/emb.npz"], "bad.txt:2: expected 3 fields"),
    (lambda d: (d / "s.txt").write_text("a b 0.1 target\na c inf nontarget\n"), ["metrics", "{d}/s.txt"],
     "s.txt:2: score must be a finite number, got 'inf'"),
    (lambda d: (d / "s.txt").write_text("a b 0.1 target\na c 0.2 target\n"), ["metrics", "{d}/s.txt"],
     "s.txt: the trials have no non-targets"),
    (lambda d: (d / "s.txt").write_text("a b 0.1\n"), ["metrics", "{d}/s.txt"], "s.txt: the score file has no labels"),
    (lambda d: (d / "e.txt").write_text(""), ["metrics", "{d}/e.txt"], "e.txt: empty score file"),
    (lambda d: None, ["score", "--trials", "{d}/trials.txt", "--embeddings", "{d}/emb.npz", "--norm", "snorm"],
     "--norm and --cohort go together"),
    (lambda d: save_store(EmbeddingStore(["c/1/1"], np.ones((1, 3), np.float32)), d / "c3.npz"),
     ["score", "--trials", "{d}/trials.txt", "--embeddings", "{d}/emb.npz", "--norm", "snorm", "--cohort",
      "{d}/c3.npz"], "embeddings of different dimension: 16 in"),
    (lambda d: np.savez(d / "dup.npz", keys=np.array(["a", "a"]), embeddings=np.ones((2, 2))),
     ["score", "--trials", "{d}/trials.txt", "--embeddings", "{d}/dup.npz"], "dup.npz: 1 duplicate keys"),
])
def test_bad_input_gives_one_line_error(corpus, capsys, setup, args, message):
    setup(corpus)
    assert main([a.format(d=corpus) for a in args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and error.startswith("speakertrip ")
