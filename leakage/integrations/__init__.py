"""Bridges to FL frameworks, each behind an optional extra (``pip install leakage[flower]``).

The core package never imports this subpackage's modules: import them yourself.
"""
