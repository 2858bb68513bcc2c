# ARMv7 hard-float toolchain: Debian's arm-linux-gnueabihf cross compiler.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc-arm-linux-gnueabihf libc6-dev-armhf-cross binutils-arm-linux-gnueabihf \
    && rm -rf /var/lib/apt/lists/*
