"""Upstream adapters, one per kind (a module, or a folder for the larger demo), registered by the
`kind` an operator writes in config."""

from __future__ import annotations

from collections.abc import Callable

from nanogate.core.config import UpstreamConfig
from nanogate.upstreams.base import Services, Upstream
from nanogate.upstreams.gemini import GeminiUpstream
from nanogate.upstreams.openai import OpenAIUpstream
from nanogate.upstreams.task import TaskUpstream


def _demo(config: UpstreamConfig, _: Services) -> Upstream:
    # Imported here: Pillow (~2 MiB) loads only where a demo upstream is configured.
    from nanogate.upstreams.demo import DemoUpstream

    return DemoUpstream(config)


KINDS: dict[str, Callable[[UpstreamConfig, Services], Upstream]] = {
    "demo": _demo,
    "gemini": lambda config, _: GeminiUpstream(config),
    "task": TaskUpstream,
    "openai": OpenAIUpstream,
}


def build_upstream(config: UpstreamConfig, services: Services) -> Upstream:
    return KINDS[config.kind](config, services)


__all__ = ["KINDS", "Services", "Upstream", "build_upstream"]
