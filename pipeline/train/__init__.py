"""Stage `train` (python -m pipeline.train): see pipeline/train/stage.py."""
