"""Devices: the emulated board and its image, opening a target's transport."""
