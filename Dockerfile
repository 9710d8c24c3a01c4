# Depot: a V2 / Open Inference Protocol model server. This image serves scikit-learn
# and XGBoost models and runtimes of your own; add requirements-frameworks.txt
# to it for LightGBM, CatBoost, ONNX and MLflow.
# Models are not part of the image: mount a model repository at /mnt/models.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies before the code, so a code change reuses this (slow) layer.
# The wheels bundle their native libraries (libgomp included): no apt needed.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY gunicorn.conf.py ./
COPY app/ app/
COPY runtimes/ runtimes/

# The code stays root-owned, so the server cannot rewrite itself. A numeric
# USER lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --gid 10001 depot \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin depot
USER 10001:10001

# /mnt/models is where KServe's storage initializer puts the model files.
# The state folder (registry database, snapshots, metrics) must be writable
# and is kept out of the models folder, which may be mounted read-only.
# gunicorn.conf.py binds 127.0.0.1 for local use; a container must listen
# on every interface.
ENV DEPOT_MODELS=/mnt/models \
    DEPOT_STATE_DIR=/tmp/depot-state \
    GUNICORN_CMD_ARGS="--bind 0.0.0.0:8080 --workers 2"

EXPOSE 8080

# Ready (not just live): it answers 503 until start-up loading is done, and
# the slim image has no curl. urlopen raises on any non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py"]
