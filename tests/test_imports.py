"""Scoring and corpus preparation run without torch: the stages that need no model import none.

Each check runs in a fresh interpreter, so what another test imported cannot hide an import.
"""

import subprocess
import sys

import numpy as np

from speakertrip.data.embedding_store import EmbeddingStore, save_store
from speakertrip.testing import make_voxceleb_tree

TORCH_FREE = ["speakertrip.scoring", "speakertrip.scoring.trial_scoring", "speakertrip.data.trials",
              "speakertrip.data.manifest", "speakertrip.data.embedding_store", "speakertrip.corpora.voxceleb",
              "speakertrip.corpora.cnceleb", "speakertrip.corpora.synth", "speakertrip.cli"]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_scoring_and_preparation_modules_import_no_torch():
    imports = "; ".join(f"import {name}" for name in TORCH_FREE)
    out = run_python(f"import sys; {imports}; print(sorted({{'torch', 'speechbrain'}} & set(sys.modules)))")
    assert out.strip() == "[]"


def test_prepare_score_and_metrics_commands_run_without_torch(tmp_path):
    tree = make_voxceleb_tree(tmp_path / "vox", num_speakers=3, sessions=2, utterances_per_session=2,
                              duration=(0.3, 0.5))
    keys = sorted(path.relative_to(tree / "wav").as_posix() for path in (tree / "wav").rglob("*.wav"))
    store = save_store(EmbeddingStore(keys, np.random.default_rng(0).normal(size=(len(keys), 8)).astype(np.float32)),
                       tmp_path / "emb.npz")
    commands = [["prepare", "voxceleb", "--root", str(tree), "--out", str(tmp_path / "data")],
                ["score", "--trials", str(tree / "veri_test2.txt"), "--embeddings", str(store),
                 "--out", str(tmp_path / "scores.txt")],
                ["metrics", str(tmp_path / "scores.txt"), "--json"]]
    out = run_python("import sys\nfrom speakertrip.cli import main\n"
                     f"for argv in {commands!r}:\n    assert main(argv) == 0, argv\n"
                     "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    assert out.strip().endswith("no torch")


def test_building_the_command_line_imports_no_numpy():
    # every command builds the whole parser (`speakertrip metrics --help` too): help texts must not import a stage
    out = run_python("import sys\nfrom speakertrip.cli import build_parser\nparser = build_parser()\n"
                     "parser.parse_args(['prepare', 'synth', '--out', 'x'])\n"
                     "print(sorted({'numpy', 'torch', 'soundfile'} & set(sys.modules)))")
    assert out.strip() == "[]"
