"""Tracking: the stages write a journal (journal.py); a flusher sends it to MLflow
(flusher.py), building MLflow models from checkpoints (models.py).

    python -m pipeline.tracking flush    send what is pending now, and wait
"""
from pipeline.tracking.journal import Journal, tracking_uri

__all__ = ["Journal", "tracking_uri"]
