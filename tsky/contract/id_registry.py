"""The job-id registry's contract: its workflow type, update, query and their payloads (the workflow is
`tsky.workflows.id_registry`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

ID_REGISTRY_WORKFLOW = "TskyIdRegistry"
ALLOCATE_UPDATE = "allocate"
NEXT_ID_QUERY = "next_id"


class RegistryState(BaseModel):
    next_id: int = 1


class AllocateRequest(BaseModel):
    count: int = Field(default=1, ge=1)
