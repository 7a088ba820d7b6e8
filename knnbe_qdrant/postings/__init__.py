"""`knnbe-qdrant map-postings`: whole job postings in (`reading`), skills per posting out (`mapping`), in one
process or spread over Ray actors (`ray`, which needs the ray extra and is imported only when used)."""

from .mapping import LocalRunner, PostingSettings, PostingsReport, Runner, aggregate, map_batch, map_postings
from .reading import Posting, read_postings, split_sentences

__all__ = [
    "LocalRunner",
    "Posting",
    "PostingSettings",
    "PostingsReport",
    "Runner",
    "aggregate",
    "map_batch",
    "map_postings",
    "read_postings",
    "split_sentences",
]
