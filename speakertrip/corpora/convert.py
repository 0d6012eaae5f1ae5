"""Decoding an audio tree (VoxCeleb2's m4a) into 16-bit mono wav with ffmpeg (`speakertrip convert`).

ffmpeg is the one on PATH or, failing that, the binary shipped by the PyPI package imageio-ffmpeg
(``pip install speakertrip[convert]``). Files are converted in parallel, each to a temporary
name renamed into place when complete, so an interrupted run resumes by skipping finished files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speakertrip.errors import SpeakertripError


def find_ffmpeg() -> str:
    """Path of an ffmpeg executable: PATH first, then imageio-ffmpeg's bundled binary."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SpeakertripError("ffmpeg not found: install it (e.g. apt install ffmpeg) or "
                               "`pip install imageio-ffmpeg`") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def convert_file(ffmpeg: str, source: Path, target: Path, sample_rate: int) -> str | None:
    """Convert one file; returns None on success or ffmpeg's error text."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
               "-vn", "-ac", "1", "-ar", str(sample_rate), "-acodec", "pcm_s16le", "-f", "wav", str(partial)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"ffmpeg exit status {done.returncode}"
    os.replace(partial, target)
    return None


def convert_tree(source: Path, target: Path, extension: str = "m4a", sample_rate: int = 16000, workers: int = 4,
                 progress: bool = True) -> dict[str, list[Path] | list[tuple[Path, str]]]:
    """Convert every ``*.<extension>`` under ``source`` to ``target/<same relative path>.wav``.

    Returns ``{"converted": [...], "skipped": [...], "failed": [(path, error), ...]}``; files whose
    wav already exists are skipped (resume).
    """
    from tqdm import tqdm

    if not source.is_dir():
        raise SpeakertripError(f"{source}: no such folder")
    ffmpeg = find_ffmpeg()
    files = sorted(source.rglob(f"*.{extension.lstrip('.')}"))
    if not files:
        raise SpeakertripError(f"{source}: no *.{extension.lstrip('.')} files to convert")
    targets = [target / path.relative_to(source).with_suffix(".wav") for path in files]
    todo = [(path, out) for path, out in zip(files, targets) if not out.exists()]
    report: dict = {"converted": [], "skipped": [out for out in targets if out.exists()], "failed": []}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda pair: convert_file(ffmpeg, pair[0], pair[1], sample_rate), todo)
        for (path, out), error in tqdm(zip(todo, results), total=len(todo), desc="converting", unit="file",
                                       disable=not progress):
            if error is None:
                report["converted"].append(out)
            else:
                report["failed"].append((path, error))
    return report
