"""Backends, one module each, behind `tsky.ops.clouds.base.Backend`.

Modules are imported on first use so that a worker that never touches a cloud never loads its SDK.
"""

from __future__ import annotations

import importlib

from tsky.ops.clouds.base import Backend
from tsky.spec.settings import Settings

# backend name (as in `infra:` and ClusterInfo.backend) -> module defining `make_backend(settings)`
_MODULES = {
    "local": "tsky.ops.clouds.local",
    "ssh": "tsky.ops.clouds.ssh",
    "k8s": "tsky.ops.clouds.kubernetes",
    "aws": "tsky.ops.clouds.aws",
    "gcp": "tsky.ops.clouds.gcp",
}

_cache: dict[tuple[str, int], Backend] = {}


def backend_names() -> list[str]:
    return list(_MODULES)


def get_backend(name: str, settings: Settings) -> Backend:
    key = (name, id(settings))
    if key not in _cache:
        if name not in _MODULES:
            raise KeyError(f"unknown backend {name!r}; known: {', '.join(_MODULES)}")
        module = importlib.import_module(_MODULES[name])
        _cache[key] = module.make_backend(settings)
    return _cache[key]
