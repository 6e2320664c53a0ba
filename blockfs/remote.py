"""A volume's files at URLs (``http://``, ``https://``, ``s3://``), read through obstore.

The layout suits remote reading: one fixed-size index at a known place, then one byte range per
block. :class:`RemoteFiles` reads the index in pages of :data:`INDEX_PAGE` bytes, kept in a
bounded cache, and a shard's byte ranges in requests that merge neighbours (see :class:`Prefetch`).
Every index request carries the ETag the index had when the volume was opened, so a volume
rewritten on the server raises :class:`StaleVolumeError` instead of mixing two versions; blocks are
verified by their records as on disk. obstore retries timeouts, dropped connections and 5xx answers
:data:`RETRIES` times, then the error names the URL.

``s3://`` reads the usual AWS settings from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``...). obstore
is imported on the first remote read, so ``import blockfs`` stays light.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import MissingDependencyError, ReadOnlyError, RemoteReadError, StaleVolumeError
from .format import PREAMBLE, DirectoryFile, decode_header, read_preamble

if TYPE_CHECKING:
    from obstore.store import ObjectStore

SCHEMES = ("http", "https", "s3")
#: Index bytes are fetched and cached in pages of this size (8192 entries of 8 bytes).
INDEX_PAGE = 64 * 1024
#: Most index pages one process keeps per volume (16 MiB).
INDEX_PAGES_KEPT = 256
#: Byte ranges of one shard closer than this travel in one request.
COALESCE = 256 * 1024
#: A region read fetches its blocks in waves of about this many stored bytes, the next ones in
#: flight while the threads decompress this one.
WAVE_BYTES = 16 * 1024 * 1024
#: Waves fetched ahead of the one being read.
WAVES_AHEAD = 2
#: Requests in flight at once per process.
CONCURRENCY = 8
#: Retries of a request that timed out, lost its connection or got a 5xx answer.
RETRIES = 3
TIMEOUT = timedelta(seconds=30)
#: Bytes fetched with the header's first request (the JSON of almost every volume fits).
HEADER_GUESS = 64 * 1024


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL blockfs reads remotely (rather than a file name)."""
    return urlsplit(path).scheme in SCHEMES and "://" in path


def shard_urls(index_url: str, names: Sequence[str]) -> tuple[str, ...]:
    """Each shard's URL: its stored file name, beside the index (stored names are paths on the
    writer's disk; a volume published at a URL keeps its shards beside its index, as ``blockfs mv`` leaves them)."""
    return tuple(sibling(index_url, posixpath.basename(name.replace(os.sep, "/"))) for name in names)


