# The batteryledger image used by docker-compose.yml (topics set-up, worker, HTTP API).
# The broker is not in here: compose runs apache/kafka; without Docker, `batteryledger broker start`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs: the build context also holds .venv/ and .cache/ on a developer machine.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY ledger ./ledger
COPY streams ./streams
COPY batteryledger ./batteryledger
RUN pip install . && rm -rf /src

# Not root; Faust needs a writable working directory for its data dir.
RUN useradd --system --create-home --uid 10001 batteryledger
USER batteryledger
WORKDIR /home/batteryledger

CMD ["batteryledger", "--help"]
