# Image of every pvc process (worker, API, Flower, CLI) for docker-compose.test.yml.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc pkg-config libvirt-dev libvirt0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir /src
COPY docker/*.xml /etc/pvc/nodes/
