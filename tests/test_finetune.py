"""`speakertrip finetune` end to end on the test corpus: split, dev EER before/after, resume, frozen layers."""

from __future__ import annotations

import json
import re

import pytest
import torch

import speakertrip as st
from speakertrip.cli import main
from speakertrip.data.manifest import read_manifest
from speakertrip.errors import ConfigError
from speakertrip.testing import make_voxceleb_tree, tiny_model_artifact
from speakertrip.training.finetune import finetune, frame_layers, freeze_layers
from speakertrip.training.finetune_config import FinetuneConfig

FAST = ["--steps", "6", "--validate-every", "2", "--patience", "5", "--speakers-per-batch", "4",
        "--utterances-per-speaker", "2", "--crop-seconds", "0.5", "--workers", "0", "--no-progress",
        "--device", "cpu", "--dev-speakers", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    tree = make_voxceleb_tree(root / "corpus", num_speakers=6, sessions=2, utterances_per_session=2,
                              duration=(0.6, 1.0), trial_list=False)
    return tree / "wav", tiny_model_artifact(root / "model")  # the folder whose subfolders are the speakers


@pytest.mark.slow
def test_finetune_end_to_end_and_resume(corpus, tmp_path, capsys):
    data, model = corpus
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), *FAST,
                 "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "4 fine-tuning, 2 dev" in printed and "dev EER before" in printed and "dev EER after" in printed
    summary = json.loads((out / "finetune.json").read_text())
    train, dev = read_manifest(out / "data" / "train.jsonl"), read_manifest(out / "data" / "dev.jsonl")
    assert not {u.spk_id for u in train} & {u.spk_id for u in dev}  # dev speakers never train
    assert len({u.spk_id for u in dev}) == 2 and len(train) + len(dev) == 24
    tuned = st.load_model(out / "model")
    assert tuned.evaluation["eer"] == pytest.approx(summary["eer_after"]) and tuned.threshold is not None
    initial = st.load_model(model)
    assert initial.identity == st.load_model(out / "initial_model").identity != tuned.identity
    assert summary["steps"] == 4 and summary["eer_before"] == pytest.approx(
        _dev_eer(initial, out), abs=1e-9)
    # resume to more steps: it continues from step 4, not from scratch
    with pytest.raises(ConfigError, match=r"already holds a run .*--resume"):
        finetune(model, data, out, FinetuneConfig(steps=6))
    with pytest.warns(UserWarning, match=r"changed config: train.steps"):  # 4 → 6 steps
        assert main(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), *FAST,
                     "--resume"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("kind") == "validation"]
    assert steps == [2, 4, 6]
    assert json.loads((out / "finetune.json").read_text())["steps"] == 6


def _dev_eer(model, out) -> float:
    from speakertrip.evaluation.recording import validate

    return validate(model, read_manifest(out / "data" / "dev.jsonl"), out / "data" / "dev_trials.txt")["eer"]


@pytest.mark.slow
def test_finetune_stops_on_dev_eer_and_mixes_source(corpus, tmp_path):
    data, model = corpus
    source = make_voxceleb_tree(tmp_path / "source", num_speakers=3, seed=7, duration=(0.6, 1.0), trial_list=False)
    main(["prepare", "voxceleb", "--root", str(source), "--out", str(tmp_path / "source_data")])
    config = FinetuneConfig(steps=40, validate_every=2, patience=1, speakers_per_batch=4, utterances_per_speaker=2,
                            crop_seconds=0.5, workers=0, progress=False, device="cpu", dev_speakers=2,
                            source=str(tmp_path / "source_data" / "utts.jsonl"), source_speakers=2, lr=1e-2,
                            freeze_layers=2)
    result = finetune(model, data, tmp_path / "ft", config)
    assert result.source_speakers == 2 and result.train_speakers == 4
    assert result.steps < 40 and result.steps - result.best_step == 2  # one validation without improvement
    train = read_manifest(tmp_path / "ft" / "data" / "train.jsonl")
    assert sum(u.spk_id.startswith("source:") for u in {u.spk_id: u for u in train}.values()) == 2
    # the frozen layers kept their weights; the later ones moved
    initial, tuned = st.load_model(model), st.load_model(tmp_path / "ft" / "model")
    layers = list(zip(frame_layers(initial.encoder), frame_layers(tuned.encoder)))
    for index, (before, after) in enumerate(layers):
        change = max((a.float() - b.float()).abs().max().item() for key, (a, b) in
                     zip(before.state_dict(), zip(before.state_dict().values(), after.state_dict().values()))
                     if not key.endswith("num_batches_tracked"))
        assert change < 1e-6 if index < 2 else change > 1e-4, (index, change)


