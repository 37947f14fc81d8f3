# One image for every Python service of compose.yaml (Prefect server and worker, MLflow server,
# Dask scheduler and GPU workers, feedback, inference): one tag, so server and clients always run
# the same Prefect, MLflow and Dask.
#
# Layers, from the least to the most often changed: system packages; the dependencies, resolved
# from pyproject.toml and pinned by constraints.txt (a code change never reinstalls torch); the
# package itself, built from the source and installed non-editable without its dependencies.
FROM python:3.11.13-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# libgomp1: torch's CPU kernels and onnxruntime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 surgflow \
    && useradd --uid 10001 --gid surgflow --create-home --shell /usr/sbin/nologin surgflow \
    && mkdir -p /srv/surgflow /srv/videos /srv/recipes /srv/mlartifacts \
    && chown surgflow:surgflow /srv/surgflow /srv/mlartifacts

WORKDIR /opt/surgflow

# 1. Dependencies only: the project's dependencies and its `stack` extra (database drivers of
#    the servers), read from pyproject.toml, at the versions constraints.txt pins.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['stack']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c constraints.txt \
    && rm /tmp/requirements.txt

# 2. The source, installed as a regular (non-editable) package; --no-deps: nothing above moves.
#    The flows' source stays here too: deployments registered with --source /opt/surgflow run
#    their entrypoints from this directory on the Prefect worker.
COPY README.md ./
COPY surgflow ./surgflow
COPY flows ./flows
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info \
    && python -c "import surgflow.cli, surgflow.recipes"

USER surgflow
ENV SURGFLOW_HOME=/srv/surgflow
ENTRYPOINT []
CMD ["surgflow", "--help"]
