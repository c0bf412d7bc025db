"""The garbage collector's policy for a serving process.

Measured on the `mlp` model over gRPC at 64 in flight (one core): with Python's defaults the
cycle collector took about 5 % of the server's CPU. Most of it (about 3 %) was full collections,
one every second or so, each a 40 ms pause spent walking the objects every imported module
created (grpc, onnxruntime, protobuf, numpy, pydantic), none of which ever becomes garbage; the
rest was about a hundred young-generation collections a second, each triggered by the 700
container objects that requests in flight hold at once, and each finding nothing to free.

So at start-up, before any model loads, the objects already alive are moved out of the
collector's sight (gc.freeze, which CPython's documentation describes for servers that fork
workers; here it is for what it spares every full collection), and the young generation's
threshold is raised so that requests in flight no longer trigger it.
Reference counting frees everything as before; only garbage in reference cycles waits longer,
and model versions, loaded after the freeze, stay collectable.

Huge pages for malloc's memory. A model's weights (7 MB for `mlp`, 80 MB for `mlp_wide`) live
in memory onnxruntime gets from glibc's malloc, in 4 KiB pages unless glibc asks the kernel for
transparent huge pages, which it does only when started with GLIBC_TUNABLES set to
HUGE_PAGES_TUNABLE (glibc 2.35 and later; a process cannot change it once started). At
concurrency 1 the weights of a model run between two requests fall out of the caches and the
TLB, and a batch-1 `mlp` run after an idle 1.5 ms took 273-487 us on 4 KiB pages against
217-308 on huge pages (about 190 back to back). The Dockerfile and `make serve` set it; the
start-up log says whether it is in effect.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from pathlib import Path

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
"""glibc's tunable for malloc to madvise(MADV_HUGEPAGE) the memory it maps."""

THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def tune_garbage_collector(young_threshold: int) -> None:
    """Freeze what is alive now and set the young generation's threshold (0: keep the
    interpreter's).
    Call once, at start-up, after the imports and before the models load."""
    gc.collect()
    gc.freeze()
    if young_threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


def glibc_version() -> tuple[int, int] | None:
    """The C library's version if it is glibc (None for musl, say)."""
    try:
        name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (ValueError, OSError):
        return None


GLIBC_VERSION = glibc_version()


def malloc_huge_pages(
    environ: Mapping[str, str] = os.environ,
    thp_mode_file: Path = THP_MODE_FILE,
    glibc: tuple[int, int] | None = GLIBC_VERSION,
) -> str:
    """Whether malloc's large blocks (the models' weights among them) get huge pages in this
    process, as the start-up log says it: 'on ...', or 'off' and why."""
    try:
        modes = thp_mode_file.read_text().split()
    except OSError:
        return "off (the kernel offers no transparent huge pages)"
    mode = next((m.strip("[]") for m in modes if m.startswith("[")), "unknown")
    if mode == "always":
        return "on (the kernel's transparent huge pages are 'always')"
    if mode != "madvise":
        return f"off (the kernel's transparent huge pages are '{mode}')"
    if glibc is None or glibc < (2, 35):
        found = "not glibc" if glibc is None else f"glibc {glibc[0]}.{glibc[1]}"
        return f"off (the C library is {found}; glibc 2.35 and later can ask for them)"
    tunables = dict(
        item.partition("=")[::2] for item in environ.get("GLIBC_TUNABLES", "").split(":") if item
    )
    if tunables.get("glibc.malloc.hugetlb") == "1":
        return f"on ({HUGE_PAGES_TUNABLE})"
    return f"off (start the gateway with GLIBC_TUNABLES={HUGE_PAGES_TUNABLE} to turn them on)"
