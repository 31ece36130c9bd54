"""What `file_mounts:` and `workdir:` may hold: local paths, bucket URLs, storage objects, git checkouts."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, field_validator, model_validator

from tsky.spec.errors import FieldError

# `store: local` is tsky's own: a directory shared by the clusters of the local backend.
STORES = ("s3", "gcs", "azure", "r2", "ibm", "oci", "nebius", "coreweave", "vastdata", "hf", "volume", "local")
MODES = ("MOUNT", "COPY", "MOUNT_CACHED")
CACHED_TYPES = ("MODEL_CHECKPOINT_RO", "MODEL_CHECKPOINT_RW", "DATASET_RO", "DATASET_RW")

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GIT_URL_RE = re.compile(r"^(?:(?:https?|ssh|git)://\S+|[\w.-]+@[\w.-]+:\S+)$")


def is_url(source: str) -> bool:
    """A bucket or web URL (`s3://b/p`, `gs://b`, `https://...`), as opposed to a local path."""
    return bool(_URL_RE.match(source))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Storage(_Model):
    """A storage object in `file_mounts`: a bucket (made or reused), mounted or copied at the path."""

    name: StrictStr | None = None
    source: StrictStr | list[StrictStr] | None = None
    store: str | None = None
    persistent: StrictBool = True
    mode: str = "MOUNT"
    type: str | None = None
    config: dict[str, Any] | None = None

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or value.strip().lower() not in STORES:
            raise FieldError(f"{value!r} is not one of {list(STORES)}.")
        return value.strip().lower()

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value is None:
            return "MOUNT"
        if not isinstance(value, str) or value.strip().upper() not in MODES:
            raise FieldError(f"{value!r} is not one of {list(MODES)}.")
        return value.strip().upper()

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or value.strip().upper() not in CACHED_TYPES:
            raise FieldError(f"{value!r} is not one of {list(CACHED_TYPES)}.")
        return value.strip().upper()

    @model_validator(mode="after")
    def _rules(self) -> Storage:
        if self.name is None and self.source is None:
            raise FieldError(
                "Storage source or storage name must be specified: give `name` (a bucket to create or "
                "reuse) and/or `source` (a local path or bucket URL)."
            )
        if self.mode == "COPY" and self.source is None:
            raise FieldError("Storage mode COPY needs a `source` to copy from.")
        return self


class GitWorkdir(_Model):
    """`workdir: {url, ref}`: the working directory is a checkout of a git repository."""

    url: StrictStr
    ref: StrictStr | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _GIT_URL_RE.match(value.strip()):
            raise FieldError(
                f"Invalid git URL {value!r}. Use an https://, ssh:// or scp-style (git@host:org/repo.git) URL."
            )
        return value.strip()
