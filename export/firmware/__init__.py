"""Firmware artifacts: the C99 log-mel front-end, its generated params header, and build helpers."""