def test_freeze_layers_and_bad_options(corpus, tmp_path):
    _, model = corpus
    network = st.load_model(model)
    assert len(frame_layers(network.encoder)) == 5
    with pytest.raises(ConfigError, match=r"freeze_layers=6, but the encoder has 5 frame-level layers"):
        freeze_layers(network.encoder, 6)
    tdnn = st.load_model(tiny_model_artifact(tmp_path / "tdnn", encoder="tdnn"))
    assert len(frame_layers(tdnn.encoder)) == 5
    frozen, norms = freeze_layers(tdnn.encoder, 1)
    assert frozen == sum(p.numel() for p in frame_layers(tdnn.encoder)[0].parameters())
    assert norms and all(norm in list(frame_layers(tdnn.encoder)[0].modules()) for norm in norms)
    with pytest.raises(ConfigError, match=r"--steps must be >= 1, got 0"):  # before the data is read
        finetune(model, tmp_path / "missing", tmp_path / "z", FinetuneConfig(steps=0))
    few = make_voxceleb_tree(tmp_path / "few", num_speakers=3, trial_list=False) / "wav"
    assert main(["finetune", "--model", str(model), "--data", str(few), "--out", str(tmp_path / "x"),
                 "--dev-speakers", "2"]) == 2
    assert main(["finetune", "--model", str(model), "--data", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "y")]) == 2


@pytest.mark.slow
def test_source_statistics_are_those_of_the_source_crops(corpus, tmp_path):
    """--source-statistics: the saved model is the averaged snapshots with BatchNorm statistics re-estimated on
    crops of the source manifest (recomputed here), weights untouched; every snapshot holds the statistics
    re-estimated at its validation; without --source it is refused."""
    from speakertrip.training.averaging import average_snapshots, list_snapshots
    from speakertrip.training.batchnorm import reestimate_batchnorm
    from speakertrip.training.config import load_config

    data, model = corpus
    source = make_voxceleb_tree(tmp_path / "source", num_speakers=3, seed=7, duration=(0.6, 1.0), trial_list=False)
    main(["prepare", "voxceleb", "--root", str(source), "--out", str(tmp_path / "source_data")])
    manifest = tmp_path / "source_data" / "utts.jsonl"
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), *FAST,
                 "--source", str(manifest), "--source-statistics"]) == 0
    config = load_config(out / "config.yaml")
    expected, _ = average_snapshots(config, list_snapshots(out / "checkpoints"))
    averaged_weights = {name: value.clone() for name, value in expected.named_parameters()}
    reestimate_batchnorm(expected, read_manifest(manifest), config.data.crop_seconds, config.features.sample_rate)
    tuned = st.load_model(out / "model")
    assert tuned.evaluation["batchnorm_crops"] == len(read_manifest(manifest))
    torch.testing.assert_close(tuned.state_dict(), expected.state_dict(), rtol=0, atol=0)
    assert all(torch.equal(value, averaged_weights[name]) for name, value in tuned.named_parameters())
    # each validation re-estimated them before the snapshot: training and dev validation saw source statistics
    snapshot = list_snapshots(out / "checkpoints")[-1]
    step = int(snapshot.stem.split("_")[1])
    at_step, _ = average_snapshots(config, [snapshot])
    saved = {name: value.clone() for name, value in at_step.state_dict().items()}
    reestimate_batchnorm(at_step, read_manifest(manifest), config.data.crop_seconds, config.features.sample_rate,
                         seed=step)
    torch.testing.assert_close(at_step.state_dict(), saved, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"--source-statistics.*--source MANIFEST"):
        finetune(model, data, tmp_path / "refused", FinetuneConfig(source_statistics=True))


