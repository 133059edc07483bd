"""`GET /nodeagentskus`: node agent SKUs and their verified images (api-versions before 2019-06-01.9.0)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from emulator.handlers import supported_images
from emulator.odata import dict_getter
from emulator.rest import paged, route

# Images the service verified when these api-versions were current (long retired there). Clients
# of that era search the list for them, e.g. the tutorial's helper looks for a verified
# Canonical/UbuntuServer image. Emulated nodes run the emulator's own Python whatever the image.
RETIRED_VERIFIED_IMAGES: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "batch.node.ubuntu 14.04",
        {"publisher": "Canonical", "offer": "UbuntuServer", "sku": "14.04.5-LTS", "version": "latest"},
    ),
    (
        "batch.node.ubuntu 16.04",
        {"publisher": "Canonical", "offer": "UbuntuServer", "sku": "16.04-LTS", "version": "latest"},
    ),
    (
        "batch.node.ubuntu 18.04",
        {"publisher": "Canonical", "offer": "UbuntuServer", "sku": "18.04-LTS", "version": "latest"},
    ),
)


def node_agent_skus() -> list[dict[str, Any]]:
    """One entry per node agent SKU, in the old shape: id, verifiedImageReferences, osType."""
    skus: dict[str, dict[str, Any]] = {}
    verified = [
        (image["nodeAgentSKUId"], image["imageReference"], image["osType"])
        for image in supported_images()
        if image.get("verificationType") == "verified"
    ]
    for sku_id, reference, os_type in [
        *((sku_id, reference, "linux") for sku_id, reference in RETIRED_VERIFIED_IMAGES),
        *verified,
    ]:
        entry = skus.setdefault(sku_id, {"id": sku_id, "verifiedImageReferences": [], "osType": os_type})
        entry["verifiedImageReferences"].append(dict(reference))
    return list(skus.values())


@route("GET", "/nodeagentskus", "list_node_agent_skus")
async def list_node_agent_skus(request: web.Request) -> web.StreamResponse:
    return paged(request, enumerate(node_agent_skus(), 1), dict_getter, lambda sku: sku, None)
