# syntax=docker/dockerfile:1
#
# Inference gateway image: serves an ONNX model repository (Triton layout) over the Open
# Inference Protocol / KServe V2, HTTP on 8000 and gRPC on 8001.
#
#   docker build -t inference-gateway .
#   docker run --rm -p 8000:8000 -p 8001:8001 inference-gateway
#
# The image ships the demo repository (digits, mlp; built by models/build_repository.py
# --skip-wide) at /models. Any other repository can be mounted over it:
#
#   docker run --rm -p 8000:8000 -p 8001:8001 -v /path/to/repository:/models:ro inference-gateway
#
# Every gateway option is read from a GATEWAY_* environment variable, so configure the
# container with `-e GATEWAY_...=...` rather than flags (flags after the image name replace
# CMD and are passed to `gateway`, e.g. `... inference-gateway serve --help`).
#
# Stages:
#   builder     /opt/venv with the gateway and its runtime dependencies only.
#   repository  builder + the "models" extra (onnx, scikit-learn, skl2onnx); builds /models.
#   runtime     /opt/venv from builder and /models from repository. The models extra is
#               needed only to build the demo repository, so it is left out of the runtime
#               image (it would add scikit-learn and scipy, a few hundred MB).

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/opt/venv/bin:$PATH"

RUN python -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
RUN pip install --no-cache-dir .


FROM builder AS repository

COPY models/ models/
# "./[models]" is ".[models]" (this project plus its models extra) spelt so that hadolint's
# DL3013 sees a local path rather than an unpinned package. The build is deterministic.
RUN pip install --no-cache-dir "./[models]" \
    && python models/build_repository.py --output /models --skip-wide


FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="inference-gateway" \
      org.opencontainers.image.description="Async gRPC + HTTP gateway serving ONNX models over the Open Inference Protocol (KServe V2)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway

COPY --from=builder /opt/venv /opt/venv
COPY --from=repository /models /models

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_MODEL_REPOSITORY=/models \
    GATEWAY_HTTP_PORT=8000 \
    GATEWAY_GRPC_PORT=8001

# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000 8001

# The slim image has no curl: probe readiness with the standard library. Follows
# GATEWAY_HTTP_PORT if it is overridden at run time; any non-2xx answer or error exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_HTTP_PORT', '8000') + '/v2/health/ready', timeout=4)"]

# Exec form: the gateway is PID 1 and receives SIGTERM from `docker stop` directly.
ENTRYPOINT ["gateway"]
CMD ["serve"]
