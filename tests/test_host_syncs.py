"""A training step never waits on the host: counted op by op on the CPU, with the same counts a GPU would see."""

from __future__ import annotations

import pytest
import torch
import yaml

from speakertrip.losses import build_loss
from speakertrip.losses.selection import grouped_batch
from speakertrip.training.config import load_config
from speakertrip.training.distributed import Distributed
from speakertrip.testing.host_syncs import HostSyncCounter
from speakertrip.training.metrics_log import MetricsLog
from speakertrip.training.trainer import Trainer

ENCODERS = {"ecapa": {"channels": 32, "attention_channels": 16, "se_channels": 16, "embedding_dim": 32},
            "tdnn": {"channels": 32, "stats_channels": 64, "embedding_dim": 32}}
LOSSES = {"triplet": ("triplet", {"margin": 0.3, "miner": "batch_hard"}),
          "multi_positive": ("multi_positive", {"margin": 0.3, "hardest_negatives": 2}),
          "aam": ("triplet+aam", {"aam_weight": 0.5, "metric": {"miner": "semi_hard"}})}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.testing import make_musan_tree, make_rir_tree, make_voxceleb_tree

    root = tmp_path_factory.mktemp("syncs")
    tree = make_voxceleb_tree(root / "vox", num_speakers=8, sessions=2, utterances_per_session=3,
                              duration=(0.6, 1.2), seed=3)
    return {"train": prepare_voxceleb(tree, root / "data", workers=1, progress=False)["train"],
            "musan": make_musan_tree(root / "musan", files=2, duration=0.6), "rirs": make_rir_tree(root / "rirs")}


def trainer_for(data, tmp_path, encoder: str, loss: str, device: str = "cpu", **extra) -> Trainer:
    kind, options = LOSSES[loss]
    values = {"data.train": str(data["train"]), "data.crop_seconds": 0.5, "data.workers": 0,
              "data.batches_per_epoch": 4, "features.n_mels": 24, "features.spec_time_masks": 2,
              "features.spec_freq_masks": 2, "model.encoder": encoder, "model.options": ENCODERS[encoder],
              "loss.p": 4, "loss.k": 3, "loss.kind": kind, "loss.options": options, "train.exp_dir": str(tmp_path),
              "train.progress": False, "augment.musan": str(data["musan"]), "augment.rirs": str(data["rirs"]),
              "augment.speed_factors": [0.9, 1.0, 1.1], **extra}
    arguments = [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for key, value in values.items()]
    trainer = Trainer(load_config(None, arguments), Distributed(), torch.device(device))
    return trainer


@pytest.mark.parametrize("encoder", ["ecapa", "tdnn"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_a_training_step_has_no_host_syncs(data, tmp_path, encoder, loss, one_thread):
    trainer = trainer_for(data, tmp_path, encoder, loss)
    batches = iter(trainer.loader)
    first, second = next(batches), next(batches)
    assert first.augment is not None and second.augment is not None  # read with the batch
    trainer.train_step(first)  # a first step may move constants (resampling kernels) to the device once
    with HostSyncCounter() as counter:
        trainer.train_step(second)
    assert counter.total == 0, counter.report()
    assert trainer.step == 2 and all(torch.isfinite(record["loss"]) for record in trainer._window)
    trainer.log = MetricsLog(tmp_path / "metrics.jsonl")
    with HostSyncCounter() as counter:  # a logging step reads the means: one host read
        shown = trainer.log_window()
    assert counter.total == 1 and float(shown["loss"]) > 0 and shown["data"].endswith("%"), counter.report()


def test_the_counter_sees_each_kind_of_host_work():
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        x.sum().item()
        x[x > 2]
        torch.nonzero(x)
        x.cpu(), x.tolist()
        torch.rand(3)
        torch.as_tensor([1.0, 2.0])
        x.repeat_interleave(torch.tensor([1, 1, 1, 1, 1, 1]))
    assert dict(counter.counts) == {"sync": 4, "to_host": 2, "from_host": 3}, counter.report()
    with HostSyncCounter() as counter:
        torch.rand(3, device=x.device), x.sum(), x[1], x[torch.arange(2, device=x.device)]
        x.repeat_interleave(2)
    assert counter.total == 0, counter.report()


MINERS = ["batch_all", "batch_hard", "semi_hard", "hardest_k", {"name": "random", "seed": 3},
          {"name": "distance_weighted", "seed": 3}]


@pytest.mark.parametrize("miner", MINERS, ids=lambda m: m if isinstance(m, str) else m["name"])
@pytest.mark.parametrize("labels", [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 3], [0, 0, 1, 1, 1, 2, 2, 2, 3]],
                         ids=["pxk", "ragged"])
def test_fixed_layout_gives_the_loss_and_gradients_of_the_checked_one(miner, labels):
    """Inside grouped_batch(3) pairs come from a fixed table (a label with 2 rows leaves a masked slot)."""
    if not isinstance(miner, str) and len({labels.count(label) for label in labels}) > 1:
        pytest.skip("a sampling miner draws once per table row: a ragged batch's masked slots shift its draws")
    labels = torch.tensor(labels)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(len(labels), 8, generator=generator, dtype=torch.float64))
    results = []
    for fixed in (False, True):
        loss = build_loss("triplet", margin=0.6, miner=miner)
        leaf = embeddings.clone().requires_grad_()
        with grouped_batch(3) if fixed else torch.enable_grad():
            value = loss(leaf, labels)
        value.backward()
        results.append((value.detach(), leaf.grad, {k: v.detach() for k, v in loss.last_stats.items()}))
    (dynamic, dynamic_grad, dynamic_stats), (fixed, fixed_grad, fixed_stats) = results
    assert dynamic > 0
    torch.testing.assert_close(fixed, dynamic)
    torch.testing.assert_close(fixed_grad, dynamic_grad)
    for key, value in dynamic_stats.items():
        torch.testing.assert_close(fixed_stats[key].double(), value.double(), msg=key)


