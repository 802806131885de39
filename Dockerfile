# The Airflow image of docker-compose.yaml: the official Airflow 3.3.2 image (Python 3.11, Debian bookworm)
# plus a Java runtime for Spark and the project's pinned Python packages (requirements.txt + constraints.txt).
# Follows the "extending the image" examples of the Airflow docs (docker-stack-docs/docker-examples/extending).
# Build: docker compose build   (or: docker build -t fruits-airflow:3.3.2 .)
FROM apache/airflow:3.3.2-python3.11

# Java for spark-submit (pyspark 3.5 supports Java 8/11/17). JAVA_HOME points at an architecture-independent link,
# so the same file builds on amd64 and arm64.
USER root
RUN apt-get update \
  && apt-get install -y --no-install-recommends \
         openjdk-17-jre-headless \
         procps \
  && ln -sfn "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/java-17 \
  && apt-get autoremove -yqq --purge \
  && apt-get clean \
  && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17

# The pinned requirements, as the airflow user. requirements.txt includes spark_jobs/requirements.txt;
# constraints.txt pins every transitive package, and apache-airflow stays at the image's version.
USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/fruits/
COPY --chown=airflow:0 spark_jobs/requirements.txt /opt/fruits/spark_jobs/requirements.txt
# `pip check` only warns: the official image ships more providers than this project pins, and their
# requirements are not ours to resolve; the packages the project uses are the ones in constraints.txt.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
      -r /opt/fruits/requirements.txt -c /opt/fruits/constraints.txt \
  && (pip check || echo "WARNING: pip check reported conflicts (see above)") \
  && java -version
