# The image of onfinish's workers (processors, sinks) in docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY onfinish ./onfinish
COPY producers ./producers
COPY processors ./processors
COPY schemas ./schemas
COPY sinks ./sinks
RUN pip install --no-cache-dir -c constraints.txt ".[all]"
USER nobody
ENTRYPOINT []
