"""Fine-tuning under DDP with 2 CPU processes (gloo): the ranks never disagree on when to stop, and frozen
layers do not leave DDP waiting for their gradients.

Each rank gets a short collective timeout, so that a rank left waiting fails the test in seconds instead of
hanging (on GPUs, NCCL would wait for its own timeout).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speakertrip.corpora.voxceleb import prepare_voxceleb
from speakertrip.data.manifest import read_manifest
from speakertrip.testing import make_voxceleb_tree, tiny_model_artifact
from speakertrip.training.finetune import FinetuneTrainer, frame_layers, prepare_finetune_data, train_config
from speakertrip.training.finetune_config import FinetuneConfig

WORLD = 2
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepared_run(root, **options):
    """The fine-tuning data and initial model written once (as :func:`finetune` does), and the options."""
    from speakertrip.models import load_model

    config = FinetuneConfig(speakers_per_batch=2, utterances_per_speaker=2, crop_seconds=0.5, workers=0,
                            progress=False, device="cpu", dev_speakers=2, average_last=1, **options)
    corpus = make_voxceleb_tree(root / "corpus", num_speakers=6, sessions=2, utterances_per_session=2,
                                duration=(0.6, 1.0), trial_list=False)
    manifest = prepare_voxceleb(corpus, root / "corpus_data", workers=1, progress=False)["utts"]
    start = load_model(tiny_model_artifact(root / "model"))
    paths = prepare_finetune_data(manifest, root / "ft" / "data", config)
    start.save(root / "ft" / "initial_model")
    return config, paths


def run_rank(rank: int, root: str, port: int, config: FinetuneConfig, paths: dict) -> None:
    from pathlib import Path

    from speakertrip.models import load_model
    from speakertrip.training.distributed import Distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=COLLECTIVE_TIMEOUT)
    out = Path(root) / "ft"
    report: dict = {"rank": rank}
    try:
        start = load_model(out / "initial_model")
        speakers = len({u.spk_id for u in read_manifest(paths["train"])})
        train = train_config(config, out, out / "initial_model", start, paths, speakers)
        trainer = FinetuneTrainer(train, config, Distributed(WORLD, rank, 0), torch.device("cpu"))
        trainer.run()
        report.update(step=trainer.step, best=trainer.best,
                      weights={key: value.tolist() for key, value in trainer.model.state_dict().items()})
    except Exception:  # noqa: BLE001 - the parent reports what went wrong on which rank
        report["error"] = traceback.format_exc()
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(report))
    if "error" not in report:
        dist.destroy_process_group()


def run_ranks(root, config, paths) -> list[dict]:
    context = mp.start_processes(run_rank, args=(str(root), free_port(), config, paths), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 150  # ranks report their own errors; a collective times out in 20 s
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):  # False until every rank has ended
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish within 150 s")
    reports = [json.loads((root / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    errors = [f"rank {r['rank']}: {r['error']}" for r in reports if "error" in r]
    assert not errors, "\n".join(errors)
    return reports


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_dev_eer_tie_stops_every_rank_at_the_same_step(tmp_path):
    """A learning rate too small to move any score: every validation gives the same dev EER (a tie), which
    counts as progress on every rank, so no rank stops early and leaves the other waiting in a collective."""
    config, paths = prepared_run(tmp_path, steps=8, validate_every=2, patience=1, lr=1e-9, min_lr=0.0,
                                 warmup=0)
    reports = run_ranks(tmp_path, config, paths)
    records = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    eers = [r["eer"] for r in records if r["kind"] == "validation"]
    assert len(eers) == 4 and len(set(eers)) == 1, eers  # the tie the test is about
    assert [r["step"] for r in reports] == [8, 8]
    assert reports[0]["best"] == reports[1]["best"] == {"eer": eers[0], "step": 8}  # a tie moves the best
    assert reports[0]["weights"] == reports[1]["weights"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_frozen_layers_train_under_ddp(tmp_path):
    """freeze_layers 2 for 3 steps: the frozen layers keep the initial weights, the others move, alike on both ranks."""
    from speakertrip.models import load_model

    config, paths = prepared_run(tmp_path, steps=3, validate_every=3, patience=1, lr=1e-2, freeze_layers=2)
    reports = run_ranks(tmp_path, config, paths)
    assert [r["step"] for r in reports] == [3, 3]
    assert reports[0]["weights"] == reports[1]["weights"]  # DDP kept the ranks' weights equal
    initial = load_model(tmp_path / "ft" / "initial_model")
    trained = {key: torch.tensor(value) for key, value in reports[0]["weights"].items()}
    for index, layer in enumerate(frame_layers(initial.encoder)):
        prefix = next(name for name, module in initial.named_modules() if module is layer)
        moved = [key for key, value in layer.named_parameters()
                 if not torch.equal(trained[f"{prefix}.{key}"].to(value.dtype), value.detach())]
        assert (not moved) if index < 2 else moved, (index, moved)
