"""Run NNCodec, the MPEG NNC reference software, as a benchmark anchor.

NNCodec runs in its own venv (see nncodec_env.py and README.md in this
folder), so this module imports only numpy and the standard library. It
writes the tensors to a temporary .npz, starts nncodec_worker.py with the
venv's Python, and reads back the bitstream size, the timings and the
decoded tensors.

Example, with bench/anchors on sys.path as it is for scripts in that folder::

    from nncodec import nncodec_available, run_nncodec
    if nncodec_available():
        result = run_nncodec(arrays, qp=-38, use_dq=True)
        bits_per_weight = 8 * result.bytes / sum(a.size for a in arrays.values())
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    from . import nncodec_env
except ImportError:  # imported as a top-level module from this folder
    import nncodec_env

log = logging.getLogger(__name__)

WORKER = Path(__file__).resolve().parent / "nncodec_worker.py"

# Exit code with which the worker reports an invalid request.
_WORKER_INVALID_REQUEST = 2

_availability: tuple[bool, str] | None = None


class NncodecError(RuntimeError):
    """NNCodec could not be run or failed on a request."""


@dataclass(frozen=True)
class NncodecResult:
    """Outcome of one NNCodec encode and decode."""

    bytes: int
    """Size of the bitstream in bytes, headers included."""
    encode_s: float
    """Wall time of nnc.compress in seconds, without process start and file I/O."""
    decode_s: float
    """Wall time of nnc.decompress in seconds, without process start and file I/O."""
    decoded: dict[str, np.ndarray] = field(repr=False)
    """Decoded tensors, float32, with the names and shapes of the input."""
    version: str
    """Installed NNCodec version."""
    params: dict = field(repr=False)
    """Effective coding options: nnc.compress's defaults merged with the
    request, plus "by_type" and "tensors", which give each tensor's NNCodec
    parameter type and the qp and dependent-quantization flag that the
    decoder read from the bitstream."""


def nncodec_available() -> bool:
    """Build the NNCodec venv if needed and return whether it is usable.

    Logs the reason at WARNING level when it is not. The result is cached
    for the life of the process, so a failed build is not retried.
    """
    global _availability
    if _availability is None:
        try:
            python = nncodec_env.ensure_venv()
            _availability = (True, f"NNCodec venv ready: {python}")
        except (nncodec_env.NncodecEnvError, OSError) as error:
            _availability = (False, str(error))
            log.warning("NNCodec anchor not available: %s", error)
    return _availability[0]


def _validate_arrays(arrays: dict[str, np.ndarray]) -> None:
    if not arrays:
        raise ValueError("arrays is empty: pass at least one tensor")
    for name, array in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tensor {name!r} is a {type(array).__name__}, expected numpy.ndarray")
        if array.dtype != np.float32:
            raise TypeError(f"tensor {name!r} has dtype {array.dtype}, expected float32")


def run_nncodec(
    arrays: dict[str, np.ndarray],
    qp: int,
    *,
    timeout_s: float | None = None,
    **options,
) -> NncodecResult:
    """Encode and decode arrays with NNCodec at the given qp.

    options are further keyword arguments for NNCodec's nnc.compress (for
    example use_dq=False or nonweight_qp=-60). Any option left out keeps
    NNCodec's own default, and the worker rejects names outside
    nncodec_worker.CODING_OPTIONS. The venv is created on first use, which
    takes a few minutes.

    Raises ValueError or TypeError for invalid arrays, NncodecError when the
    venv cannot be built, the worker rejects the request or NNCodec fails,
    and subprocess.TimeoutExpired when timeout_s passes.
    """
    _validate_arrays(arrays)
    if isinstance(qp, bool) or not isinstance(qp, (int, np.integer)):
        raise TypeError(f"qp must be an integer, got {qp!r}")

    try:
        python = nncodec_env.ensure_venv()
    except (nncodec_env.NncodecEnvError, OSError) as error:
        raise NncodecError(f"NNCodec venv not available: {error}") from error

    with tempfile.TemporaryDirectory(prefix="wcodec-nncodec-") as temp_name:
        temp_dir = Path(temp_name)
        request = {
            "arrays": str(temp_dir / "arrays.npz"),
            "qp": int(qp),
            "options": options,
            "bitstream": str(temp_dir / "bitstream.nnc"),
            "decoded": str(temp_dir / "decoded.npz"),
        }
        np.savez(request["arrays"], **arrays)
        request_path = temp_dir / "request.json"
        try:
            request_path.write_text(json.dumps(request))
        except TypeError as error:
            raise TypeError(f"options must be JSON-serializable: {error}") from error

        completed = subprocess.run(
            [str(python), str(WORKER), str(request_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if completed.returncode != 0:
            kind = (
                "rejected the request"
                if completed.returncode == _WORKER_INVALID_REQUEST
                else f"failed with exit code {completed.returncode}"
            )
            stderr_tail = "\n".join(completed.stderr.strip().splitlines()[-20:])
            raise NncodecError(f"NNCodec worker {kind}:\n{stderr_tail}")

        try:
            report = json.loads(completed.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError) as error:
            raise NncodecError(
                f"NNCodec worker printed no JSON result; stdout was {completed.stdout[-500:]!r}"
            ) from error

        with np.load(request["decoded"], allow_pickle=False) as archive:
            decoded = {name: archive[name] for name in archive.files}

    return NncodecResult(
        bytes=int(report["bytes"]),
        encode_s=float(report["encode_s"]),
        decode_s=float(report["decode_s"]),
        decoded=decoded,
        version=str(report["version"]),
        params=report["params"],
    )
