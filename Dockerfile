# One image for the producer and the worker; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY workqueue ./workqueue
RUN pip install --no-cache-dir .

COPY app ./app
COPY worker ./worker

RUN useradd --create-home --uid 10001 workqueue
USER workqueue

# Exec form, no shell in between: Python is PID 1 and gets `docker compose stop`'s SIGTERM itself.
CMD ["python", "worker/main.py"]
