"""Stage `evaluate` (python -m pipeline.evaluate): see pipeline/evaluate/stage.py."""
