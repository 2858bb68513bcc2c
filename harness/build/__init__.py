"""Binaries for a target: the minrt runner, firmware images, their sizes, the toolchains."""
