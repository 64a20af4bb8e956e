# The image of onfinish's workers (processors, sinks) in docker-compose.yml.

# The processors' native core as a wheel (decision 0011): Debian's cargo, maturin from PyPI.
FROM python:3.11-slim AS native
RUN apt-get update && apt-get install -y --no-install-recommends cargo && rm -rf /var/lib/apt/lists/*
COPY processors/native /native
RUN pip install --no-cache-dir "maturin>=1.16,<2" && maturin build --release --out /wheels -m /native/Cargo.toml

FROM python:3.11-slim
WORKDIR /app
COPY --from=native /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl
COPY pyproject.toml README.md constraints.txt ./
COPY onfinish ./onfinish
COPY producers ./producers
COPY processors ./processors
COPY schemas ./schemas
COPY sinks ./sinks
RUN pip install --no-cache-dir -c constraints.txt ".[all]"
USER nobody
ENTRYPOINT []
