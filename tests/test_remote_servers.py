"""The remote-read test servers (remote_servers.py), and what obstore does against them: the facts the
remote reads of blockfs rely on (errors, retries, coalescing, timeouts, threads)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import obstore
import psutil
import pytest
from obstore.exceptions import GenericError, PreconditionError
from obstore.store import HTTPStore, S3Store

from remote_servers import S3, Faulty, faulty, faulty_server, moto_endpoint, nginx, nginx_binary, nginx_url, s3, served  # noqa: F401 (fixtures)

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

#: The object every test reads: 200 kB, no two neighbouring ranges alike.
BLOB = random.Random(0).randbytes(200_000)
NAME = "blob.bin"
#: Two retries, 10 ms apart at first: the retry tests take milliseconds.
RETRIES: RetryConfig = {"max_retries": 2, "backoff": {"init_backoff": timedelta(milliseconds=10),
                                                      "max_backoff": timedelta(milliseconds=100)}}


def http_store(url: str, retries: RetryConfig = RETRIES, timeout: timedelta | None = None) -> HTTPStore:
    """obstore's store of the HTTP server at ``url``; ``timeout`` bounds each request (obstore's default: 30 s)."""
    options: ClientConfig = {"allow_http": True}
    if timeout is not None:
        options["timeout"] = timeout
    return HTTPStore.from_url(url, client_options=options, retry_config=retries)


@pytest.fixture(params=["nginx", "s3", "faulty"])
def remote(request: pytest.FixtureRequest, served: Path) -> ObjectStore:
    """An obstore store holding ``BLOB`` as ``NAME``, on each server in turn; S3 is reached through the
    environment alone (``S3Store.from_url("s3://bucket")``)."""
    (served / NAME).write_bytes(BLOB)
    if request.param == "s3":
        bucket: S3 = request.getfixturevalue("s3")
        bucket.upload(served)
        return S3Store.from_url(bucket.url, retry_config=RETRIES)
    if request.param == "nginx":
        return http_store(request.getfixturevalue("nginx_url"))
    server: Faulty = request.getfixturevalue("faulty_server")
    return http_store(server.url)


@pytest.fixture
def blob_server(faulty_server: Faulty, served: Path) -> Faulty:
    """The faulty server holding ``BLOB`` as ``NAME``."""
    (served / NAME).write_bytes(BLOB)
    return faulty_server


def test_range_get_returns_the_exact_bytes(remote: ObjectStore) -> None:
    assert bytes(obstore.get_range(remote, NAME, start=1234, end=5678)) == BLOB[1234:5678]
    assert bytes(obstore.get_range(remote, NAME, start=0, length=1)) == BLOB[:1]
    assert obstore.head(remote, NAME)["size"] == len(BLOB)


def test_a_range_past_the_end_raises_416_and_one_across_it_comes_back_short(remote: ObjectStore) -> None:
    with pytest.raises(GenericError, match="416 Range Not Satisfiable"):
        obstore.get_range(remote, NAME, start=len(BLOB) + 10, length=4)
    assert bytes(obstore.get_range(remote, NAME, start=len(BLOB) - 10, length=20)) == BLOB[-10:]


def test_a_missing_object_raises_file_not_found_naming_the_url(remote: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError, match=r"Error performing GET http://127\.0\.0\.1:\d+/\S*missing\.bin"):
        obstore.get_range(remote, "missing.bin", start=0, length=4)


def test_a_stale_if_match_raises_precondition_error(remote: ObjectStore) -> None:
    etag = obstore.head(remote, NAME)["e_tag"]
    assert etag is not None
    assert bytes(obstore.get(remote, NAME, options={"if_match": etag, "range": (0, 4)}).bytes()) == BLOB[:4]
    with pytest.raises(PreconditionError, match=f"precondition failure for path {NAME}.*412 Precondition Failed"):
        obstore.get(remote, NAME, options={"if_match": '"stale"', "range": (0, 4)})


def test_neighbouring_ranges_coalesce_into_one_request(blob_server: Faulty) -> None:
    store = http_store(blob_server.url)
    starts = [1000 * i for i in range(100)]
    parts = obstore.get_ranges(store, NAME, starts=starts, lengths=[100] * 100)
    assert [bytes(p) for p in parts] == [BLOB[s:s + 100] for s in starts]
    assert blob_server.ranges(NAME) == ["bytes=0-99099"]
    blob_server.forget()
    obstore.get_ranges(store, NAME, starts=starts, lengths=[100] * 100, coalesce=0)
    assert blob_server.count(NAME) == 100


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_retried_then_raised_naming_url_and_status(blob_server: Faulty, status: int) -> None:
    store = http_store(blob_server.url)
    blob_server.status(NAME, status, times=2)
    assert bytes(obstore.get_range(store, NAME, start=0, length=4)) == BLOB[:4]
    assert blob_server.count(NAME) == 3
    blob_server.forget()
    blob_server.status(NAME, status, times=10)
    with pytest.raises(GenericError, match=rf"GET {blob_server.url}/{NAME} .*after 2 retries.* {status} "):
        obstore.get_range(store, NAME, start=0, length=4)
    assert blob_server.count(NAME) == 3  # the first try and max_retries more


def test_4xx_is_not_retried(blob_server: Faulty) -> None:
    blob_server.status(NAME, 404, times=10)
    with pytest.raises(FileNotFoundError):
        obstore.get_range(http_store(blob_server.url), NAME, start=0, length=4)
    assert blob_server.count(NAME) == 1


def test_a_dropped_connection_is_retried(blob_server: Faulty) -> None:
    store = http_store(blob_server.url)
    blob_server.drop(NAME)
    assert bytes(obstore.get_range(store, NAME, start=0, length=4)) == BLOB[:4]
    assert blob_server.count(NAME) == 2
    blob_server.forget()
    blob_server.drop(NAME, times=10)
    with pytest.raises(GenericError, match="after 2 retries.*error sending request"):
        obstore.get_range(store, NAME, start=0, length=4)
    assert blob_server.count(NAME) == 3


def test_a_timeout_is_retried_then_raised(blob_server: Faulty) -> None:
    store = http_store(blob_server.url, retries={**RETRIES, "max_retries": 1}, timeout=timedelta(seconds=0.2))
    blob_server.slow(NAME, 0.6)
    assert bytes(obstore.get_range(store, NAME, start=0, length=4)) == BLOB[:4]
    assert blob_server.count(NAME) == 2
    blob_server.forget()
    blob_server.slow(NAME, 0.6, times=10)
    with pytest.raises(GenericError, match=r"(?s)after 1 retries.*error sending request.*kind: Timeout"):
        obstore.get_range(store, NAME, start=0, length=4)
    assert blob_server.count(NAME) == 2


def test_a_truncated_object_reads_short_without_an_error(blob_server: Faulty) -> None:
    store = http_store(blob_server.url)
    blob_server.truncate(NAME, 1000, times=2)
    assert bytes(obstore.get_range(store, NAME, start=990, length=20)) == BLOB[990:1000]
    with pytest.raises(GenericError, match="416"):
        obstore.get_range(store, NAME, start=1010, length=20)
    assert bytes(obstore.get_range(store, NAME, start=990, length=20)) == BLOB[990:1010]


def test_sync_calls_release_the_gil(blob_server: Faulty) -> None:
    store, threads, delay = http_store(blob_server.url), 8, 0.5
    obstore.get_range(store, NAME, start=0, length=1)
    blob_server.slow(NAME, delay, times=threads)
    begin = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda i: bytes(obstore.get_range(store, NAME, start=i, length=1)), range(threads)))
    elapsed = time.monotonic() - begin
    assert parts == [BLOB[i:i + 1] for i in range(threads)]
    assert elapsed < threads * delay / 2, f"{threads} concurrent reads of {delay} s took {elapsed:.2f} s"


def test_s3_needs_allow_http_for_the_moto_endpoint(s3: S3, served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (served / NAME).write_bytes(BLOB)
    assert s3.upload(served / NAME, "vol/") == [f"vol/{NAME}"]
    assert bytes(obstore.get_range(S3Store.from_url(f"{s3.url}/vol"), NAME, start=5, length=3)) == BLOB[5:8]
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(GenericError, match="builder error"):
        obstore.get_range(S3Store.from_url(s3.url, retry_config=RETRIES), f"vol/{NAME}", start=0, length=4)


def test_servers_leave_no_process_or_thread_behind(tmp_path: Path) -> None:
    threads, children = set(threading.enumerate()), psutil.Process().children()
    with nginx(tmp_path, tmp_path / "nginx") as url, faulty(tmp_path) as server:
        assert url.startswith("http://127.0.0.1:") and server.url.startswith("http://127.0.0.1:")
        assert len(psutil.Process().children()) == len(children) + 1
    assert set(threading.enumerate()) - threads == set()  # other tests' threads may end meanwhile
    assert psutil.Process().children() == children


def test_a_missing_nginx_names_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda *args, **kwargs: None)
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception), match="no nginx binary"):
        nginx_binary()
