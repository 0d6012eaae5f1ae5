"""The recipes as users run them: ``recipes/{voxceleb,cnceleb}/run.sh``, every stage, on tiny trees.

A training stage killed mid-run continues on the next run, a re-run skips every finished step,
a changed option redoes only what depends on it, and the results row holds the metrics of the
score files, which hold the cosine scores of the stored embeddings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from speakertrip.corpora.convert import find_ffmpeg
from speakertrip.data.embedding_store import load_store
from speakertrip.scoring import compute_metrics, read_scores, read_trials
from speakertrip.scoring.enrolment import read_enrolment_map
from speakertrip.testing import make_cnceleb2_tree, make_cnceleb_tree, make_voxceleb_tree
from speakertrip.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
# a few seconds of training: tiny ECAPA, 0.5 s crops, 4 speakers x 2, no augmentation (no MUSAN/RIRs)
TINY = ["--top-n", "3", "--augment=null", "--data.crop_seconds=0.5", "--data.workers=0", "--data.batches_per_epoch=3",
        "--features.n_mels=24", "--model.options={channels: 32, attention_channels: 16, se_channels: 16, embedding_dim: 32}",
        "--loss.p=4", "--loss.k=2", "--loss.options+={hardest_negatives: 2}", "--train.epochs=2",
        "--train.average_last=2", "--train.log_every=1", "--train.progress=false"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash scripts")


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict[str, str]:
    """PATH with a `speakertrip` command running this checkout, as an installed one would."""
    installed = Path(sys.executable).with_name("speakertrip")
    bin_dir = installed.parent
    if not installed.is_file():
        bin_dir = tmp_path_factory.mktemp("bin")
        (bin_dir / "speakertrip").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m speakertrip "$@"\n')
        (bin_dir / "speakertrip").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_recipe(corpus: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "recipes" / corpus / "run.sh"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def ran(output: str) -> list[str]:
    """The commands a run started (its '$ ...' log lines)."""
    return [line.split("] $ ", 1)[1] for line in output.splitlines() if "] $ " in line]


def check_cosine_scores(scores_path: Path, store_path: Path, enrolments: dict[str, list[str]] | None = None) -> None:
    """Brute force: every score is the cosine of the stored embeddings (an enrolment id: its files' mean)."""
    store = load_store(store_path)

    def unit(key: str) -> np.ndarray:
        if enrolments and key in enrolments:
            vector = np.mean([unit(name) for name in enrolments[key]], axis=0)
        else:
            vector = store.get(key).astype(np.float64)
        return vector / np.linalg.norm(vector)

    scored = read_scores(scores_path)
    expected = [unit(enroll) @ unit(test) for enroll, test in zip(scored.enroll, scored.test)]
    np.testing.assert_allclose(scored.scores, expected, atol=1e-5)


def check_results_row(exp: Path, row: int, cosine: str, asnorm: str) -> None:
    """Row ``row`` of results.md holds EER % and minDCF(0.01) of the two score files."""
    cells = [cell.strip() for cell in (exp / "results.md").read_text().splitlines()[2 + row].split("|")[2:6]]
    expected = []
    for name in (cosine, asnorm):
        scored = read_scores(exp / "scores" / f"{name}.txt")
        metrics = compute_metrics(scored.scores, scored.labels, [0.01])
        expected += [f"{100 * metrics.eer:.2f}", f"{metrics.min_dcf[0.01]:.4f}"]
    assert cells == expected


@pytest.fixture(scope="module")
def voxceleb(tmp_path_factory) -> dict[str, Path]:
    """VoxCeleb1 as wav with Vox1-O's list; VoxCeleb2 dev as released, m4a under dev/aac."""
    root = tmp_path_factory.mktemp("corpora")
    vox1 = make_voxceleb_tree(root / "VoxCeleb1", num_speakers=4, sessions=2, utterances_per_session=2,
                              duration=(0.8, 1.5), seed=1)
    source = make_voxceleb_tree(root / "vox2_wav", num_speakers=4, sessions=2, utterances_per_session=2,
                                duration=(0.8, 1.5), seed=2, trial_list=False) / "wav"
    ffmpeg = find_ffmpeg()
    for wav in sorted(source.rglob("*.wav")):
        m4a = root / "VoxCeleb2" / "dev" / "aac" / wav.relative_to(source).with_suffix(".m4a")
        m4a.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    shutil.rmtree(source.parent)
    return {"vox1": vox1, "vox2": root / "VoxCeleb2"}


def kill_when_checkpointed(process: subprocess.Popen, checkpoint: Path) -> None:
    """SIGKILL the whole run (run.sh and its speakertrip) as soon as training has saved a checkpoint."""
    while not checkpoint.is_file():
        if process.poll() is not None:
            pytest.fail(f"the run ended before saving {checkpoint}:\n{process.stdout.read()}")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_voxceleb_run_killed_resumed_then_skipped(voxceleb, tmp_path, environment):
    args = ["--vox1", str(voxceleb["vox1"]), "--vox2", str(voxceleb["vox2"]), *TINY,
            "--data.batches_per_epoch=8", "--train.checkpoint_every=1"]  # 16 steps, a checkpoint at each
    exp = tmp_path / "exp" / "ecapa_triplet"
    process = subprocess.Popen(["bash", str(REPO / "recipes/voxceleb/run.sh"), *args], cwd=tmp_path, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    kill_when_checkpointed(process, exp / "checkpoints" / "last.pt")
    stopped_at = load_checkpoint(exp / "checkpoints" / "last.pt")["step"]
    assert stopped_at < 16 and not (exp / "model").exists()

    done = run_recipe("voxceleb", args, tmp_path, environment)
    assert done.returncode == 0, done.stdout + done.stderr
    commands = ran(done.stdout)
    assert not any(command.startswith(("speakertrip prepare", "speakertrip convert")) for command in commands)
    assert "continuing the run in exp/ecapa_triplet from checkpoints/last.pt" in done.stdout
    assert commands[0].startswith("launch train ") and commands[0].endswith(" --resume")
    assert [command.split()[:2] for command in commands[1:]] == [
        ["speakertrip", "average"], ["launch", "embed"], ["launch", "embed"], ["speakertrip", "score"],
        ["speakertrip", "score"], ["speakertrip", "metrics"]]
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 17))  # none twice, none missing

    # what the stages made: VoxCeleb2 decoded from m4a, the cohort embedded, scores from the stores
    assert len((tmp_path / "data/vox2/utts.jsonl").read_text().splitlines()) == 16
    assert len(list((tmp_path / "data/vox2_wav").rglob("*.wav"))) == 16
    assert len(load_store(exp / "embeddings/vox2_dev.npz")) == 16
    check_cosine_scores(exp / "scores/veri_test2.cosine.txt", exp / "embeddings/vox1_test.npz")
    trials = read_trials(tmp_path / "data/vox1/trials/veri_test2.txt")
    asnorm = read_scores(exp / "scores/veri_test2.asnorm.txt")
    assert list(asnorm.enroll) == list(trials.enroll) and list(asnorm.labels) == list(trials.labels)
    check_results_row(exp, 0, "veri_test2.cosine", "veri_test2.asnorm")
    assert "--augment=null" in (exp / "results.md").read_text() and (exp / "det.png").is_file()

    # a re-run does nothing; a changed --top-n redoes the AS-norm scores and the report only
    made = {path: path.stat().st_mtime_ns for path in [*exp.rglob("*"), *(tmp_path / "data").rglob("*")]}
    again = run_recipe("voxceleb", args, tmp_path, environment)
    assert again.returncode == 0 and ran(again.stdout) == [], again.stdout + again.stderr
    assert again.stdout.count("done before, skipped") == 9  # prepare x2, convert, train, average, embed x2, score x2
    assert {path: path.stat().st_mtime_ns for path in made} == made
    changed = run_recipe("voxceleb", [*args, "--top-n", "2", "--stage", "5"], tmp_path, environment)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert [" ".join(command.split()[:2]) for command in ran(changed.stdout)] == ["speakertrip score",
                                                                                   "speakertrip metrics"]
    assert "--top-n 2" in ran(changed.stdout)[0]

    # other training settings never silently continue a finished run
    other = run_recipe("voxceleb", [*args, "--stage", "2", "--train.epochs=3"], tmp_path, environment)
    assert other.returncode == 2 and "holds a finished run made by other settings" in other.stderr


