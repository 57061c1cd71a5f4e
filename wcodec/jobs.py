"""The number of worker threads for encoding and decoding.

The Numba kernels release the GIL, so threads code independent tensors in parallel.
"""

import os

from wcodec.errors import InputError


def default_jobs():
    """Return the default number of worker threads: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# Below this many values, threads cost more than they save (measured on the shared models:
# a 6,632-weight model decoded at half the speed with two threads).
SMALL_MODEL_VALUES = 1 << 18


def check_jobs(jobs, values=None):
    """Return ``jobs`` as an int, or the default for None; raise InputError below 1.

    The default is one thread for models of fewer than SMALL_MODEL_VALUES ``values``.
    """
    if jobs is None and values is not None and values < SMALL_MODEL_VALUES:
        return 1
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise InputError(f"jobs must be at least 1, found {jobs}")
    return jobs
