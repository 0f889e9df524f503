# One image for the producer, the worker and python -m workqueue; docker-compose.yml picks the
# command. .dockerignore keeps .env and key files out: settings and secrets come at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY workqueue ./workqueue
# With the metrics extra (prometheus-client, pure Python), so that METRICS_PORT works here too.
RUN pip install --no-cache-dir ".[metrics]"

COPY app ./app
COPY worker ./worker

# Not root: a handler that is tricked into running something runs it without root's rights.
RUN useradd --create-home --uid 10001 workqueue
USER workqueue

# Exec form, no shell in between: SIGTERM reaches Python (under `init: true` in Compose, through
# a small init that also reaps child processes).
CMD ["python", "worker/main.py"]
