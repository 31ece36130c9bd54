"""The launch options of issue 18 (`--after`, `--after-any`, `--notify`), checked before anything starts.

Parsing is here, once, for `jobs launch`, `jobs schedule create` and `jobs relaunch`; the client calls
(schedules, relaunch) are in `tsky.client.orchestration`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tsky.cli.common import fail, ui_base
from tsky.contract.orchestration import Notify
from tsky.spec.secrets import load_key, seal
from tsky.spec.settings import Settings


def parse_after(values: list[str] | None) -> list[int]:
    """`--after 3,4 --after 7` -> [3, 4, 7]."""
    ids: list[int] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part.isdigit() or int(part) < 1:
                fail(f"--after {value!r}: give managed job ids, e.g. --after 12 or --after 12,13.")
            if int(part) not in ids:
                ids.append(int(part))
    return ids


def notify_for(urls: list[str] | None, settings: Settings) -> Notify:
    """The job's webhooks: `--notify` URLs plus `jobs.notify.urls` from the settings, each sealed (a webhook
    URL is a credential: it must never reach Temporal history, the Web UI or logs in clear)."""
    given = [*(urls or []), *settings.jobs.notify.urls]
    for url in given:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = f"{parts.scheme}://{parts.hostname}/..." if parts.hostname else "this value"
            fail(f"--notify / jobs.notify.urls: {shown} is not an http(s) URL; give e.g. https://hooks.slack.com/...")
    if not given:
        return Notify()
    key = load_key(settings.home, create=True)
    sealed = seal({str(i): url for i, url in enumerate(dict.fromkeys(given))}, key)
    return Notify(sealed_urls=list(sealed.values()), statuses=settings.jobs.notify.statuses, web_ui=ui_base(settings))
