"""Stage `report` (python -m pipeline.report): see pipeline/report/stage.py."""
