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
"""

from __future__ import annotations

import gc


def tune_garbage_collector(young_threshold: int) -> None:
    """Freeze what is alive now and set the young generation's threshold (0: keep the
    interpreter's).
    Call once, at start-up, after the imports and before the models load."""
    gc.collect()
    gc.freeze()
    if young_threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
