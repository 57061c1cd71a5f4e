"""Encode and decode one set of tensors with NNCodec.

This script runs with the Python of ``bench/.venv-nncodec`` (see
nncodec_env.py), never with the project's own venv, and is started by
``bench/anchors/nncodec.py``. Usage::

    python nncodec_worker.py REQUEST.json
    python nncodec_worker.py --version

REQUEST.json is an object with these keys:

    arrays     path of an .npz of float32 arrays keyed by tensor name
    qp         NNCodec quantization parameter (integer, e.g. -38)
    options    optional object of further keyword arguments for
               nnc.compress, limited to CODING_OPTIONS below
    bitstream  path where the bitstream is written
    decoded    path where the decoded arrays are written as an .npz

On success the script prints one JSON object on stdout with the keys
"bytes", "encode_s", "decode_s", "version" and "params". Everything that
NNCodec prints goes to stderr. Exit code 2 means an invalid request, 1 a
failure inside NNCodec.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import json
import os
import sys
import time
import types
from pathlib import Path

# This folder also contains the project-side client, nncodec.py, which would
# shadow the installed nncodec package. Python puts the script's folder
# first on sys.path, so take it off before anything imports nncodec.
_SCRIPT_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _SCRIPT_DIR]

import numpy as np  # noqa: E402

# Keyword arguments of nnc.compress that change how a plain dict of arrays
# is coded. The others either need a model, a data set or a training loop
# (lsa, bnf, fine_tune, ioq, model_executer, ...) or are set by this script
# (bitstream_path, return_bitstream, verbose).
CODING_OPTIONS = (
    "qp_density",
    "nonweight_qp",
    "qp_per_tensor",
    "use_dq",
    "codebook_mode",
    "scan_order",
    "lambda_scale",
    "param_opt",
    "cabac_unary_length_minus1",
    "opt_qp",
)


class RequestError(ValueError):
    """The request file or the arrays it names are invalid."""


class _TorchvisionPlaceholder:
    """Stand-in for every torchvision class that NNCodec names at import time."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            "torchvision is not installed in the NNCodec venv: it cannot import beside the "
            "CPU build of torch, and only NNCodec's data-set code calls it"
        )


