"""The job-id registry's payloads (the workflow is `tsky.workflows.id_registry`; its names are in `names`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RegistryState(BaseModel):
    next_id: int = 1


class AllocateRequest(BaseModel):
    count: int = Field(default=1, ge=1)
