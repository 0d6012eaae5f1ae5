"""VoxCeleb1 (dev/test) and VoxCeleb2 (dev) preparation: manifests, trial lists, a speaker split.

Any audio file whose last three path parts are ``idNNNNN/<video>/<utt>.wav`` (or ``.flac``)
is an utterance, wherever it sits under the root: ``<root>/wav/...``, ``<root>/...``,
``<root>/dev/aac/...`` (VoxCeleb2 after ``speakertrip convert``) or several such trees at once.
Its ``utt_id`` is those three parts, exactly the key that VoxCeleb trial lists use.

Trial lists are the files given with ``trials`` plus any of the official names found under the
root (Vox1-O ``veri_test.txt``, Vox1-E ``list_test_all.txt``, Vox1-H ``list_test_hard.txt`` and
their cleaned ``...2.txt`` versions). The speakers of every list except Vox1-E/H (which span
all of VoxCeleb1) are held out: ``test.jsonl`` holds them, ``train.jsonl`` the others, as
VoxCeleb1 users train on "Vox1 dev" = Vox1 minus the Vox1-O speakers. Without such a list
(VoxCeleb2 alone, or another corpus in this layout) ``--test-speakers N`` holds out the last N
speakers by id, as Vox1-O holds out id10270-id10309, and writes a trial list over them
(``trials/test_speakers.txt``); without either, only ``utts.jsonl`` is written and a warning says so.

Manifest paths are relative to the output folder, so the corpus and its prepared folder can be
moved or mounted elsewhere together. Headers are cached in ``<out>/headers.tsv`` (keyed by the
path under the root, with size and mtime): a re-run reads only new or changed files.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Sequence

from speakertrip.audio.headers import HeaderCache
from speakertrip.data.manifest import Utterance, build_utterances, write_manifest
from speakertrip.data.prepared import write_dropped
from speakertrip.data.split import hold_out_speakers, make_trials, split_by_speakers, write_trials
from speakertrip.data.trials import read_trials
from speakertrip.errors import FormatError, SpeakertripError

OFFICIAL_TRIALS = ("veri_test.txt", "veri_test2.txt", "list_test_all.txt", "list_test_all2.txt",
                   "list_test_hard.txt", "list_test_hard2.txt")
WHOLE_VOX1_TRIALS = ("list_test_all", "list_test_hard")  # Vox1-E/H: not a speaker split
AUDIO_SUFFIXES = (".wav", ".flac")
SPEAKER = re.compile(r"^id\d+$")


def find_voxceleb_files(root: Path, progress: bool = False) -> tuple[list[tuple[str, str]], list[Path], int]:
    """Walk ``root``: ``(utt_id, path)`` of audio files, official trial lists found, m4a count."""
    from tqdm import tqdm

    audio, trial_lists, m4a = [], [], 0
    bar = tqdm(desc="finding files", unit="file", unit_scale=True, disable=not progress, leave=False)
    for directory, subdirectories, files in os.walk(root):
        bar.update(len(files))
        subdirectories.sort()
        parts = Path(directory).parts
        in_speaker_tree = len(parts) >= 2 and SPEAKER.match(parts[-2]) is not None
        for name in sorted(files):
            suffix = os.path.splitext(name)[1].lower()
            if in_speaker_tree and suffix in AUDIO_SUFFIXES:
                audio.append((f"{parts[-2]}/{parts[-1]}/{name}", os.path.join(directory, name)))
            elif in_speaker_tree and suffix == ".m4a":
                m4a += 1
            elif name in OFFICIAL_TRIALS:
                trial_lists.append(Path(directory, name))
    bar.close()
    return audio, trial_lists, m4a


def _match_keys(trials: list[tuple[int, str, str]], known: set[str], dropped: set[str],
                path: Path) -> list[tuple[int, str, str]]:
    """Keys must name prepared utterances (``x.wav`` may stand for a converted ``x.flac``).

    Trials on files dropped with ``skip_bad`` are left out; any other unknown key is an error.
    """
    def resolve(key: str) -> str | None:
        for candidate in (key, os.path.splitext(key)[0] + ".flac"):
            if candidate in known:
                return candidate
            if candidate in dropped:
                return None
        raise FormatError(f"trial key {key!r} is not among the {len(known)} utterances found under the root "
                          "(is part of the corpus missing, e.g. the VoxCeleb1 test set?)", path)
    resolved = [(label, resolve(enrol), resolve(test)) for label, enrol, test in trials]
    return [(label, enrol, test) for label, enrol, test in resolved if enrol and test]


def prepare_voxceleb(root: str | Path, out: str | Path, trials: Sequence[str | Path] = (), workers: int = 8,
                     skip_bad: bool = False, deep: bool = False, progress: bool = True,
                     test_speakers: int = 0) -> dict[str, Path]:
    """Write ``<out>/utts.jsonl``, ``<out>/trials/*.txt`` and, with a held-out list, train/test manifests.

    Returns the paths written: ``"utts"``, ``"train"``, ``"test"`` and one entry per trial list
    (its file stem, e.g. ``"veri_test2"``). Re-running rewrites the same files. ``test_speakers``
    holds out that many more speakers (the last by id) with a trial list over them.

    >>> import tempfile
    >>> from speakertrip.testing import make_voxceleb_tree
    >>> paths = prepare_voxceleb(make_voxceleb_tree(tempfile.mkdtemp()), tempfile.mkdtemp(), progress=False)
    >>> sorted(paths)
    ['test', 'train', 'utts', 'veri_test2']
    """
    root, out = Path(os.path.abspath(root)), Path(out)  # walked paths are then absolute already
    if not root.is_dir():
        raise SpeakertripError(f"{root}: no such corpus folder")
    found, found_trials, m4a = find_voxceleb_files(root, progress)
    if not found:
        hint = f"; it holds {m4a} .m4a files: convert them first with `speakertrip convert`" if m4a else ""
        raise SpeakertripError(f"{root}: no audio in the VoxCeleb layout (idNNNNN/<video>/<utt>.wav){hint}")
    entries = [(utt_id, utt_id.partition("/")[0], path) for utt_id, path in found]
    headers = HeaderCache(out / "headers.tsv", root=root)
    utterances, dropped = build_utterances(entries, skip_bad=skip_bad, workers=workers, deep=deep, progress=progress,
                                           headers=headers, relative_to=os.path.abspath(out))  # movable together
    headers.save()
    paths = {"utts": write_manifest(utterances, out / "utts.jsonl")}
    known, dropped_ids = {u.utt_id for u in utterances}, {utt_id for utt_id, _ in dropped}
    held_out: set[str] = set()
    lists = {Path(p).name: Path(p) for p in [*found_trials, *trials]}  # given lists win over found ones
    for name, source in sorted(lists.items()):
        trials = read_trials(source, "voxceleb")
        listed = [(int(label), enrol, test) for label, enrol, test in zip(trials.labels, trials.enroll, trials.test)]
        matched = _match_keys(listed, known, dropped_ids, source)
        if len(matched) < len(listed):
            warnings.warn(f"{name}: left out {len(listed) - len(matched)} trials on files dropped by --skip-bad",
                          stacklevel=2)
        target = write_trials(matched, out / "trials" / name)
        paths[target.stem] = target
        if not target.stem.startswith(WHOLE_VOX1_TRIALS):
            held_out |= {key.split("/")[0] for _, enrol, test in matched for key in (enrol, test)}
    if test_speakers:
        held_out |= _hold_out_test_speakers(utterances, held_out, test_speakers, out, paths)
    elif not held_out:
        reason = f"the trial lists ({', '.join(sorted(lists))}) span all of VoxCeleb1" if lists else \
            f"no trial list found ({', '.join(OFFICIAL_TRIALS)}) and none given"
        warnings.warn(f"{root}: {reason}, so there is no train/test split: no train.jsonl or test.jsonl was written. "
                      "Hold out speakers with --test-speakers N (prepare_voxceleb(..., test_speakers=N)) or give a "
                      "Vox1-O-style --trials FILE", stacklevel=2)
    if held_out:
        train, test = split_by_speakers(utterances, held_out)
        paths["train"] = write_manifest(train, out / "train.jsonl")
        paths["test"] = write_manifest(test, out / "test.jsonl")
    if dropped:
        paths["dropped"] = write_dropped(dropped, out)
    return paths


def _hold_out_test_speakers(utterances: list[Utterance], held_out: set[str], count: int, out: Path,
                            paths: dict[str, Path]) -> set[str]:
    """The last ``count`` speakers by id not already held out; writes ``trials/test_speakers.txt`` over them
    (:func:`speakertrip.data.split.make_trials`, balanced and across sessions, on at most 12 utterances a
    speaker, spread over its sorted list)."""
    free, _ = split_by_speakers(utterances, held_out)
    _, chosen = hold_out_speakers(free, count, seed=None, option="--test-speakers")
    keys: dict[str, list[str]] = {}
    for utterance in chosen:
        keys.setdefault(utterance.spk_id, []).append(utterance.utt_id)
    listed = {key: speaker for speaker, own in keys.items() for key in sorted(own)[:: max(1, -(-len(own) // 12))]}
    trials = make_trials(listed, max_trials=None, balanced=True, cross_session=True)
    paths["test_speakers"] = write_trials(trials, out / "trials" / "test_speakers.txt")
    return set(keys)
