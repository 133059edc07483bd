"""The pool's image against the images Batch supports (`list_supported_images`), before a pool is used.

A retired image/node agent pair fails pool creation or a resize with a bare error; a pair near its
end of life works today and stops working on a date the service publishes. So the pool keeper checks
the configured pair at creation and reuse: unsupported is exit 2 naming the supported alternatives,
an end of life within END_OF_LIFE_WARNING is a warning (event `pool.image_end_of_life`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from azure.batch.models import BatchPool, BatchSupportedImage
from azure.core.exceptions import ResourceNotFoundError

from orchestrator.azure.retry import RetryPolicy, retry_call
from orchestrator.errors import ConfigError
from orchestrator.settings import PoolSettings

log = structlog.get_logger()

END_OF_LIFE_WARNING = timedelta(days=90)
MAX_ALTERNATIVES = 6


class ImageLister(Protocol):
    def list_supported_images(self, **kwargs: Any) -> AsyncIterator[BatchSupportedImage]: ...

    def get_pool(self, pool_id: str, **kwargs: Any) -> Awaitable[BatchPool]: ...


@dataclass(frozen=True)
class SupportedImage:
    """One supported pairing of a Marketplace image and a node agent."""

    publisher: str
    offer: str
    sku: str
    node_agent_sku_id: str
    end_of_life: datetime | None
    verified: bool

    def describe(self) -> str:
        ends = f", supported until {self.end_of_life:%Y-%m-%d}" if self.end_of_life is not None else ""
        return f"{self.publisher}/{self.offer}/{self.sku} with node agent {self.node_agent_sku_id!r}{ends}"


@dataclass(frozen=True)
class ImageCheck:
    """The configured pair's verdict."""

    image: SupportedImage | None  # None: Batch does not support the pair
    warning: str | None  # set when its end of life is near (or passed)
    alternatives: tuple[SupportedImage, ...]


def supported_image_of(item: BatchSupportedImage) -> SupportedImage:
    reference = item.image_reference
    return SupportedImage(
        publisher=str(reference.publisher or ""),
        offer=str(reference.offer or ""),
        sku=str(reference.sku or ""),
        node_agent_sku_id=str(item.node_agent_sku_id),
        end_of_life=item.batch_support_end_of_life,
        verified=str(item.verification_type or "").lower() == "verified",
    )


def judge_image(settings: PoolSettings, supported: Sequence[SupportedImage], now: datetime) -> ImageCheck:
    """Find the configured pair among the supported ones (case-insensitive), and how long it lasts."""
    wanted = (
        settings.image_publisher.lower(),
        settings.image_offer.lower(),
        settings.image_sku.lower(),
        settings.node_agent_sku_id.lower(),
    )
    linux = [image for image in supported if image.end_of_life is None or image.end_of_life > now]
    match = next(
        (
            image
            for image in supported
            if (
                image.publisher.lower(),
                image.offer.lower(),
                image.sku.lower(),
                image.node_agent_sku_id.lower(),
            )
            == wanted
        ),
        None,
    )
    # Alternatives: the same publisher first, verified before unverified, longest support first.
    ranked = sorted(
        linux,
        key=lambda image: (
            image.publisher.lower() != wanted[0],
            not image.verified,
            -(image.end_of_life.timestamp() if image.end_of_life is not None else float("inf")),
        ),
    )
    alternatives = tuple(ranked[:MAX_ALTERNATIVES])
    if match is None:
        return ImageCheck(None, None, alternatives)
    warning = None
    if match.end_of_life is not None and match.end_of_life - now <= END_OF_LIFE_WARNING:
        days = (match.end_of_life - now).days
        when = f"in {days} days" if days >= 0 else f"{-days} days ago"
        warning = (
            f"the pool's image {match.describe()} reaches its Batch end of life {when}: after that Batch "
            "can no longer create or grow pools of it. Move [pool] image_* and node_agent_sku_id to a "
            f"supported pair, e.g. {alternatives[0].describe() if alternatives else 'a newer one'}."
        )
    return ImageCheck(match, warning, alternatives)


async def image_in_use(batch: ImageLister, settings: PoolSettings, retry: RetryPolicy) -> PoolSettings:
    """`settings` with the image pair of the pool as it exists (a kept pool may predate the config)."""
    try:
        existing = await retry_call(
            retry,
            "get_pool",
            lambda: batch.get_pool(settings.id, select=["id", "virtualMachineConfiguration"]),
        )
    except ResourceNotFoundError:
        return settings  # to be created: the configured pair is what it gets
    machine = existing.virtual_machine_configuration
    if machine is None or machine.image_reference is None:
        return settings
    reference = machine.image_reference
    return dataclasses.replace(
        settings,
        image_publisher=str(reference.publisher or settings.image_publisher),
        image_offer=str(reference.offer or settings.image_offer),
        image_sku=str(reference.sku or settings.image_sku),
        node_agent_sku_id=str(machine.node_agent_sku_id or settings.node_agent_sku_id),
    )


async def check_pool_image(
    batch: ImageLister, settings: PoolSettings, retry: RetryPolicy, now: datetime, *, source: str
) -> ImageCheck:
    """Check the pool's image pair (the existing pool's own, else the configured one).

    ConfigError (exit 2) when Batch does not support it.
    """
    configured_settings = settings
    settings = await image_in_use(batch, settings, retry)
    kept = settings != configured_settings

    async def listing() -> list[SupportedImage]:
        return [supported_image_of(item) async for item in batch.list_supported_images()]

    supported = await retry_call(retry, "list_supported_images", listing)
    verdict = judge_image(settings, supported, now)
    configured = (
        f"{settings.image_publisher}/{settings.image_offer}/{settings.image_sku} with node agent "
        f"{settings.node_agent_sku_id!r}"
    )
    if verdict.image is None:
        choices = "; ".join(image.describe() for image in verdict.alternatives) or "none listed"
        where = (
            f"pool {settings.id} exists with {configured}, which is not an image and node agent pair "
            "this Batch account supports (list_supported_images); delete the pool so topn creates it "
            f"with a supported [pool] image_* and node_agent_sku_id (in {source})"
            if kept
            else f"[pool] image_publisher, image_offer, image_sku and node_agent_sku_id (in {source}): "
            f"{configured} is not an image and node agent pair this Batch account supports "
            "(list_supported_images)"
        )
        raise ConfigError(f"{where}. Supported pairs include: {choices}.")
    end_of_life = verdict.image.end_of_life
    if not kept and end_of_life is not None and end_of_life <= now:
        # Batch stops accepting pools of a pair at its end of life: creating one would fail.
        choices = "; ".join(image.describe() for image in verdict.alternatives) or "none listed"
        raise ConfigError(
            f"[pool] image_publisher, image_offer, image_sku and node_agent_sku_id (in {source}): "
            f"{configured} reached its Batch end of life on {end_of_life:%Y-%m-%d}, so no pool can be "
            f"created with it. Supported pairs include: {choices}."
        )
    log.info(
        "pool.image_checked",
        pool_id=settings.id,
        image=configured,
        end_of_life=f"{end_of_life:%Y-%m-%d}" if end_of_life is not None else None,
    )
    if verdict.warning is not None:
        log.warning("pool.image_end_of_life", pool_id=settings.id, message=verdict.warning)
    return verdict
