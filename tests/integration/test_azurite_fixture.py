"""The Azurite fixture gives a working blob endpoint for the real aio storage client."""

from __future__ import annotations

from azure.storage.blob.aio import BlobServiceClient

from tests.conftest import StorageEndpoint


async def test_round_trip_through_azurite(azurite: StorageEndpoint) -> None:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("fixture-check")
        await container.create_container()
        await container.upload_blob("hello.txt", b"hello azurite")
        downloaded = await (await container.download_blob("hello.txt")).readall()
        assert downloaded == b"hello azurite"
        await container.delete_container()
