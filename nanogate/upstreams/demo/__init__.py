"""The built-in offline `demo` upstream: the adapter (adapter.py), its Pillow renders (render.py)
and its canned text and schema-valid fake JSON (text.py)."""

from __future__ import annotations

from nanogate.upstreams.demo.adapter import DemoUpstream

__all__ = ["DemoUpstream"]
