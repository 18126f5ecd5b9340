"""Pixels in: safe decoding, fast JPEG, SSRF-safe URL fetching, and the checkpoint's preprocessing.

This layer imports nothing else from vitkit but ``errors``.
"""
