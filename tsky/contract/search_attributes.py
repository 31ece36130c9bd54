"""tsky's custom search attributes: the one registry used by the workflows, the CLI, the embedded server,
docker-compose and the tests.

SQL visibility (the dev server, PostgreSQL) allows 10 Keyword, 3 Int and 3 Datetime custom attributes
per namespace; this list uses 7, 3 and 3. Never put secrets here: search attributes are not encrypted.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

JOB_ID = SearchAttributeKey.for_int("TskyJobId")
RECOVERIES = SearchAttributeKey.for_int("TskyRecoveries")
PRIORITY = SearchAttributeKey.for_int("TskyPriority")

STATUS = SearchAttributeKey.for_keyword("TskyStatus")
JOB_NAME = SearchAttributeKey.for_keyword("TskyJobName")
USER = SearchAttributeKey.for_keyword("TskyUser")
RESOURCES = SearchAttributeKey.for_keyword("TskyResources")
POOL = SearchAttributeKey.for_keyword("TskyPool")
INFRA = SearchAttributeKey.for_keyword("TskyInfra")
SCHEDULE = SearchAttributeKey.for_keyword("TskySchedule")  # the schedule that started the job

SUBMITTED_AT = SearchAttributeKey.for_datetime("TskySubmittedAt")
STARTED_AT = SearchAttributeKey.for_datetime("TskyStartedAt")
ENDED_AT = SearchAttributeKey.for_datetime("TskyEndedAt")

ALL: tuple[SearchAttributeKey, ...] = (
    JOB_ID,
    RECOVERIES,
    PRIORITY,
    STATUS,
    JOB_NAME,
    USER,
    RESOURCES,
    POOL,
    INFRA,
    SCHEDULE,
    SUBMITTED_AT,
    STARTED_AT,
    ENDED_AT,
)

# The spelling `temporal server start-dev --search-attribute NAME=TYPE` and
# `temporal operator search-attribute create --type TYPE` expect.
_CLI_TYPE = {"INT": "Int", "KEYWORD": "Keyword", "DATETIME": "Datetime"}


def cli_flags() -> list[str]:
    """`--search-attribute Name=Type` pairs for `temporal server start-dev`."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={_CLI_TYPE[key.indexed_value_type.name]}"]
    return flags
