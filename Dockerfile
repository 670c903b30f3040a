FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[s3,mistral]' && useradd --create-home modfactory && mkdir /data && chown modfactory /data
USER modfactory
ENV MODFACTORY_DATA_DIR=/data
VOLUME ["/data"]
CMD ["modfactory", "worker"]
