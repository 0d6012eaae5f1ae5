"""What ``--data`` means in ``embed``, ``calibrate`` and ``finetune``: an audio folder in the VoxCeleb layout,
or a manifest.

- A folder is scanned recursively for audio (``.wav``, ``.flac``, ``.ogg``). A file's key is its path
  relative to the folder (``idNNNNN/<session>/<utt>.wav``, as VoxCeleb trial lists write keys) and its
  speaker is the key's first folder (``idNNNNN``); a file directly in the folder has none.
- A manifest (``.jsonl``, :func:`speakertrip.data.manifest.read_manifest`) gives ``utt_id`` keys and
  ``spk_id`` speakers.

>>> import tempfile
>>> from speakertrip.testing import make_voxceleb_tree
>>> found = read_items(make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=2, sessions=1) / "wav")
>>> found.keys[0].split("/")[0], found.speakers[0], len(found)
('id10001', 'id10001', 4)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from speakertrip.data.manifest import Utterance, build_utterances, read_manifest
from speakertrip.errors import ConfigError, FormatError, SpeakertripError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def voxceleb_speaker(key: str) -> str:
    """The speaker of a VoxCeleb-style key ``SPEAKER/VIDEO/UTT.wav``: its first path component."""
    speaker, slash, _ = key.partition("/")
    if not slash or not speaker:
        raise FormatError(f"cannot tell the speaker of key {key!r}: expected SPEAKER/VIDEO/UTTERANCE "
                          "as VoxCeleb keys are")
    return speaker


@dataclass(frozen=True)
class DataItems:
    """The utterances of a folder or manifest, in a stable order: ``keys`` (N,), ``items`` (N,) (absolute audio
    paths of a folder, or manifest utterances; what :func:`speakertrip.models.batched.embed_many` takes) and
    ``speakers`` (N,) (None for a file directly in the folder)."""

    source: Path
    keys: list[str]
    items: list[Path] | list[Utterance]
    speakers: list[str | None]

    def __len__(self) -> int:
        return len(self.keys)

    def utterances(self, workers: int = 8, progress: bool = False) -> list[Utterance]:
        """Manifest rows with their speakers, for training or a dev set: a manifest's own rows, a folder's with
        each file's header read. A file without a speaker, or a folder of one speaker, is an error."""
        if not self.source.is_dir():
            return list(self.items)
        loose = [key for key, speaker in zip(self.keys, self.speakers) if speaker is None]
        if loose:
            raise ConfigError(f"{self.source}: {len(loose)} audio file(s) lie directly in the folder, e.g. "
                              f"{loose[0]!r}; put each speaker's files under <folder>/<speaker>/ (the VoxCeleb "
                              "layout <folder>/idNNNNN/<session>/<utt>.wav)")
        speakers = set(self.speakers)
        if len(speakers) == 1:
            raise ConfigError(f"{self.source}: every audio file is under one folder, {speakers.pop()!r}, so it is one "
                              "speaker; give the folder whose subfolders are the speakers")
        utterances, _ = build_utterances(list(zip(self.keys, self.speakers, self.items)), workers=workers,
                                         progress=progress)
        return utterances


def read_items(data: str | Path) -> DataItems:
    """Keys, items and speakers of an audio folder (keys: relative paths; speaker: the first folder) or a
    manifest (keys: ``utt_id``; speaker: ``spk_id``); a clear error when it is neither or holds no audio."""
    source = Path(os.path.abspath(data))
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not paths:
            raise SpeakertripError(f"{data}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found in this folder")
        keys = [path.relative_to(source).as_posix() for path in paths]
        return DataItems(source, keys, paths, [voxceleb_speaker(key) if "/" in key else None for key in keys])
    if not source.is_file():
        raise SpeakertripError(f"{data}: no such folder or manifest (give an audio folder in the VoxCeleb layout, "
                               "<folder>/idNNNNN/<session>/<utt>.wav, or a JSONL manifest from `speakertrip prepare`)")
    utterances = read_manifest(source)
    if not utterances:
        raise SpeakertripError(f"{data}: the manifest lists no utterances")
    return DataItems(source, [u.utt_id for u in utterances], utterances, [u.spk_id for u in utterances])
