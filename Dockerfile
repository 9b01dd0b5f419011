# callbridge server image: `docker build -t callbridge .` (see docs/deploy.md).
# The first stage builds the wheel, the second installs it alone: no compilers, no sources.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# Optional extras, e.g. `--build-arg EXTRAS=sip` for the SIP driver (pjsua2).
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CALLBRIDGE_HOST=0.0.0.0 \
    CALLBRIDGE_PORT=8080 \
    CALLBRIDGE_DATA_DIR=/data
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin callbridge \
    && mkdir -p /data \
    && chown callbridge:callbridge /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/callbridge-*.whl)${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /wheels
USER callbridge
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['CALLBRIDGE_PORT'] + '/healthz', timeout=2)"]
ENTRYPOINT ["callbridge"]
CMD ["serve"]
