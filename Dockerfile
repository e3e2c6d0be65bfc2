# One image for every service of docker-compose.yml that runs Python: the workers (`hpo run`),
# the MLflow tracking server and optuna-dashboard. The server then runs the very MLflow its
# clients run, and psycopg (a dependency of this project) is there for its PostgreSQL store.
FROM python:3.11-slim

# One BLAS thread per process, a project rule: a worker is one process, and more workers (not
# more threads) use more cores. `hpo` sets it too, but only before NumPy loads.
ENV OPENBLAS_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Not root. The artifact directory exists in the image, owned by that user, so that the named
# volume mounted on it starts with the same owner.
RUN useradd --create-home --uid 1000 hpo \
    && mkdir -p /app /mlflow/artifacts \
    && chown hpo:hpo /app /mlflow/artifacts

WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY hpo ./hpo
RUN pip install '.[dashboard]'
COPY studies ./studies

USER hpo
CMD ["hpo", "--help"]
