"""Create the private virtual environment that runs the NNCodec anchor.

NNCodec (the MPEG NNC reference software, ``pip install nncodec``) needs
numpy < 2 and declares torchvision, which cannot import beside the CPU
build of torch that this project uses. It therefore lives in its own venv,
``bench/.venv-nncodec``, and never in the project's ``.venv``.

Run ``python bench/anchors/nncodec_env.py`` to create the venv (a second run
only checks it) and print the path of its Python interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

VENV_DIR = Path(__file__).resolve().parent.parent / ".venv-nncodec"

# The CPU build of torch, which pip takes from this machine's wheel
# directory. It is installed first and named again in the second install,
# so that the resolver never swaps it for a multi-gigabyte CUDA build.
TORCH_REQUIREMENT = "torch==2.13.0"

NNCODEC_REQUIREMENT = "nncodec==2.1.3"

# The requirements that nncodec 2.1.3 declares, minus two changes:
#   - torchvision is left out, because PyPI's torchvision fails to import
#     beside the CPU build of torch ("operator torchvision::nms does not
#     exist"). nncodec_worker.py puts a stub module in its place, which is
#     enough because compressing a dict of arrays never calls torchvision.
#   - opencv-python-headless replaces opencv-python. Both install the same
#     cv2 module, but the headless wheel does not need libGL at import time.
# The upper bounds on pandas and opencv-python-headless exclude the first
# releases that require numpy >= 2 (pandas 3.1.0, opencv 4.12.0.88).
# Without them pip downloads each newer release before rejecting it, about
# 300 MB of opencv wheels alone.
# nncodec itself is then installed with --no-deps so that pip does not add
# torchvision back.
NNCODEC_DEPENDENCIES = [
    "numpy<2",
    "Click>=7.0",
    "scikit-learn>=0.23.1",
    "tqdm>=4.32.2",
    "h5py>=3.1.0",
    "pybind11>=2.6.2",
    "pandas>=1.0.5,<3.1",
    "opencv-python-headless>=4.4.0.46,<4.12",
    "ptflops>=0.7",
    "torchmetrics>=0.11.4",
]

# Written last by a successful install. A venv without it, or with a stamp
# for other requirements, is rebuilt from scratch.
STAMP_NAME = ".wcodec-installed.json"

# Serializes builds between processes. It lives in the temp folder because
# the venv folder itself is deleted and recreated by a build.
LOCK_PATH = Path(tempfile.gettempdir()) / "wcodec-nncodec-venv.lock"


class NncodecEnvError(RuntimeError):
    """The NNCodec venv could not be created or is unusable."""


def venv_python(venv_dir: Path = VENV_DIR) -> Path:
    return venv_dir / "bin" / "python"


def _expected_stamp() -> dict:
    return {
        "torch": TORCH_REQUIREMENT,
        "nncodec": NNCODEC_REQUIREMENT,
        "dependencies": NNCODEC_DEPENDENCIES,
    }


def _read_stamp(venv_dir: Path) -> dict | None:
    stamp_path = venv_dir / STAMP_NAME
    try:
        return json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return None


def is_ready(venv_dir: Path = VENV_DIR) -> bool:
    """Return True if the venv exists and was installed with the current requirements."""
    stamp = _read_stamp(venv_dir)
    if stamp is None or not venv_python(venv_dir).exists():
        return False
    return stamp.get("requirements") == _expected_stamp()


def _run(command: list[str], quiet: bool) -> None:
    log.info("running: %s", " ".join(command))
    # PIP_NO_INPUT makes pip fail instead of waiting for a password prompt.
    environment = {**os.environ, "PIP_NO_INPUT": "1"}
    result = subprocess.run(command, capture_output=quiet, text=True, env=environment)
    if result.returncode != 0:
        output = ""
        if quiet:
            # The last lines of pip's output name the package that failed.
            tail = (result.stdout + result.stderr).strip().splitlines()[-20:]
            output = "\n" + "\n".join(tail)
        raise NncodecEnvError(
            f"command failed with exit code {result.returncode}: {' '.join(command)}{output}"
        )


def _check_import(python: Path) -> str:
    """Import nncodec the way the worker does and return its version."""
    worker = Path(__file__).resolve().parent / "nncodec_worker.py"
    result = subprocess.run(
        [str(python), str(worker), "--version"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise NncodecEnvError(
            "nncodec was installed but does not import in "
            f"{python}: {result.stderr.strip()[-2000:]}"
        )
    return result.stdout.strip()


@contextlib.contextmanager
def _build_lock():
    with open(LOCK_PATH, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_venv(venv_dir: Path = VENV_DIR, force: bool = False, quiet: bool = True) -> Path:
    """Create the NNCodec venv unless a complete one exists, and return its Python.

    Raises NncodecEnvError when a step fails. A venv left half-built by a
    failed or interrupted run has no stamp, so the next call rebuilds it.
    A second process that calls this during a build waits for it to finish.
    """
    if not force and is_ready(venv_dir):
        return venv_python(venv_dir)
    with _build_lock():
        if not force and is_ready(venv_dir):
            return venv_python(venv_dir)
        return _build_venv(venv_dir, quiet)


def _build_venv(venv_dir: Path, quiet: bool) -> Path:
    if venv_dir.exists():
        log.info("removing incomplete or outdated venv %s", venv_dir)
        shutil.rmtree(venv_dir)

    started = time.monotonic()
    log.info("creating NNCodec venv %s", venv_dir)
    _run([sys.executable, "-m", "venv", str(venv_dir)], quiet)
    python = str(venv_python(venv_dir))
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")

    _run(pip + [TORCH_REQUIREMENT], quiet)
    _run(pip + [TORCH_REQUIREMENT] + NNCODEC_DEPENDENCIES, quiet)
    # nncodec ships only a source distribution, so this step compiles its
    # C++ entropy coder (deepCABAC) with the system compiler.
    _run(pip + ["--no-deps", NNCODEC_REQUIREMENT], quiet)

    version = _check_import(venv_python(venv_dir))
    elapsed = time.monotonic() - started
    stamp = {
        "requirements": _expected_stamp(),
        "nncodec_version": version,
        "install_seconds": round(elapsed, 1),
    }
    (venv_dir / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    log.info("NNCodec %s installed in %s in %.0f s", version, venv_dir, elapsed)
    return venv_python(venv_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--force", action="store_true", help="delete and rebuild the venv even if it is complete"
    )
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.monotonic()
    try:
        python = ensure_venv(force=args.force, quiet=not args.verbose)
    except NncodecEnvError as error:
        log.error("NNCodec venv not available: %s. Rerun with --verbose to see pip's output.", error)
        return 1
    stamp = _read_stamp(VENV_DIR) or {}
    print(f"venv: {VENV_DIR}")
    print(f"python: {python}")
    print(f"nncodec: {stamp.get('nncodec_version', 'unknown')}")
    print(f"install time of this venv: {stamp.get('install_seconds', 'unknown')} s")
    print(f"this run: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
