"""Lightning callbacks, one per logging requirement, each usable in any Lightning project.

They write into the run's metric log through MetricsJsonlLogger (see metrics_logger.py).
"""
