"""`python -m tsky.worker`: run a worker in the foreground (what `tsky worker` and the daemon run)."""

from __future__ import annotations

import asyncio
import logging

from tsky.spec.settings import load_settings
from tsky.worker.main import run_worker
from tsky.worker.process import exit_process


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = 0
    try:
        asyncio.run(run_worker(load_settings()))
    except KeyboardInterrupt:
        pass
    except Exception:
        logging.getLogger("tsky.worker").exception("worker failed")
        code = 1
    exit_process(code)


if __name__ == "__main__":
    main()
