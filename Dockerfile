# Image of the hub and of the Spark workers: Python 3.11, Java 17 and
# mlhub-mcp with every backend installed.
#
# The Spark workers run from this image, not from apache/spark, because PySpark
# needs the same Python minor version on the driver and on every executor, and
# the executors need the model libraries. The apache/spark 4.1 Python images
# are built on Ubuntu 22.04, whose Python is 3.10.
FROM python:3.11-slim-bookworm

# Must equal the version of the apache/spark image that runs the master.
ARG SPARK_VERSION=4.1.1

# The OpenJDK package's post-install step needs the man directory, which
# slim images leave out.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

ENV JAVA_HOME=/opt/java \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MLHUB_HOME=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[mongodb,s3,spark,groq]" "pyspark==${SPARK_VERSION}"

RUN useradd --create-home --uid 1000 mlhub \
    && mkdir -p /data \
    && chown mlhub /data
USER mlhub
VOLUME ["/data"]

EXPOSE 8000
ENTRYPOINT ["tini", "--"]
CMD ["mlhub", "hub", "--transport", "http", "--host", "0.0.0.0", "--port", "8000"]
