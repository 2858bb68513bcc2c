# x86_64 toolchain: Debian's native gcc.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev binutils \
    && rm -rf /var/lib/apt/lists/*
