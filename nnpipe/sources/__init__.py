"""Large data sources: the rows stay on the workers, and the driver holds small vectors only.

Read in this order:

- :mod:`.location` — what a file, directory of parts, glob or URL holds, read from metadata, and its pieces;
- :mod:`.in_memory` — a folder or glob of parts read into memory when it fits (``--in-memory``);
- :mod:`.prep` — validating, splitting (by a seeded hash of each row's position) and scaling piece by piece;
- :mod:`.streaming` — the training rows as arrays, or streamed a piece at a time past a memory budget;
- :mod:`.segment_cache` — a streamed shard's decoded pieces on the local disk, so each is decoded once per run;
- :mod:`.evaluate` — metrics of a model on a source as sums and counts;
- :mod:`.fit` — ``single`` mode on a prepared source.
- :mod:`.remote` — object-store (``s3://``) locations: short timeouts, a bucket probe, one-line access errors.

The distributed modes place the same pieces on the workers (:mod:`nnpipe.distributed.frames`).
"""

from nnpipe.sources.in_memory import load_parts
from nnpipe.sources.location import Piece, Source, is_large, open_source, short_name
from nnpipe.sources.prep import PreparedSource, prepare

__all__ = ["Piece", "PreparedSource", "Source", "is_large", "load_parts", "open_source", "prepare", "short_name"]
