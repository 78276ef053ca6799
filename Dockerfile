# chat-archiver: one image for every service of docker-compose.yml (worker, beat, Flower, the
# metrics exporter and, in the demo profile, the provider simulator and the producer). The compose
# file picks the command; the default is the worker.
#
# Two stages so the final image holds the installed package and nothing of the source tree:
# `celery -A worker` imports `worker` from the working directory before site-packages, so a
# source copy in /app would silently shadow what pip installed.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# setuptools needs pyproject.toml, the README it names as `readme`, and the three packages that
# [tool.setuptools.packages.find] includes. .dockerignore lets nothing else into the context.
COPY pyproject.toml README.md ./
COPY config ./config
COPY worker ./worker
COPY tasks ./tasks
# The package alone (--no-deps): its dependencies are installed in the final stage, in a layer of
# their own, from the lock. No extras: [test] and [dev] are for the repository, not the image.
RUN pip install --no-deps --prefix=/install .


FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so files the operator mounts (deploy/) can be granted to it if they are not
# world-readable.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin app

# Dependencies first, exactly as requirements-runtime.lock pins them (the lock's pins less the
# extras, each file's hash checked; `make lock` writes it): this layer is rebuilt only when the
# lock changes, not on every code change, and two builds a week apart install the same releases.
COPY requirements-runtime.lock /tmp/requirements-runtime.lock
RUN pip install --require-hashes -r /tmp/requirements-runtime.lock \
    && rm /tmp/requirements-runtime.lock

# Then the package itself: a few hundred kilobytes, the only layer a code change rebuilds.
COPY --from=build /install /usr/local

# An empty working directory the service user owns: nothing here is read at run time (RedBeat keeps
# beat's schedule in Redis, no schedule file), but Celery may write a pid or state file to it.
WORKDIR /app
RUN chown app:app /app
USER app

CMD ["celery", "-A", "worker", "worker", "-l", "INFO"]
