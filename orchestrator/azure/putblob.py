"""Put Blob for small inputs through a short azure-core pipeline: what one upload from memory needs.

The storage SDK's `upload_blob` builds a BlobClient for every blob (with a generated client and
serializers over all of its models) and sends each request through sixteen policies. For thousands
of small inputs that was most of the orchestrator's CPU per file (bench/scale_run.py has the map).
This pipeline keeps what a Put Blob of bytes in memory needs: the service version and date, the
blob client's own shared-key signing policy, and the client's counting transport (its own
connections). Retries stay with `retry_call`, as for every other request: the pipeline has none.
"""

from __future__ import annotations

import base64
import email.utils
import uuid
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.pipeline import AsyncPipeline
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.pipeline.transport import AioHttpTransport, AsyncHttpTransport
from azure.core.rest import HttpRequest
from azure.storage.blob.aio import BlobServiceClient

# Put Blob answers 201; an existing blob under `If-None-Match: *` answers 409 BlobAlreadyExists.
CREATED = 201
ALREADY_EXISTS_CODE = "BlobAlreadyExists"


class BlobPutter:
    """Sends Put Blob requests for whole blobs held in memory (block blobs, stored MD5 and type)."""

    def __init__(
        self,
        account_url: str,
        signing: SansIOHTTPPolicy[Any, Any],
        transport: AsyncHttpTransport[Any, Any],
        api_version: str,
    ) -> None:
        self._account_url = account_url.rstrip("/")
        self._api_version = api_version
        self._pipeline: AsyncPipeline[Any, Any] = AsyncPipeline(transport, policies=[signing])

    def __repr__(self) -> str:  # never show the signing policy (it holds the account key)
        return f"BlobPutter(account_url={self._account_url!r})"

    def blob_url(self, container: str, blob_name: str) -> str:
        """The blob's URL, its name escaped as the storage SDK escapes it."""
        return f"{self._account_url}/{quote(container)}/{quote(blob_name, safe='~/')}"

    async def put(
        self,
        container: str,
        blob_name: str,
        data: bytes,
        *,
        content_md5: bytes,
        content_type: str,
        overwrite: bool,
    ) -> None:
        """Create (or with `overwrite`, replace) the blob with `data`, storing its MD5 and content type.

        Raises ResourceExistsError when the blob exists and `overwrite` is false; HttpResponseError
        (its status and `x-ms-error-code` readable as for the SDK's errors) for any other refusal.
        """
        headers = {
            "x-ms-version": self._api_version,
            "x-ms-date": email.utils.formatdate(usegmt=True),
            "x-ms-client-request-id": str(uuid.uuid4()),
            "x-ms-blob-type": "BlockBlob",
            "x-ms-blob-content-md5": base64.b64encode(content_md5).decode("ascii"),
            "x-ms-blob-content-type": content_type,
            "Content-Type": "application/octet-stream",
        }
        if not overwrite:
            headers["If-None-Match"] = "*"
        request = HttpRequest("PUT", self.blob_url(container, blob_name), headers=headers, content=data)
        response = (await self._pipeline.run(request, stream=False)).http_response
        if response.status_code == CREATED:
            return
        if response.headers.get("x-ms-error-code") == ALREADY_EXISTS_CODE:
            raise ResourceExistsError(response=response)
        raise HttpResponseError(response=response)


class BlobService(BlobServiceClient):
    """The storage SDK's blob client, with a BlobPutter beside it for small uploads.

    `putter` signs with the client's own shared-key policy, on `putter_transport` (connections of its
    own). Without a shared key (Entra ID) it is None and every upload goes through the SDK.
    """

    def __init__(
        self, account_url: str, *, credential: Any, putter_transport: AioHttpTransport | None, **kwargs: Any
    ) -> None:
        super().__init__(account_url, credential=credential, **kwargs)
        self._putter_transport = putter_transport
        self.putter: BlobPutter | None = None
        if putter_transport is not None and isinstance(self.credential, SansIOHTTPPolicy):
            self.putter = BlobPutter(account_url, self.credential, putter_transport, self.api_version)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._putter_transport is not None:
                await self._putter_transport.close()

    async def __aexit__(self, *args: Any) -> None:
        await self.close()
