"""Resident-memory readings for the CPU benchmarks (Linux `/proc`, with `getrusage` where it is missing)."""

from __future__ import annotations

import resource


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM). Not `ru_maxrss`, which a subprocess inherits from its
    parent at fork time on Linux, so a child of a large process would report the parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