def _install_torchvision_stub() -> None:
    """Register an empty torchvision package so that ``import nncodec`` succeeds.

    nncodec 2.1.3 imports its image-classification helpers at package import
    time, and those build ``transforms.Compose([...])`` objects and subclass
    ``datasets.ImageFolder``. Coding a dict of arrays calls none of them.
    """

    def placeholder_attribute(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _TorchvisionPlaceholder

    package = types.ModuleType("torchvision")
    package.__path__ = []
    for submodule_name in ("datasets", "transforms", "models", "ops", "io", "utils"):
        submodule = types.ModuleType(f"torchvision.{submodule_name}")
        submodule.__getattr__ = placeholder_attribute
        setattr(package, submodule_name, submodule)
        sys.modules[submodule.__name__] = submodule
    package.__getattr__ = placeholder_attribute
    sys.modules["torchvision"] = package


def import_nnc():
    """Import NNCodec's ``nnc`` module and return it with the installed version."""
    _install_torchvision_stub()
    # NNCodec prints progress and notices with print(); they must not reach
    # the JSON result on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        from nncodec import nnc
    return nnc, importlib.metadata.version("nncodec")


def read_request(path: Path) -> dict:
    try:
        request = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RequestError(f"cannot read request {path}: {error}") from error
    if not isinstance(request, dict):
        raise RequestError(f"request {path} must contain a JSON object")

    for key in ("arrays", "qp", "bitstream", "decoded"):
        if key not in request:
            raise RequestError(f"request {path} is missing the key {key!r}")
    qp = request["qp"]
    if not isinstance(qp, int) or isinstance(qp, bool):
        raise RequestError(f"qp must be an integer, got {qp!r}")

    options = request.get("options") or {}
    if not isinstance(options, dict):
        raise RequestError(f"options must be a JSON object, got {options!r}")
    unknown = sorted(set(options) - set(CODING_OPTIONS))
    if unknown:
        raise RequestError(
            f"unsupported NNCodec options {unknown}; supported: {', '.join(CODING_OPTIONS)}"
        )
    request["options"] = options
    return request


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load the tensors to code, in file order, and check that NNCodec can take them."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise RequestError(f"cannot read arrays from {path}: {error}") from error
    if not arrays:
        raise RequestError(f"{path} contains no arrays")

    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise RequestError(f"tensor {name!r} has dtype {array.dtype}, expected float32")
        if array.size == 0:
            raise RequestError(f"tensor {name!r} is empty (shape {array.shape})")
        if not np.all(np.isfinite(array)):
            raise RequestError(f"tensor {name!r} contains NaN or infinite values")
        # NNCodec treats a name that ends in _G or _H as one factor of a
        # low-rank decomposition, and asserts that no other name contains
        # those two characters.
        if "_G" in name or "_H" in name:
            raise RequestError(
                f"tensor name {name!r} contains '_G' or '_H', which NNCodec reserves "
                "for decomposed tensors; rename it"
            )
    return arrays


def effective_options(nnc, qp: int, options: dict) -> dict:
    """Merge the requested options into nnc.compress's own defaults."""
    signature = inspect.signature(nnc.compress)
    params = {
        name: signature.parameters[name].default
        for name in CODING_OPTIONS
        if name in signature.parameters
    }
    params.update(options)
    params["qp"] = qp
    return params


def describe_tensors(
    arrays: dict[str, np.ndarray], coded_arrays: dict[str, np.ndarray], decoded_approx: dict
) -> dict:
    """Return each tensor's NNCodec parameter type and the qp and DQ flag read back by the decoder."""
    from nncodec.nnc_core import nnr_model

    # compress() classifies tensors with this same class: "weight" for
    # ndim >= 2, "unspecified" otherwise. Names play no part in it.
    model_info = nnr_model.NNRModel(coded_arrays).model_info
    tensors = {}
    for name, array in arrays.items():
        tensors[name] = {
            "shape": list(array.shape),
            "type": model_info["parameter_type"][name],
            "qp": _as_int(decoded_approx.get("qp", {}).get(name)),
            "dq": _as_int(decoded_approx.get("dq_flag", {}).get(name)),
        }
    return tensors


def _as_int(value):
    return None if value is None else int(value)


def summarize_by_type(tensors: dict) -> dict:
    """Group tensor counts, qps and DQ flags by NNCodec parameter type."""
    summary: dict[str, dict] = {}
    for info in tensors.values():
        entry = summary.setdefault(info["type"], {"count": 0, "qp": set(), "dq": set()})
        entry["count"] += 1
        entry["qp"].add(info["qp"])
        entry["dq"].add(info["dq"])
    return {
        parameter_type: {
            "count": entry["count"],
            "qp": sorted(q for q in entry["qp"] if q is not None),
            "dq": sorted(d for d in entry["dq"] if d is not None),
        }
        for parameter_type, entry in summary.items()
    }


def run(request: dict, nnc, version: str) -> dict:
    arrays = load_arrays(Path(request["arrays"]))
    options = request["options"]
    # The encoder of nncodec 2.1.3 reads shape[0] of every tensor and fails
    # on 0-d arrays, so scalars are coded as shape (1,).
    coded_arrays = {
        name: array.reshape(1) if array.ndim == 0 else array for name, array in arrays.items()
    }

    started = time.perf_counter()
    bitstream = nnc.compress(
        coded_arrays,
        bitstream_path=None,
        qp=request["qp"],
        return_bitstream=True,
        verbose=False,
        **options,
    )
    encode_s = time.perf_counter() - started
    Path(request["bitstream"]).write_bytes(bytes(bitstream))

    # decompress() consumes the per-tensor qp and DQ flag that the decoder
    # reads from the bitstream. Wrap the reconstruction step to keep a copy.
    from nncodec import nnc_core

    decoded_approx: dict = {}
    reconstruct = nnc_core.approximator.rec

    def recording_reconstruct(approx_data):
        decoded_approx["qp"] = dict(approx_data.get("qp", {}))
        decoded_approx["dq_flag"] = dict(approx_data.get("dq_flag", {}))
        return reconstruct(approx_data)

    nnc_core.approximator.rec = recording_reconstruct
    try:
        started = time.perf_counter()
        decoded = nnc.decompress(bytearray(bitstream))
        decode_s = time.perf_counter() - started
    finally:
        nnc_core.approximator.rec = reconstruct

    restored = {}
    for name, array in arrays.items():
        if name not in decoded:
            raise RuntimeError(f"NNCodec did not return tensor {name!r} after decoding")
        values = np.asarray(decoded[name], dtype=np.float32)
        if values.size != array.size:
            raise RuntimeError(
                f"NNCodec returned {values.size} values for tensor {name!r} of shape {array.shape}"
            )
        restored[name] = values.reshape(array.shape)
    np.savez(request["decoded"], **restored)

    tensors = describe_tensors(arrays, coded_arrays, decoded_approx)
    params = effective_options(nnc, request["qp"], options)
    params["by_type"] = summarize_by_type(tensors)
    params["tensors"] = tensors
    return {
        "bytes": len(bitstream),
        "encode_s": encode_s,
        "decode_s": decode_s,
        "version": version,
        "params": params,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2

    # Keep a handle on the real stdout for the result, and send file
    # descriptor 1 to stderr so that output from NNCodec's C++ code cannot
    # mix with it either.
    result_stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    nnc, version = import_nnc()
    if argv[0] == "--version":
        print(version, file=result_stream)
        return 0

    try:
        request = read_request(Path(argv[0]))
        result = run(request, nnc, version)
    except RequestError as error:
        print(f"nncodec_worker: invalid request: {error}", file=sys.stderr)
        return 2
    except SystemExit as error:
        # NNCodec reports invalid input by raising SystemExit with a message.
        print(f"nncodec_worker: NNCodec failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result), file=result_stream)
    result_stream.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
