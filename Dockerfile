# One image for every pipeline component. KFP runs each stage as
# `python3 -m kfp.dsl.executor_main ...` inside it; by hand it is the `recsys` CLI.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Dependencies first, from the lock file only, so code changes reuse this layer.
# Their bytecode is compiled into the image: with PYTHONDONTWRITEBYTECODE and a
# read-only site-packages every task would otherwise compile what it imports
# (`import tensorflow` 14 s instead of 4 s on the 2-core test machine).
# A few locked packages (e.g. pyfarmhash) ship only sources: a C++ compiler and the
# Python headers are installed for the build and removed in the same layer.
COPY requirements.lock /tmp/requirements.lock
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && (python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || apt-get install -y --no-install-recommends python3-dev) \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check uv==0.13.8 \
    && /opt/venv/bin/uv pip sync --compile-bytecode --system-certs --no-cache --python /opt/venv/bin/python /tmp/requirements.lock \
    && apt-get purge -y --auto-remove g++ python3-dev \
    && rm -rf /var/lib/apt/lists/* /tmp/requirements.lock

WORKDIR /app
COPY pyproject.toml README.md ./
# The package, and the folders its links point to (components/, pipelines/, schemas/
# hold the stages, the DAG and the schemas at the repository's top level).
COPY recsys ./recsys
COPY components ./components
COPY pipelines ./pipelines
COPY schemas ./schemas
RUN /opt/venv/bin/uv pip install --compile-bytecode --system-certs --no-cache --python /opt/venv/bin/python --no-deps . \
    && useradd --create-home --uid 1000 recsys

USER recsys
WORKDIR /home/recsys
ENTRYPOINT ["recsys"]
CMD ["--help"]
