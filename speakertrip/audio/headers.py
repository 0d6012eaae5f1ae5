"""A cache of audio headers keyed by (size, mtime): a re-scan of a large tree reads only new or changed files.

The cache is a tab-separated text file, one line per file: ``path size mtime_ns frames
sample_rate channels subtype`` (``path`` as the caller keys it, e.g. relative to a data root).
Where nothing says otherwise, caches live under ``$SPEAKERTRIP_CACHE`` (default
``~/.cache/speakertrip``).

>>> import tempfile, pathlib, numpy as np, soundfile as sf
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> sf.write(folder / "a.wav", np.zeros(800, np.int16), 16000)
>>> cache = HeaderCache(folder / "headers.tsv")
>>> cache.info(folder / "a.wav", "a.wav").frames, cache.reads
(800, 1)
>>> cache.save(); again = HeaderCache(folder / "headers.tsv")
>>> again.info(folder / "a.wav", "a.wav").frames, again.reads
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

    ``info(path, key)`` returns the :class:`AudioInfo` of ``path`` (stat, then the cached entry
    of ``key`` when it still matches, else a header read); ``save()`` writes back the entries
    seen since loading (files that disappeared are dropped). ``reads`` counts header reads.
    Thread-safe enough for a thread pool: entries are only added, keyed by distinct paths.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, tuple[int, int, AudioInfo]] = {}
        self.seen: dict[str, tuple[int, int, AudioInfo]] = {}
        self.reads = 0
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                fields = line.split("\t")
                if len(fields) == 7 and fields[1].isdigit() and fields[3].isdigit():
                    key, size, mtime, frames, rate, channels, subtype = fields
                    self.entries[key] = (int(size), int(mtime), AudioInfo(int(frames), int(rate), int(channels),
                                                                          subtype))

    def info(self, path: str | Path, key: str | None = None) -> AudioInfo:
        """The header of ``path``; raises :class:`~speakertrip.errors.AudioError` as ``audio_info`` does."""
        key = str(path) if key is None else key
        try:
            stat = os.stat(path)
        except OSError:
            return audio_info(path)  # the clear "no such file" error
        cached = self.entries.get(key)
        if cached is not None and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            self.seen[key] = cached
            return cached[2]
        info = audio_info(path)
        self.reads += 1
        self.seen[key] = (stat.st_size, stat.st_mtime_ns, info)
        return info

    def save(self) -> None:
        """Write the entries seen since loading (atomically); no-op without a cache path."""
        if self.path is None:
            return
        with atomic_write(self.path, "w") as handle:
            for key, (size, mtime, info) in self.seen.items():
                if "\t" in key or "\n" in key:
                    continue  # not representable in the file: read again next time
                handle.write(f"{key}\t{size}\t{mtime}\t{info.frames}\t{info.sample_rate}\t{info.channels}\t"
                             f"{info.subtype}\n")