def test_fixed_layout_multi_positive_and_aam_without_syncs():
    labels = torch.arange(4).repeat(3)
    embeddings = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(1)))
    for kind, options in [("multi_positive", {"hardest_negatives": 3}), ("triplet+aam", {}),
                          ("aam", {}), ("triplet", {"miner": {"name": "hardest_k", "k": 2}})]:
        loss = build_loss(kind, embedding_dim=8, num_classes=4, **options)
        reference = loss(embeddings, labels)
        with grouped_batch(3), HostSyncCounter() as counter:
            value = loss(embeddings, labels)
        assert counter.total == 0, (kind, counter.report())
        torch.testing.assert_close(value, reference)


def test_grouped_batch_rejects_a_bad_size():
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        with grouped_batch(0):
            pass


def test_tdnn_pools_in_float32_under_bf16_autocast():
    from speakertrip.models.tdnn import MaskedStatisticsPooling

    x = torch.randn(3, 40, 6, dtype=torch.float64) * 3 + 100  # a large mean: bf16 would lose the variance
    lengths = torch.tensor([40, 25, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = MaskedStatisticsPooling(eps=0.0)(x.to(torch.bfloat16), lengths)
    assert pooled.dtype == torch.float32
    rounded = x.to(torch.bfloat16).double()
    for row, length in enumerate(lengths):
        valid = rounded[row, :length]
        expected = torch.cat([valid.mean(0), valid.std(0)]).float()
        torch.testing.assert_close(pooled[row, 0], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_training_step_on_gpu_has_no_host_syncs(data, tmp_path, amp):
    trainer = trainer_for(data, tmp_path, "ecapa", "multi_positive", device="cuda")
    trainer.amp_dtype = torch.bfloat16 if amp == "bf16" else None
    batches = iter(trainer.loader)
    trainer.train_step(next(batches))
    batch = next(batches).to(trainer.device)  # the one host-to-device copy a step makes, done before counting
    torch.cuda.synchronize()
    with HostSyncCounter() as counter:
        trainer.train_step(batch)
    assert counter.total == 0, counter.report()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_compiled_bf16_step_with_loader_workers_never_syncs(data, tmp_path):
    """The trainer's real set-up (loader workers, pinned memory, compiled encoder, bf16): a whole ``train_step``,
    its host-to-device copies included, under ``set_sync_debug_mode("error")``, where any sync raises."""
    trainer = trainer_for(data, tmp_path, "ecapa", "multi_positive", device="cuda", **{
        "data.workers": 2, "train.compile": True, "train.amp": "bf16"})
    assert trainer.compiled and trainer.amp_dtype == torch.bfloat16
    assert trainer.loader.num_workers == 2 and trainer.loader.pin_memory
    batches = iter(trainer.loader)
    for _ in range(2):  # compilation, and constants (resampling kernels) moved to the device once
        trainer.train_step(next(batches))
    batch = next(batches)
    assert batch.waveforms.is_pinned() and batch.augment.noise.is_pinned()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert trainer.step == 3 and torch.isfinite(trainer._window[-1]["loss"])


@pytest.mark.parametrize("encoder", ["ecapa", "tdnn"])
def test_the_embedding_layer_runs_in_float32_under_bf16_autocast(encoder):
    """The encoders' final linear layer: float32 in and out under bf16 autocast (the embedding is not
    rounded to bf16 before the loss), equal to the layer in float64 on the same input."""
    from speakertrip.models.encoder import build_encoder

    torch.manual_seed(0)
    model = build_encoder(encoder, 24, ENCODERS[encoder]).eval()
    final = model.fc if encoder == "ecapa" else model.blocks[-1]
    seen = {}
    final.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0], y=output))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = model(torch.randn(3, 40, 24), torch.tensor([40, 30, 20]))
    assert embeddings.dtype == seen["x"].dtype == seen["y"].dtype == torch.float32
    with torch.no_grad():
        reference = final.double()(seen["x"].double()).squeeze(2 if encoder == "ecapa" else 1)
    torch.testing.assert_close(embeddings.detach().double(), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_loop_reads_the_device_only_to_log_and_to_checkpoint(data, tmp_path, one_thread):
    """Through ``Trainer.run()``: every training step has no host sync; the ones a run makes come from logging
    (one read per window) and from checkpoints, whose finiteness check (``models/artifact.py``'s
    ``check_finite``) reads one flag per model tensor: about 150 for a small model, once per checkpoint,
    which a count over a window that holds an epoch's end sees as if it were the step's."""
    trainer = trainer_for(data, tmp_path, "tdnn", "multi_positive", **{
        "train.steps": 4, "train.log_every": 2, "train.average_last": 1})
    step_counts, save_events = [], []
    train_step, save = trainer.train_step, trainer.save

    def counted_step(batch, paths=()):
        with HostSyncCounter() as counter:
            train_step(batch, paths)
        step_counts.append(counter.total)

    def counted_save(name="last.pt"):
        with HostSyncCounter(stack=True) as counter:
            save(name)
        save_events.extend(where for _, where in counter.events)

    trainer.train_step, trainer.save = counted_step, counted_save
    trainer.run()
    assert step_counts == [0, 0, 0, 0]
    assert save_events and all("training/checkpoint.py" in where and "models/artifact.py" in where
                               for where in save_events)
    floats = sum(value.is_floating_point() for value in trainer.module.state_dict().values())
    assert len(save_events) == floats * 2  # two checkpoints (the epoch's end, the run's end), one read a tensor