def sibling(url: str, name: str) -> str:
    """The URL of ``name`` (a relative path) in the folder of ``url``."""
    parts = urlsplit(url)
    folder = parts.path.rsplit("/", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{folder}/{name}", "", ""))


# -- the client ------------------------------------------------------------------------------------

class _Located(NamedTuple):
    store: ObjectStore
    path: str


_stores: dict[tuple[int, str], Any] = {}
_stores_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _obstore() -> Any:
    try:
        import obstore
    except ImportError:
        raise MissingDependencyError("obstore: not installed, and reading a volume by URL needs it; install it "
                                     "with pip install 'blockfs[remote]'.") from None
    return obstore


def locate(url: str) -> _Located:
    """The object store serving ``url`` (one per server or bucket, per process) and the object's path in it."""
    _obstore()
    from obstore.store import HTTPStore, S3Store

    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}"
    key = (os.getpid(), root)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            retry = {"max_retries": RETRIES, "retry_timeout": TIMEOUT * (RETRIES + 1),
                     "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=2)}}
            client = {"timeout": TIMEOUT, "connect_timeout": timedelta(seconds=10),
                      "allow_http": True}
            if parts.scheme == "s3":
                store = S3Store.from_url(root, client_options=client, retry_config=retry)  # type: ignore[arg-type]
            else:
                store = HTTPStore.from_url(root, client_options=client, retry_config=retry)  # type: ignore[arg-type]
            _stores[key] = store
    return _Located(store, unquote(parts.path.lstrip("/")))


def fetch_pool() -> ThreadPoolExecutor:
    """The threads that wait on requests, created anew in each process."""
    with _stores_lock:
        pool = _pools.get(os.getpid())
        if pool is None:
            pool = _pools[os.getpid()] = ThreadPoolExecutor(CONCURRENCY, "blockfs-fetch")
    return pool


@contextmanager
def answering(url: str) -> Iterator[None]:
    """Turn obstore's errors for ``url`` into blockfs's: not found, rewritten, or the status and cause."""
    from obstore.exceptions import BaseError, NotFoundError, PreconditionError

    try:
        yield
    except NotFoundError:
        raise FileNotFoundError(2, "not found on the server", url) from None
    except PreconditionError:
        raise StaleVolumeError(f"{url}: the volume was rewritten on the server since it was opened; open it again "
                               "to read it as it is now.") from None
    except BaseError as exc:
        cause = " ".join(str(exc).split())
        raise RemoteReadError(f"{url}: the read failed ({cause}); is the server up and the URL right?") from None


def get_range(url: str, start: int, end: int, if_match: str | None = None) -> tuple[memoryview, int, str | None]:
    """(bytes ``start``..``end`` of the object at ``url``, the object's size, its ETag)."""
    obstore = _obstore()
    where = locate(url)
    options: dict[str, Any] = {"range": (start, end)}
    if if_match:
        options["if_match"] = if_match
    with answering(url):
        result = obstore.get(where.store, where.path, options=options)
        data = memoryview(result.bytes())
    meta = result.meta
    return data, int(meta["size"]), meta.get("e_tag")


def head(url: str) -> tuple[int, str | None]:
    """(size, ETag) of the object at ``url``."""
    obstore = _obstore()
    where = locate(url)
    with answering(url):
        meta = obstore.head(where.store, where.path)
    return int(meta["size"]), meta.get("e_tag")


def get_ranges(url: str, starts: Sequence[int], lengths: Sequence[int]) -> list[memoryview]:
    """Several byte ranges of one object, neighbours (closer than :data:`COALESCE`) merged into one request."""
    obstore = _obstore()
    where = locate(url)
    with answering(url):
        found = obstore.get_ranges(where.store, where.path, starts=list(starts), lengths=list(lengths),
                                   coalesce=COALESCE)
    return [memoryview(b) for b in found]


def exists(url: str) -> bool:
    """Whether the server has an object at ``url``."""
    try:
        head(url)
    except FileNotFoundError:
        return False
    return True


def read_object(url: str) -> bytes:
    """The whole object at ``url`` (a small one: a pyramid's ``info``)."""
    obstore = _obstore()
    where = locate(url)
    with answering(url):
        return bytes(obstore.get(where.store, where.path).bytes())


def absolute(path: str) -> str:
    """A file's absolute name; a URL as it is."""
    return path if is_url(path) else os.path.abspath(path)


# -- the header --------------------------------------------------------------------------------------

def read_header(url: str) -> tuple[DirectoryFile, str | None]:
    """(the header of the directory file at ``url``, the file's ETag), in one request for most volumes."""
    try:
        head_bytes, size, etag = get_range(url, 0, HEADER_GUESS)
    except FileNotFoundError:
        raise FileNotFoundError(2, "no blockfs directory file at this URL", url) from None
    data = bytes(head_bytes)
    json_len, start = read_preamble(data, url)
    if PREAMBLE.size + json_len > len(data) and size > len(data):
        more, _, _ = get_range(url, len(data), min(size, PREAMBLE.size + json_len), etag)
        data += bytes(more)
    layout, start = decode_header(data, url)
    text = data[PREAMBLE.size:PREAMBLE.size + json_len].decode("utf-8")
    return DirectoryFile(url, layout, text, start, size), etag


# -- the files of one volume ------------------------------------------------------------------------------

class RemoteFiles:
    """The index and shards of one volume at URLs, read-only: the remote twin of :class:`~blockfs.storage.VolumeFiles`.

    ``version`` is the index's ETag when the volume was opened (None where the server gives none).
    """

    def __init__(self, index_url: str, shard_urls: Sequence[str], version: str | None, index_size: int):
        self.index_path = index_url
        self.shard_paths = list(shard_urls)
        self.version = version
        self.index_size = index_size
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._pages_lock = threading.Lock()
        self._shard_sizes: dict[int, int] = {}
        #: What a file on a disk is identified by; a URL has its ``version`` instead.
        self.identity: tuple[int, int] | None = None

    # -- the index --

    def read_index(self, offset: int, size: int) -> bytes:
        """Index bytes at ``offset``, zero-filled past the end of the file (unwritten entries)."""
        first, last = offset // INDEX_PAGE, (offset + size - 1) // INDEX_PAGE
        self.preload_index([(offset, size)])
        with self._pages_lock:
            pages = [self._pages.get(p) for p in range(first, last + 1)]
        if any(p is None for p in pages):  # evicted meanwhile by another thread's read: fetch these again
            pages = [self._page(p) for p in range(first, last + 1)]
        data = b"".join(pages)  # type: ignore[arg-type]
        skip = offset - first * INDEX_PAGE
        return data[skip:skip + size]

    def preload_index(self, spans: Sequence[tuple[int, int]]) -> None:
        """Fetch the index pages the (offset, size) spans lie in that are not cached, runs of pages in one request each,
        the runs concurrently."""
        wanted = sorted({p for offset, size in spans if size
                         for p in range(offset // INDEX_PAGE, (offset + size - 1) // INDEX_PAGE + 1)})
        with self._pages_lock:
            wanted = [p for p in wanted if p not in self._pages and p * INDEX_PAGE < self.index_size]
        runs: list[list[int]] = []
        for p in wanted:
            if runs and runs[-1][-1] == p - 1:
                runs[-1].append(p)
            else:
                runs.append([p])
        if len(runs) == 1:
            self._fetch_pages(runs[0])
        elif runs:
            for future in [fetch_pool().submit(self._fetch_pages, run) for run in runs]:
                future.result()

    def _fetch_pages(self, run: list[int]) -> None:
        start = run[0] * INDEX_PAGE
        end = min((run[-1] + 1) * INDEX_PAGE, self.index_size)
        data, _, _ = get_range(self.index_path, start, end, self.version)
        data_bytes = bytes(data)
        with self._pages_lock:
            for k, p in enumerate(run):
                page = data_bytes[k * INDEX_PAGE:(k + 1) * INDEX_PAGE]
                self._pages[p] = page + bytes(INDEX_PAGE - len(page))
                self._pages.move_to_end(p)
            while len(self._pages) > INDEX_PAGES_KEPT:
                self._pages.popitem(last=False)

    def _page(self, page: int) -> bytes:
        if page * INDEX_PAGE >= self.index_size:
            return bytes(INDEX_PAGE)
        with self._pages_lock:
            found = self._pages.get(page)
        if found is None:
            self._fetch_pages([page])
            with self._pages_lock:
                found = self._pages.get(page, bytes(INDEX_PAGE))
        return found

    def revalidate(self) -> None:
        """Forget the cached index pages: the next read fetches them again, raising :class:`StaleVolumeError`
        if the index was rewritten."""
        with self._pages_lock:
            self._pages.clear()
        self._shard_sizes.clear()

    # -- the shards --

    def shard_size(self, shard: int) -> int:
        """The size of a shard, asked of the server once (``FileNotFoundError`` if it has none)."""
        size = self._shard_sizes.get(shard)
        if size is None:
            size = self._shard_sizes[shard] = head(self.shard_paths[shard])[0]
        return size

    def read_shard(self, shard: int, offset: int, size: int) -> memoryview:
        """Shard bytes at ``offset``; fewer only at the end of the shard."""
        end = min(offset + size, self.shard_size(shard))
        if end <= offset:
            return memoryview(b"")
        return get_range(self.shard_paths[shard], offset, end)[0]

    def read_ranges(self, shard: int, spans: Sequence[tuple[int, int]]) -> list[memoryview]:
        """The (offset, size) spans of one shard (each fewer bytes only at its end), neighbours in one request."""
        total = self.shard_size(shard)
        clipped = [(offset, max(0, min(offset + size, total) - offset)) for offset, size in spans]
        asked = [(k, o, n) for k, (o, n) in enumerate(clipped) if n]
        found = get_ranges(self.shard_paths[shard], [o for _, o, _ in asked], [n for _, _, n in asked]) if asked else []
        out = [memoryview(b"")] * len(spans)
        for (k, _, _), data in zip(asked, found):
            out[k] = data
        return out

    # -- what a read-only remote volume cannot do --

    def _read_only(self) -> ReadOnlyError:
        return ReadOnlyError(f"{self.index_path}: a volume read by URL is read-only; copy it to a disk to change it.")

    def index_fd(self) -> int:
        raise self._read_only()

    def shard_fd(self, shard: int) -> int:
        raise self._read_only()

    def adopt_index(self, fd: int) -> None:
        raise self._read_only()

    def append(self, shard: int, data: bytes | memoryview, entry_at: int, make_entry: Callable[[int], bytes]) -> int:
        raise self._read_only()

    def sync(self, every: bool = False) -> None:
        """Nothing to flush: nothing is written."""

    def close(self) -> None:
        """Drop the cached index pages."""
        self.revalidate()


# -- region reads ---------------------------------------------------------------------------------

class Prefetch:
    """The stored bytes of a region's blocks, fetched ahead in waves while the reading threads take them.

    ``wanted`` lists (shard, offset, size) in the order the threads take the blocks. The blocks are cut
    into waves of about :data:`WAVE_BYTES`; each wave's blocks of one shard travel in one request of
    merged ranges, every shard's at once, the next :data:`WAVES_AHEAD` waves in flight while one is read.
    A wave is dropped once every one of its blocks was taken, so memory stays at a few waves.
    """

    def __init__(self, files: RemoteFiles, wanted: Sequence[tuple[int, int, int]]):
        self._files = files
        self._wanted = list(wanted)
        self._at = {(shard, offset): k for k, (shard, offset, _) in enumerate(self._wanted)}
        #: Each wave's blocks by shard, and where each block is in its wave's list for its shard.
        self._parts: list[dict[int, list[int]]] = []
        self._slot = [0] * len(self._wanted)
        self._wave_of = [0] * len(self._wanted)
        total = 0
        for k, (shard, _, size) in enumerate(self._wanted):
            if not self._parts or total >= WAVE_BYTES:
                self._parts.append({})
                total = 0
            part = self._parts[-1].setdefault(shard, [])
            self._slot[k], self._wave_of[k] = len(part), len(self._parts) - 1
            part.append(k)
            total += size
        self._left = [sum(map(len, parts.values())) for parts in self._parts]
        self._fetched: dict[int, dict[int, Future[list[memoryview]]]] = {}
        self._lock = threading.Lock()

    def take(self, shard: int, offset: int, size: int) -> memoryview | None:
        """The bytes of the block stored at (shard, offset, size); None if it is not one this prefetch holds."""
        k = self._at.get((shard, offset))
        if k is None or self._wanted[k][2] != size:
            return None
        w = self._wave_of[k]
        with self._lock:
            for ahead in range(w, min(w + 1 + WAVES_AHEAD, len(self._parts))):
                if ahead not in self._fetched and self._left[ahead]:
                    self._fetched[ahead] = {s: fetch_pool().submit(self._fetch, s, ks)
                                            for s, ks in self._parts[ahead].items()}
            future = self._fetched[w][shard]
        try:
            return future.result()[self._slot[k]]
        finally:
            with self._lock:
                self._left[w] -= 1
                if not self._left[w]:
                    del self._fetched[w]

    def _fetch(self, shard: int, ks: list[int]) -> list[memoryview]:
        return self._files.read_ranges(shard, [self._wanted[k][1:] for k in ks])
