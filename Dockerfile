# The tsky worker image (also the CLI, and the one-shot namespace set-up in docker-compose.yml).
#   docker build -t tsky .
#   docker run --rm -e TSKY_TEMPORAL_ADDRESS=temporal:7233 tsky            # a worker
#   docker run --rm -e TSKY_TEMPORAL_ADDRESS=... tsky python -m tsky.worker.namespace_setup
FROM python:3.11-slim

# tini is PID 1: it forwards SIGTERM to the worker (which then hands its activities over) and reaps the
# job processes the `local` infra leaves behind when a worker stops. bash, procps and util-linux are
# what tsky's phase wrapper and the local infra use; openssh-client serves the ssh infra.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini bash procps util-linux openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tsky ./tsky
# A regular install writes the bytecode the workflow sandbox loads for every job; a production worker
# gets every cloud's SDK (the extras).
RUN pip install --no-cache-dir '.[all]' && rm -rf /src

RUN useradd --create-home --uid 1000 tsky && mkdir -p /var/lib/tsky && chown tsky:tsky /var/lib/tsky
USER tsky
WORKDIR /var/lib/tsky
ENV TSKY_HOME=/var/lib/tsky \
    PYTHONUNBUFFERED=1

# -s: still reap orphans when this container shares another's PID namespace (tini is not PID 1 there).
ENTRYPOINT ["tini", "-s", "--"]
CMD ["python", "-m", "tsky.worker"]