@pytest.mark.slow
def test_cnceleb_run_every_stage_both_enrolment_protocols(tmp_path, environment):
    cnceleb1 = make_cnceleb_tree(tmp_path / "CN-Celeb_flac", num_speakers=6, eval_speakers=2, duration=(0.8, 1.5))
    cnceleb2 = make_cnceleb2_tree(tmp_path / "CN-Celeb2_flac", num_speakers=3, duration=(0.8, 1.5))
    args = ["--cnceleb1", str(cnceleb1), "--cnceleb2", str(cnceleb2), *TINY]
    done = run_recipe("cnceleb", args, tmp_path, environment)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(ran(done.stdout)) == 10  # prepare, train, average, embed x2, score x4, metrics
    exp, data = tmp_path / "exp" / "ecapa_triplet", tmp_path / "data" / "cnceleb"
    for row, protocol in enumerate(("concat", "avg")):
        check_cosine_scores(exp / f"scores/CNC-Eval-{protocol}.cosine.txt", exp / "embeddings/cnceleb_eval.npz",
                            read_enrolment_map(data / f"enroll_{protocol}.map"))
        check_results_row(exp, row, f"CNC-Eval-{protocol}.cosine", f"CNC-Eval-{protocol}.asnorm")
    assert len(load_store(exp / "embeddings/cnceleb_train.npz")) == 4 * 4 + 3 * 4  # the cohort: CN-Celeb1 dev + 2
    again = run_recipe("cnceleb", args, tmp_path, environment)
    assert again.returncode == 0 and ran(again.stdout) == [], again.stdout + again.stderr


