"""Inputs that already live in Blob Storage: `topn run az://CONTAINER/PREFIX` (issue 13, point 1).

Such an input is never copied: the run lists it (one request per page of up to 5,000 blobs) and each
unit's manifest names it as a blob of its own container, read by the node through a read-only
container SAS (docs/contracts.md, "Blob inputs"). This module turns command-line arguments into
container prefixes (pure), lists them into the run's inputs, and keeps one address form for the
journal (`az://CONTAINER/BLOB`).

`az://` always means the configured storage account; an http(s) URL must be of that account's blob
endpoint (`https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX`, or Azurite's path-style
`http://127.0.0.1:PORT/devstoreaccount1/CONTAINER/PREFIX`). Every refusal is an InputError (exit 2)
before the run is created, and no message holds a SAS or a key.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient

from orchestrator import naming
from orchestrator.azure.clients import STORAGE, RequestCounter, run_requests
from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.errors import InputError
from orchestrator.inputs import (
    BlobSource,
    InputFile,
    SkippedInput,
    check_relpath,
    discover_inputs,
)
from orchestrator.journal.records import JournalListing
from orchestrator.settings import Settings

log = structlog.get_logger()

SCHEME = "az://"
# One List Blobs request returns at most 5,000 names (the service's own maximum per page).
LIST_PAGE_SIZE = 5000
# Container names: 3-63 characters, lowercase letters, digits and single hyphens (Azure's rule).
_CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


@dataclass(frozen=True)
class BlobPrefix:
    """One blob argument: every blob of `container` whose name starts with `prefix`."""

    argument: str  # as given, without any query (never a SAS), for messages
    container: str
    prefix: str

    @property
    def address(self) -> str:
        return blob_address(self.container, self.prefix)


def is_blob_argument(argument: str) -> bool:
    """Whether a `topn run` argument names blobs (az:// or an http(s) URL) rather than a local path."""
    lowered = argument.lower()
    return lowered.startswith((SCHEME, "https://", "http://"))


def discover_arguments(
    arguments: Sequence[str], skipped: list[SkippedInput] | None = None
) -> tuple[list[InputFile], list[str]]:
    """`topn run`'s arguments: the local inputs, discovered now (InputError), and the blob arguments,
    listed once the services are up (`with_blob_inputs`)."""
    local = [Path(argument) for argument in arguments if not is_blob_argument(argument)]
    blobs = [argument for argument in arguments if is_blob_argument(argument)]
    return (discover_inputs(local, skipped) if local else []), blobs


def blob_address(container: str, name: str) -> str:
    """How the journal, summary.json and events name a blob input: `az://CONTAINER/NAME`."""
    return f"{SCHEME}{container}/{name}"


def parse_address(address: str) -> tuple[str, str]:
    """(container, blob name) of an `az://CONTAINER/NAME` address (ValueError for anything else)."""
    if not address.startswith(SCHEME):
        raise ValueError(f"not a blob address: {address!r}")
    container, slash, name = address[len(SCHEME) :].partition("/")
    if not container or not slash or not name:
        raise ValueError(f"not a blob address: {address!r}")
    return container, name


def _endpoint_parts(url: str) -> tuple[str, str, str]:
    """(scheme, host:port, path without trailing /) of an endpoint or blob URL, lowercased but the path."""
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def _account_of_url(netloc: str, path: str) -> str:
    """The storage account a blob URL names: its host's first label, or a path-style URL's first segment."""
    host = netloc.split(":", 1)[0]
    if host.endswith(".blob.core.windows.net") or ".blob." in host:
        return host.split(".", 1)[0]
    first = path.lstrip("/").split("/", 1)[0]
    return first or host


def parse_blob_argument(argument: str, *, blob_endpoint: str, account_name: str) -> BlobPrefix:
    """An `az://` or http(s) argument as a container and prefix of the configured account (or InputError)."""
    shown = argument.split("?", 1)[0].split("#", 1)[0]  # a pasted SAS URL: its query is never shown
    if "?" in argument:
        raise InputError(
            f"blob input {shown} has a query string (a SAS?): give the URL without it; topn reads "
            "with its configured credentials and hands the nodes its own read-only SAS"
        )
    if argument.lower().startswith(SCHEME):
        rest = argument[len(SCHEME) :]
    else:
        scheme, netloc, path = _endpoint_parts(argument)
        end_scheme, end_netloc, end_path = _endpoint_parts(blob_endpoint)
        raw_path = urlsplit(argument).path
        if (scheme, netloc) != (end_scheme, end_netloc) or not (
            raw_path == end_path or raw_path.startswith(f"{end_path}/")
        ):
            named = _account_of_url(netloc, path)
            raise InputError(
                f"blob input {shown} is not in the configured storage account {account_name!r} "
                f"(blob endpoint {blob_endpoint}); it names account {named!r} at {scheme}://{netloc}. "
                "topn reads blob inputs from its own storage account only: use "
                "az://CONTAINER/PREFIX for that account, or set [storage] blob_endpoint and "
                "account_name (or TOPN_STORAGE_BLOB_ENDPOINT / TOPN_STORAGE_ACCOUNT_NAME) to the "
                "account that holds the blobs"
            )
        rest = unquote(raw_path[len(end_path) :].lstrip("/"))
    container, _, prefix = rest.partition("/")
    if not _CONTAINER_NAME.match(container):
        raise InputError(
            f"blob input {shown} does not name a container: write az://CONTAINER/PREFIX (or the "
            "blob endpoint's URL followed by /CONTAINER/PREFIX); container names are 3-63 "
            "lowercase letters, digits and hyphens"
        )
    return BlobPrefix(argument=shown, container=container, prefix=prefix)


def check_not_topn_container(prefix: BlobPrefix, container_prefix: str) -> None:
    """Refuse topn's own containers as inputs: runs delete them, and the user's data is never deleted."""
    own = (f"{container_prefix}-in-", f"{container_prefix}-out-")
    if prefix.container == naming.app_container(container_prefix) or prefix.container.startswith(own):
        raise InputError(
            f"blob input {prefix.argument} is in {prefix.container!r}, one of topn's own containers "
            "(runs and `topn local prune` delete them); keep your inputs in a container of your own"
        )


def relpath_of(blob_name: str, prefix: str) -> str:
    """A blob's name in results: what follows the prefix's last `/`.

    `logs/2026/` + `logs/2026/a/b.txt` give `a/b.txt`; a prefix that names one blob gives its base
    name, as a local file argument does.
    """
    cut = prefix.rfind("/") + 1
    return blob_name[cut:]


@dataclass(frozen=True)
class ListedBlob:
    """One blob found under a prefix, as the listing gave it."""

    name: str
    size_bytes: int
    etag: str


def quoted_etag(etag: str) -> str:
    """An ETag in its HTTP header form, quotes included: a listing's XML may give it bare.

    The node reports the header's form for what it read, and an `If-Match` needs it too.
    """
    return f'"{etag.strip(chr(34))}"'


def _listing_refused(prefix: BlobPrefix, account_name: str, error: HttpResponseError) -> InputError:
    """A listing error as the exit-2 message that names the fix (never the SDK's text, which holds URLs)."""
    code = getattr(error, "error_code", None) or ""
    if isinstance(error, ResourceNotFoundError) or code == "ContainerNotFound":
        return InputError(
            f"blob input {prefix.argument}: there is no container {prefix.container!r} in the storage "
            f"account {account_name!r} (check the name, or the configured account)"
        )
    if error.status_code == 403:
        return InputError(
            f"blob input {prefix.argument}: the storage account {account_name!r} refused to list "
            f"container {prefix.container!r} (HTTP 403 {code or 'Forbidden'}). Check [storage] "
            "account_key, or give topn's identity a role that may read and list blobs there "
            "(e.g. Storage Blob Data Reader)"
        )
    return InputError(
        f"blob input {prefix.argument}: listing container {prefix.container!r} failed "
        f"(HTTP {error.status_code} {code})"
    )


@dataclass(frozen=True)
class ListedPage:
    """One List Blobs page: its blobs, and the marker to list the next page from (None: the last)."""

    blobs: list[ListedBlob]
    next_marker: str | None


async def list_pages_after(
    blob_service: BlobServiceClient,
    prefix: BlobPrefix,
    retry: RetryPolicy,
    *,
    account_name: str,
    after: str | None = None,
    page_size: int = LIST_PAGE_SIZE,
) -> AsyncGenerator[ListedPage, None]:
    """The blobs under a prefix from continuation marker `after` (None: the start), a page at a time.

    Each page is one request, retried on its own from its marker, so a transient error costs one
    page. Folder markers (names ending in `/`) are not inputs and are left out (a page may be empty).
    """
    container = blob_service.get_container_client(prefix.container)
    token = after
    # One SDK pager for the whole listing, a fresh one only after a failed page: a pager refers to
    # itself (its callbacks are its own bound methods), so one dropped after each page stayed with
    # its deserialized blobs (some ten objects each: 100,000 of them at 10,000 blobs) until a full
    # garbage collection.
    pager: Any = None
    try:
        while True:
            marker = token

            async def one_page(marker: str | None = marker) -> tuple[list[ListedBlob], str | None]:
                nonlocal pager
                if pager is None:
                    pages: Any = container.list_blobs(
                        name_starts_with=prefix.prefix or None, results_per_page=page_size
                    )
                    pager = pages.by_page(continuation_token=marker)
                try:
                    page = await pager.__anext__()
                except StopAsyncIteration:  # no page at all: nothing more to list
                    return [], None
                except BaseException:
                    pager = None  # its state after a failure is unknown: the retry starts again from `marker`
                    raise
                found = [
                    ListedBlob(str(blob.name), int(blob.size or 0), quoted_etag(str(blob.etag)))
                    async for blob in page
                    if not str(blob.name).endswith("/")
                ]
                return found, pager.continuation_token or None

            try:
                found, token = await retry_call(retry, "list_blobs", one_page)
            except HttpResponseError as error:
                raise _listing_refused(prefix, account_name, error) from None
            yield ListedPage(found, token)
            if token is None:
                return
    finally:
        # The last pager is garbage in a cycle now: free it and its page at once, not at whatever
        # full collection comes next (a run raises the collector's thresholds: cli.py).
        pager = None
        gc.collect()


async def list_pages(
    blob_service: BlobServiceClient,
    prefix: BlobPrefix,
    retry: RetryPolicy,
    *,
    account_name: str,
    page_size: int = LIST_PAGE_SIZE,
) -> AsyncIterator[list[ListedBlob]]:
    """The blobs under a prefix, one page (one request, up to `page_size` names) at a time."""
    async for page in list_pages_after(
        blob_service, prefix, retry, account_name=account_name, page_size=page_size
    ):
        yield page.blobs


def no_blobs_error(prefix: BlobPrefix) -> InputError:
    """The exit-2 refusal of a prefix that names no blob."""
    return InputError(
        f"blob input {prefix.argument}: no blobs in container {prefix.container!r} start with "
        f"{prefix.prefix!r} (check the prefix; it is matched from the start of blob names, case "
        "included)"
    )


async def list_blob_inputs(
    blob_service: BlobServiceClient,
    prefixes: Sequence[BlobPrefix],
    retry: RetryPolicy,
    *,
    account_name: str,
    page_size: int = LIST_PAGE_SIZE,
) -> list[InputFile]:
    """The inputs of every prefix, in argument order then name order (InputError for an empty one)."""
    found: list[InputFile] = []
    for prefix in prefixes:
        before = len(found)
        async for page in list_pages(
            blob_service, prefix, retry, account_name=account_name, page_size=page_size
        ):
            found.extend(listed_inputs(prefix, page))
        if len(found) == before:
            raise no_blobs_error(prefix)
    return found


def listed_inputs(prefix: BlobPrefix, blobs: Sequence[ListedBlob]) -> list[InputFile]:
    """A page's blobs as inputs, each named by its relpath under the prefix (not yet made unique)."""
    inputs: list[InputFile] = []
    for blob in blobs:
        source = BlobSource(prefix.container, blob.name, blob.etag)
        relpath = relpath_of(blob.name, prefix.prefix)
        inputs.append(
            InputFile(path=Path(source.address), relpath=relpath, size_bytes=blob.size_bytes, blob=source)
        )
    return inputs


class InputNamer:
    """Names a run's inputs one page at a time, as `make_relpaths_unique` names one list (pure).

    Each name is decided when its page comes, from the names taken so far only: a blob whose
    relpath is taken becomes `stem~N.ext` with the smallest N >= 2 not taken yet, and the same blob
    reached again (through a second prefix) is left out. So the names depend on the order of the
    blobs, never on how the listing cut them into pages, and a resumed listing goes on from the
    journalled names alone.
    """

    def __init__(self, taken: Iterable[str] = (), blobs: Iterable[tuple[str, str]] = ()) -> None:
        self._taken = set(taken)
        self._blobs = set(blobs)

    def name(self, items: Sequence[InputFile]) -> list[InputFile]:
        """The page's new inputs with unique relpaths (InputError names one that cannot be a result)."""
        named: list[InputFile] = []
        for item in items:
            assert item.blob is not None, "only blob inputs come page by page"
            key = (item.blob.container, item.blob.name)
            if key in self._blobs:
                continue
            relpath = unique_relpath(item.relpath, self._taken)
            check_relpath(relpath, item.path)
            self._blobs.add(key)
            self._taken.add(relpath)
            named.append(replace(item, relpath=relpath))
        return named


def unique_relpath(relpath: str, taken: Collection[str]) -> str:
    """`relpath`, or when taken, `stem~N.ext` with the smallest N >= 2 not taken (inputs' rule)."""
    if relpath not in taken:
        return relpath
    path = PurePosixPath(relpath)
    number = 2
    while True:
        candidate = str(path.with_name(f"{path.stem}~{number}{path.suffix}"))
        if candidate not in taken:
            return candidate
        number += 1


def merge_inputs(local: Sequence[InputFile], blobs: Sequence[InputFile]) -> list[InputFile]:
    """Local inputs (as discovered) and blob inputs as one run's inputs: unique relpaths, sorted.

    A blob whose relpath another input already has becomes `stem~2.ext` (`InputNamer`: local inputs
    keep theirs); every name is checked as a local one is (InputError names a bad one).
    """
    if not blobs:
        return list(local)
    named = InputNamer(item.relpath for item in local).name(blobs)
    return sorted([*local, *named], key=lambda item: item.relpath)


@dataclass(frozen=True)
class ListingStart:
    """A run's inputs before its run is created: the local ones and each blob prefix's first page.

    The rest of each prefix is listed by the run (run/listing.py) from its marker in `listings`.
    """

    inputs: list[InputFile]
    listings: list[JournalListing]
    storage_requests: int  # the first pages' own requests, retries included
    started: float  # time.monotonic() when the listing began


async def start_listing(
    settings: Settings, blob_service: BlobServiceClient, local: Sequence[InputFile], arguments: Sequence[str]
) -> ListingStart:
    """Check every blob argument and list its first page (InputError, exit 2: nothing is created yet).

    An empty prefix, a missing container and a refused listing are found here, before the run
    exists. `settings` are the resolved ones (local mode's Azurite endpoint has its real port by then).
    """
    storage = settings.storage
    prefixes = [
        parse_blob_argument(argument, blob_endpoint=storage.blob_endpoint, account_name=storage.account_name)
        for argument in arguments
    ]
    for prefix in prefixes:
        check_not_topn_container(prefix, storage.container_prefix)
    started = time.monotonic()
    namer = InputNamer(item.relpath for item in local)
    inputs = list(local)
    listings: list[JournalListing] = []
    with run_requests(RequestCounter()) as counter:
        for position, prefix in enumerate(prefixes):
            pages = list_pages_after(
                blob_service,
                prefix,
                settings.retry,
                account_name=storage.account_name,
                page_size=settings.run.list_page_blobs,
            )
            page = ListedPage([], None)
            async for page in pages:  # up to the first page with a blob (folder markers may fill one)
                if page.blobs:
                    break
            await pages.aclose()
            if not page.blobs:
                raise no_blobs_error(prefix)
            inputs.extend(namer.name(listed_inputs(prefix, page.blobs)))
            listings.append(
                JournalListing(
                    position=position,
                    argument=prefix.argument,
                    container=prefix.container,
                    prefix=prefix.prefix,
                    marker=page.next_marker,
                    complete=page.next_marker is None,
                )
            )
    return ListingStart(inputs, listings, counter.total(STORAGE), started)


def prefix_of_listing(listing: JournalListing) -> BlobPrefix:
    """The prefix a journalled listing lists."""
    return BlobPrefix(argument=listing.argument, container=listing.container, prefix=listing.prefix)
