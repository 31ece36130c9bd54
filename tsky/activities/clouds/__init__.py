"""Backends, one module each, behind `tsky.activities.clouds.base.Backend`.

Modules are imported on first use so that a worker that never touches a cloud never loads its SDK.
"""

from __future__ import annotations

import importlib

from tsky.activities.clouds.base import Backend
from tsky.spec.settings import Settings

# backend name (as in `infra:` and ClusterInfo.backend) -> module defining `make_backend(settings)`
_MODULES = {
    "local": "tsky.activities.clouds.local",
    "ssh": "tsky.activities.clouds.ssh",
    "k8s": "tsky.activities.clouds.kubernetes",
    "aws": "tsky.activities.clouds.aws",
    "gcp": "tsky.activities.clouds.gcp",
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