@pytest.mark.slow
def test_freeze_statistics_keeps_every_batchnorm_statistic(corpus, tmp_path):
    """--freeze-statistics: BatchNorm in inference mode while fine-tuning; statistics unchanged, weights trained."""
    from speakertrip.training.batchnorm import batch_norms

    data, model = corpus
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), *FAST,
                 "--lr", "1e-2", "--average-last", "1"]) == 0  # --freeze-statistics is the default
    initial, tuned = st.load_model(model), st.load_model(out / "model")
    for before, after in zip(batch_norms(initial), batch_norms(tuned)):
        assert torch.equal(before.running_mean, after.running_mean) and torch.equal(before.running_var,
                                                                                     after.running_var)
    assert any(not torch.allclose(a, b) for a, b in zip(initial.parameters(), tuned.parameters()))
    assert main(["finetune", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "moving"), *FAST,
                 "--no-freeze-statistics", "--average-last", "1"]) == 0
    moved = st.load_model(tmp_path / "moving" / "model")
    assert not torch.equal(batch_norms(initial)[0].running_mean, batch_norms(moved)[0].running_mean)


@pytest.mark.slow
def test_interpolation_is_a_weight_space_ensemble_with_the_initial_model(corpus, tmp_path, capsys):
    """--interpolation A: the saved weights are initial + A x (averaged snapshots - initial), recomputed here
    pair by pair; BatchNorm statistics (frozen) are the initial model's; the dev EER is the interpolated model's."""
    from speakertrip.training.averaging import average_snapshots, list_snapshots
    from speakertrip.training.config import load_config

    data, model = corpus
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), *FAST,
                 "--lr", "1e-2", "--interpolation", "0.25"]) == 0
    assert re.search(r"final weights +initial \+ 0\.25 x \(averaged - initial\)", capsys.readouterr().out)
    config = load_config(out / "config.yaml")
    assert config.model.interpolation == 0.25
    averaged, _ = average_snapshots(config, list_snapshots(out / "checkpoints"))
    initial, tuned = st.load_model(model), st.load_model(out / "model")
    start, end, saved = initial.state_dict(), averaged.state_dict(), tuned.state_dict()
    moved = 0
    for key, value in saved.items():
        if value.is_floating_point():
            expected = start[key].double() + 0.25 * (end[key].double() - start[key].double())
            torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
            moved += not torch.equal(value, end[key])
    assert moved > 10  # the average itself is not what was saved
    assert tuned.evaluation["interpolation"] == 0.25
    assert tuned.evaluation["eer"] == pytest.approx(_dev_eer(tuned, out), abs=1e-9)
    assert json.loads((out / "finetune.json").read_text())["eer_after"] == pytest.approx(tuned.evaluation["eer"])
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"--interpolation must be in \(0, 1\]"):
            finetune(model, data, tmp_path / "refused", FinetuneConfig(interpolation=bad))


def test_ge2e_gets_its_own_finetune_defaults_and_given_options_win(tmp_path):
    from speakertrip.commands.finetune import encoder_of
    from speakertrip.training.finetune_config import ENCODER_DEFAULTS, FinetuneConfig

    assert encoder_of("resemblyzer") == "ge2e"
    artifact = tmp_path / "model"
    artifact.mkdir()
    (artifact / "config.yaml").write_text("encoder:\n  name: ecapa\n  options: {}\n")
    assert encoder_of(str(artifact)) == "ecapa"
    (artifact / "config.yaml").write_text("encoder: [not, a, mapping\n")
    assert encoder_of(str(artifact)) is None  # unreadable: load_model names the problem later
    assert encoder_of("speechbrain/spkrec-ecapa-voxceleb") is None
    ge2e = FinetuneConfig.for_encoder("ge2e", lr=5e-4)
    assert ge2e.lr == 5e-4 and ge2e.freeze_layers == 3 and ge2e.crop_seconds == 1.6 and ge2e.steps == 100
    assert all(getattr(FinetuneConfig.for_encoder("ge2e"), key) == value
               for key, value in ENCODER_DEFAULTS["ge2e"].items())
    assert FinetuneConfig.for_encoder("ecapa") == FinetuneConfig() == FinetuneConfig.for_encoder(None)
