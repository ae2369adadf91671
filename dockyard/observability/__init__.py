"""Operability: Prometheus metrics (``metrics.py``) and JSON logs (``logs.py``)."""
