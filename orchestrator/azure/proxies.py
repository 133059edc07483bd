"""The aiohttp transport of topn's clients, reading the environment's proxy settings once per endpoint.

azure-core's AioHttpTransport trusts the environment, so aiohttp looks for proxy settings (HTTP_PROXY,
HTTPS_PROXY, NO_PROXY, and ~/.netrc) for every request, in two worker-thread trips: about a tenth of a
millisecond of CPU each, on every upload and every poll (bench/scale_run.py has the map). The same
settings are read here once per endpoint (scheme, host and port) and handed to each request. ~/.netrc
credentials for the endpoint itself are not used: every request already carries its own
Authorization, which aiohttp refuses to combine with them; a proxy's own credentials still are.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import anyio
from aiohttp import BasicAuth
from aiohttp.helpers import get_env_proxy_for_url
from azure.core.pipeline.transport import AioHttpTransport
from yarl import URL

EnvironmentProxy = tuple[URL, BasicAuth | None]


def environment_proxy(url: str) -> EnvironmentProxy | None:
    """The proxy (and its credentials) the environment names for `url`, or None to connect directly."""
    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:  # no proxy for this scheme, or NO_PROXY names the host
        return None


class EnvironmentProxyTransport(AioHttpTransport):  # type: ignore[misc]
    """AioHttpTransport that looks the environment's proxy up once per endpoint, not per request."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["use_env_settings"] = False  # aiohttp's own per-request lookups; done here instead
        super().__init__(**kwargs)
        self._proxies: dict[tuple[str, str, int | None], EnvironmentProxy | None] = {}

    async def send(self, request: Any, **config: Any) -> Any:
        if "proxy" not in config and not config.get("proxies"):
            parts = urlsplit(request.url)
            endpoint = (parts.scheme, parts.hostname or "", parts.port)
            if endpoint not in self._proxies:
                # A worker thread: the lookup may read ~/.netrc.
                self._proxies[endpoint] = await anyio.to_thread.run_sync(environment_proxy, request.url)
            proxy = self._proxies[endpoint]
            if proxy is not None:
                config["proxy"], config["proxy_auth"] = proxy
        return await super().send(request, **config)
