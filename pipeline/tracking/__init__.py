"""Tracking: MLflow as a publisher of what the stages wrote (publish.py), with
checkpoints as MLflow models (models.py).

    python -m pipeline.tracking publish    publish this workspace's study now
"""
from pipeline.tracking.publish import Publisher, publish, tracking_uri

__all__ = ["Publisher", "publish", "tracking_uri"]
