"""What a preparation wrote, as the table `speakertrip prepare` prints: per manifest its speakers, utterances
and hours; per trial list or enrolment map its lines; the files dropped with ``--skip-bad``."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from speakertrip.atomic import atomic_write
from speakertrip.data.manifest import read_manifest
from speakertrip.tables import format_table

DROPPED_FILE = "dropped.tsv"


def write_dropped(dropped: Sequence[tuple[str, str]], out: Path) -> Path:
    """Write the ``(key, reason)`` of each file dropped by ``--skip-bad`` to ``out/dropped.tsv``; returns its path."""
    with atomic_write(out / DROPPED_FILE, "w") as handle:
        handle.write("".join(f"{key}\t{reason}\n" for key, reason in dropped))
    return out / DROPPED_FILE


def prepared_table(paths: Mapping[str, Path]) -> str:
    """One row per file a ``prepare_*`` function returned (manifests, trial lists, maps, the dropped files).

    >>> import tempfile
    >>> from speakertrip.corpora.voxceleb import prepare_voxceleb
    >>> from speakertrip.testing import make_voxceleb_tree
    >>> table = prepared_table(prepare_voxceleb(make_voxceleb_tree(tempfile.mkdtemp()), tempfile.mkdtemp()))
    >>> table.splitlines()[0].split()
    ['set', 'speakers', 'utterances', 'hours', 'file']
    """
    rows = []
    for name, path in paths.items():
        path = Path(path)
        if not path.is_file():
            continue
        if path.suffix == ".jsonl":
            utterances = read_manifest(path)
            hours = sum(u.duration for u in utterances) / 3600
            rows.append([name, len({u.spk_id for u in utterances}), len(utterances), f"{hours:.2f}", path])
        else:
            kind = {".map": "enrolments", ".tsv": "dropped"}.get(path.suffix, "trials")
            with open(path, encoding="utf-8") as handle:
                rows.append([name, "", sum(1 for _ in handle), kind, path])
    return format_table(["set", "speakers", "utterances", "hours", "file"], rows, right=[1, 2, 3])
