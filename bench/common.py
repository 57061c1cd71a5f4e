"""Shared helpers of the benchmark scripts: models, machine description, quality, results page.

Scripts print their environment and parameters, then markdown tables; with ``--write``
they also replace their own section of ``bench/RESULTS.md`` (between the markers
``<!-- begin NAME -->`` and ``<!-- end NAME -->``), so every number on that page comes
from the command written next to it.
"""

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_PAGE = BENCH_DIR / "RESULTS.md"


def models_dir():
    """Return the folder of real checkpoints: $WCODEC_MODELS_DIR, else ../shared/models."""
    override = os.environ.get("WCODEC_MODELS_DIR")
    if override:
        return Path(override)
    return REPO_DIR.parent / "shared" / "models"


def shared_models():
    """Return the sorted paths of the shared safetensors models; exit if there are none."""
    folder = models_dir()
    paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        sys.exit(f"no *.safetensors models in {folder}; set WCODEC_MODELS_DIR")
    return paths


def cpu_model():
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description():
    """Return one markdown line naming the CPU, core count, Python and library versions."""
    import numba
    import torch

    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}")


def sqnr_db(originals, decoded):
    """Return 10 log10(signal energy / error energy) over tensors with at least 2 dimensions."""
    signal = 0.0
    error = 0.0
    for name, original in originals.items():
        if original.ndim < 2:
            continue
        a = np.asarray(original, dtype=np.float64)
        b = np.asarray(decoded[name], dtype=np.float64)
        signal += float(np.square(a).sum())
        error += float(np.square(a - b).sum())
    if error == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / error)


def timed(function, repeats):
    """Run ``function`` ``repeats`` times; return (median seconds, last result)."""
    durations = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), result


def update_results_section(name, markdown):
    """Replace the section ``name`` of bench/RESULTS.md (append it when it is missing)."""
    begin = f"<!-- begin {name} -->"
    end = f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = RESULTS_PAGE.read_text(encoding="utf-8") if RESULTS_PAGE.exists() else "# Results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS_PAGE.write_text(text, encoding="utf-8")