@pytest.mark.parametrize("corpus,args,message", [
    ("voxceleb", ["--vox3", "x"], "unknown option --vox3; recipe options: --stage --stop-stage"),
    ("voxceleb", ["--stage", "1"], "stage 1 needs --vox1 DIR and --vox2 DIR"),
    ("voxceleb", ["--gpus", "0"], "--gpus takes a number of GPUs (1 or more), got '0'"),
    ("voxceleb", ["--config", "conf/nope.yaml"], "--config conf/nope.yaml: no such file"),
    ("voxceleb", ["--optim.lr", "0.1"], "unknown option --optim.lr; "),
    ("cnceleb", ["--stage", "1"], "stage 1 needs --cnceleb1 DIR"),
    ("cnceleb", ["stray"], "unexpected argument 'stray'"),
])
def test_bad_options_fail_with_one_line(corpus, args, message, tmp_path, environment):
    result = run_recipe(corpus, args, tmp_path, environment)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "exp").exists()


def test_help_and_a_missing_speakertrip(tmp_path, environment):
    shown = run_recipe("cnceleb", ["--help"], tmp_path, environment)
    assert shown.returncode == 0 and "--cnceleb2 DIR" in shown.stdout and "6 report" in shown.stdout
    bare = {**environment, "PATH": os.pathsep.join(str(Path(shutil.which(tool)).parent) for tool in ("bash", "sed"))}
    if shutil.which("speakertrip", path=bare["PATH"]):
        pytest.skip("speakertrip is installed system-wide")
    missing = run_recipe("voxceleb", ["--stage", "4"], tmp_path, bare)
    assert missing.returncode == 2 and "speakertrip is not on PATH" in missing.stderr
