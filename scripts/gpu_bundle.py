"""Wheels for a GPU machine with torch and no internet: what ``scripts/gpu_check.py`` imports beyond torch.

    python scripts/gpu_bundle.py        # writes gpu_bundle/ (git-ignored); carry the repository there

Downloads, for CPython 3.12 on manylinux x86-64, one wheel of each distribution in ``gpu_check.NEEDS`` at
the version speakertrip is tested with, into ``gpu_bundle/`` (at most 60 MiB), and prints the file count,
the size and the one command that installs them there and runs the check.

How the versions are held to the machine's torch (2.11): every ``Requires-Dist`` of every bundled wheel
(markers evaluated for CPython 3.12 on Linux x86-64, extras left out) is checked against the bundle itself
and torch 2.11.0: a requirement that names torch or a bundled distribution must accept that version, or the
script stops (torchaudio 2.11.0 is the release built for torch 2.11; speechbrain asks for torch >= 1.9).
pip's resolver cannot do this here: torch 2.11's pinned CUDA libraries are not all on this index. A
requirement on a distribution that is not bundled is listed: the check never imports it (``pip install
--no-deps`` leaves it out).

The cap: everything the check imports comes to about 81 MiB, over the 60 MiB a device call may carry, so the
largest packages that the GPU machine's image ships with torch (``FROM_THE_IMAGE``: scipy, 34 MiB) are left
to the image. ``gpu_check.py`` says at its start, in one line, whether any of its needs are missing there.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
TORCH = "2.11.0"  # what the GPU machine has (python3.12, CUDA 13)
CAP_MIB = 60.0
FROM_THE_IMAGE = ("scipy",)  # shipped with torch by the GPU machine's image; too large for the cap
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def load_gpu_check():
    """scripts/gpu_check.py as a module (its NEEDS and INSTALL_AND_RUN; it imports no torch at import)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def download(pins: list[str], folder: Path) -> None:
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "--dest", str(folder), *pins],
                   check=True)


def wheel_metadata(wheel: Path) -> tuple[str, Version, list[str]]:
    """(canonical name, version, Requires-Dist lines) of a wheel."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(entry for entry in archive.namelist() if entry.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    return canonicalize_name(metadata["Name"]), Version(metadata["Version"]), metadata.get_all("Requires-Dist") or []


def check_against_torch(wheels: list[Path]) -> list[str]:
    """Requirements of the bundled wheels on distributions left out (for the report); raises SystemExit when a
    requirement rejects torch 2.11.0 or a bundled version."""
    versions = {"torch": Version(TORCH)}
    requirements = {}
    for wheel in wheels:
        name, version, requires = wheel_metadata(wheel)
        versions[name] = version
        requirements[name] = requires
    unbundled, conflicts = set(), []
    for name, requires in requirements.items():
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
                continue
            needed = canonicalize_name(requirement.name)
            if needed not in versions:
                unbundled.add(needed)
            elif not requirement.specifier.contains(versions[needed], prereleases=True):
                conflicts.append(f"{name} needs {requirement}, the bundle has {needed} {versions[needed]}")
    if conflicts:
        raise SystemExit("gpu_bundle: versions that do not go together:\n  " + "\n  ".join(conflicts))
    return sorted(unbundled - set(FROM_THE_IMAGE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="the folder (default: gpu_bundle/ in the repository)")
    args = parser.parse_args()
    gpu_check = load_gpu_check()
    out = args.out or REPO / gpu_check.BUNDLE
    distributions = {canonicalize_name(name): version for name, version in gpu_check.NEEDS.values()}
    unpinned = sorted(name for name, version in distributions.items() if version is None)
    if unpinned:
        raise SystemExit(f"gpu_bundle: gpu_check.NEEDS gives no version for {', '.join(unpinned)}")
    pins = [f"{name}=={version}" for name, version in sorted(distributions.items()) if name not in FROM_THE_IMAGE]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    download(pins, out)
    wheels = sorted(out.glob("*.whl"))
    unbundled = check_against_torch(wheels)
    mib = sum(wheel.stat().st_size for wheel in wheels) / 2**20
    pure = sum(wheel.name.endswith("-none-any.whl") for wheel in wheels)
    print(f"{len(wheels)} wheels ({pure} pure Python), {mib:.1f} MiB in {out} for CPython 3.12 manylinux x86-64; "
          f"every requirement among them accepts torch {TORCH} and the bundled versions")
    print(f"left to the GPU machine's image: {', '.join(FROM_THE_IMAGE)}; required by bundled wheels but never "
          f"imported by gpu_check, so not bundled: {', '.join(unbundled) or 'none'}")
    if mib > CAP_MIB:
        raise SystemExit(f"gpu_bundle: {mib:.1f} MiB is over the {CAP_MIB:g} MiB cap")
    print("on the GPU machine, in the repository root:")
    print(f"  {gpu_check.INSTALL_AND_RUN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
