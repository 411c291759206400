"""TeacherCache: encode a corpus once per teacher, store the vectors on disk, read rows by random access.

Layout of one corpus (``root``, usually ``<cache_dir>/corpus-<key>``, the key a hash of the corpus's text ids)::

    corpus.json                 rows, corpus key, shard size, rejected-row counts (written before any shard)
    ids.npy                     uint64 text id of every row (blake2b of the text), row order
    <teacher-slug>/
        shard-00000.npy ...     (rows, dim) vectors, float16 by default, one file per ``shard_rows`` rows
        manifest.json           fingerprint (name, revision, prompt, max length, pooling, dim, normalisation),
                                rows, and per shard its row count, a hash of its texts and one of its vectors

Each teacher has its own folder, so adding a teacher encodes only that teacher: the ensemble's concatenation
(normalise each, concatenate, normalise) happens at read time. A shard is written to a temporary file, fsynced
and renamed into place, and the manifest is written last, so a build killed at any point (SIGKILL included)
resumes where it stopped and ends bitwise identical to an uninterrupted one. A folder whose fingerprint differs
from the run's teacher is refused, with the fields that differ; it is never silently used. Under torchrun the
ranks share one build (``build(..., distributed=True)``, :mod:`jasper.storage.cache.ranks`): disjoint shards, one
manifest, the same bytes.

    python precompute.py verify=all     # every corpus under paths.cache_dir: shard hashes, row counts, NaN/inf;
                                        # each problem printed, exit status 1 on any
"""

from jasper.storage.cache.commands import verify_cache_dir, verify_tree
from jasper.storage.cache.features import PooledFeatures
from jasper.storage.cache.format import (
    CORPUS_FILE,
    FINGERPRINT_FIELDS,
    FORMAT,
    IDS_FILE,
    MANIFEST,
    SHARD,
    SHARD_ROWS,
    CacheMismatch,
    array_digest,
    corpus_key,
    fingerprint,
    text_ids,
)
from jasper.storage.cache.reader import CacheReader
from jasper.storage.cache.store import TeacherCache
from jasper.storage.cache.verify import CacheDamaged, check_shard_files

__all__ = [
    "CORPUS_FILE",
    "FINGERPRINT_FIELDS",
    "FORMAT",
    "IDS_FILE",
    "MANIFEST",
    "SHARD",
    "SHARD_ROWS",
    "CacheDamaged",
    "CacheMismatch",
    "CacheReader",
    "PooledFeatures",
    "TeacherCache",
    "array_digest",
    "check_shard_files",
    "corpus_key",
    "fingerprint",
    "text_ids",
    "verify_cache_dir",
    "verify_tree",
]
