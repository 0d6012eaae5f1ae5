"""A cache of audio headers keyed by (size, mtime): a re-scan of a large tree reads only new or changed files.

The cache is a tab-separated text file, one line per file: ``path size mtime_ns frames
sample_rate channels subtype``, ``path`` relative to the cache's ``root`` when it has one (so
the cache survives the tree being moved: ``mv`` and ``rsync -a`` keep sizes and mtimes).
Where nothing says otherwise, caches live under ``$SPEAKERTRIP_CACHE`` (default
``~/.cache/speakertrip``).

>>> import tempfile, pathlib, numpy as np, soundfile as sf
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> sf.write(folder / "a.wav", np.zeros(800, np.int16), 16000)
>>> cache = HeaderCache(folder / "headers.tsv", root=folder)
>>> cache.info(folder / "a.wav").frames, cache.reads
(800, 1)
>>> cache.save(); again = HeaderCache(folder / "headers.tsv", root=folder)
>>> again.info(folder / "a.wav").frames, again.reads
(800, 0)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from speakertrip.atomic import atomic_write
from speakertrip.audio.io import AudioInfo, audio_info


def cache_dir() -> Path:
    """Where speakertrip keeps caches: ``$SPEAKERTRIP_CACHE`` or ``~/.cache/speakertrip``."""
    return Path(os.environ.get("SPEAKERTRIP_CACHE") or Path.home() / ".cache" / "speakertrip")


def folder_cache(folder: str | Path, what: str) -> Path:
    """The cache file of ``what`` for ``folder`` (named by a digest of its resolved path)."""
    digest = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return cache_dir() / what / f"{Path(folder).name}-{digest}.tsv"


class HeaderCache:
    """Headers of files, read only when a file is new or its size or mtime changed.

    ``info(path)`` returns the :class:`AudioInfo` of ``path`` (stat, then the cached entry when
    size and mtime still match, else a header read); ``save()`` writes back the entries seen
    since loading (files that disappeared are dropped). ``reads`` counts header reads.
    Thread-safe enough for a thread pool: entries are only added, keyed by distinct paths.
    """

    def __init__(self, path: str | Path | None, root: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.root = os.path.abspath(root) if root is not None else None
        self.entries: dict[str, tuple[int, int, tuple]] = {}  # key → size, mtime, AudioInfo fields
        self.seen: dict[str, tuple[int, int, tuple]] = {}
        self.reads = 0
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                fields = line.split("\t")
                if len(fields) == 7 and fields[1].isdigit() and fields[3].isdigit():
                    key, size, mtime, frames, rate, channels, subtype = fields
                    self.entries[key] = (int(size), int(mtime), (int(frames), int(rate), int(channels), subtype))

    def _key(self, path: str | Path) -> str:
        path = os.fspath(path)
        if not path.startswith(os.sep) or f"{os.sep}." in path:  # not absolute or not normalised
            path = os.path.abspath(path)
        if self.root is None:
            return path
        return path[len(self.root) + 1:] if path.startswith(self.root + os.sep) else os.path.relpath(path, self.root)

    def cached(self, path: str | Path) -> AudioInfo | None:
        """The cached header of ``path`` when its size and mtime are unchanged, else None (nothing read)."""
        key = self._key(path)
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        if entry[0] != stat.st_size or entry[1] != stat.st_mtime_ns:
            return None
        self.seen[key] = entry
        return AudioInfo(*entry[2])

    def info(self, path: str | Path) -> AudioInfo:
        """The header of ``path``; raises :class:`~speakertrip.errors.AudioError` as ``audio_info`` does."""
        cached = self.cached(path)
        if cached is not None:
            return cached
        info = audio_info(path)
        stat = os.stat(path)
        self.reads += 1
        self.seen[self._key(path)] = (stat.st_size, stat.st_mtime_ns,
                                      (info.frames, info.sample_rate, info.channels, info.subtype))
        return info

    def save(self) -> None:
        """Write the entries seen since loading (atomically); no-op without a cache path."""
        if self.path is None:
            return
        with atomic_write(self.path, "w") as handle:
            for key, (size, mtime, (frames, rate, channels, subtype)) in sorted(self.seen.items()):  # stable bytes
                if "\t" in key or "\n" in key:
                    continue  # not representable in the file: read again next time
                handle.write(f"{key}\t{size}\t{mtime}\t{frames}\t{rate}\t{channels}\t{subtype}\n")
