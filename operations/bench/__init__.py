"""Benchmarks of the engine against its references, measured in one run (``manage.py bench engine``)."""
