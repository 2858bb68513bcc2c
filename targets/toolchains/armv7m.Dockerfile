# ARMv7-M / ARMv7E-M bare-metal toolchain (Cortex-M3/M4/M7): Debian's arm-none-eabi GCC with
# newlib (nano variant used: memcpy/memset, libm's expf) and libgcc for the EABI helpers.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi \
    && rm -rf /var/lib/apt/lists/*
