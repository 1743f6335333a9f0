"""The wheels a lent GPU machine needs, fetched here: it has no package index (docs/gpu.md).

    python -m benchmarks.gpu_wheels                # into wheels/ (ignored by git), then checks the size
    python -m benchmarks.gpu_wheels --dest /tmp/w  # elsewhere

That machine has Python 3.12, PyTorch, torchvision, timm, OpenCV, NumPy, SciPy, scikit-image and
pytest.  What the check needs beyond those is :data:`PACKAGES`, pinned to the versions installed in the
environment that runs this (the versions the tests passed with), downloaded without their
dependencies as binary wheels for CPython 3.12 on manylinux x86_64; plus a wheel of this project
itself, for its entry points (the plugin registry reads them from installed metadata).
``benchmarks/gpu_run.sh`` installs the folder offline on the machine and runs ``benchmarks.gpu_check``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: beyond the machine's own packages: the core's (pydantic and its own dependencies, tomli-w, tqdm),
#: SegFormer's (the segmentation task of the meta-step compared), higher (a timed meta-step)
PACKAGES = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "tomli-w",
    "tqdm",
    "segmentation-models-pytorch",
    "higher",
)
#: the target: CPython 3.12 on x86_64 Linux (glibc 2.17 and later covers every manylinux wheel of these)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PYTHON = "3.12"
#: what travels with a run is at most 64 MiB together with the repository
LIMIT_BYTES = 50 * 2**20


def pins(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """``name==version`` of each package as installed here; a missing one is an error naming it."""
    out = []
    for name in packages:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"gpu_wheels: {name} is not installed here, so there is no version to pin") from None
    return out


def download_command(dest: Path, requirements: list[str]) -> list[str]:
    """``pip download`` of exactly these wheels for the GPU machine's Python and platform."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--dest",
        str(dest),
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON,
        *platforms,
        *requirements,
    ]


def project_wheel_command(dest: Path) -> list[str]:
    """A wheel of this checkout (pure Python, entry points included), built without fetching anything."""
    return [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(dest),
        str(ROOT),
    ]


def total_size(dest: Path) -> int:
    return sum(p.stat().st_size for p in dest.glob("*.whl"))


def check_size(dest: Path, limit: int = LIMIT_BYTES) -> int:
    """The wheels' total size; too large to travel is an error naming it."""
    size = total_size(dest)
    if size > limit:
        raise SystemExit(f"gpu_wheels: {dest} holds {size / 2**20:.1f} MiB of wheels, over {limit / 2**20:.0f} MiB")
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_wheels", description=__doc__)
    parser.add_argument("--dest", type=Path, default=ROOT / "wheels")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):  # only this set travels
        old.unlink()
    requirements = pins()
    subprocess.run(download_command(args.dest, requirements), check=True)
    subprocess.run(project_wheel_command(args.dest), check=True)
    (args.dest / "requirements.txt").write_text("\n".join(requirements) + "\n")
    size = check_size(args.dest)
    print(f"gpu_wheels: {len(list(args.dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
