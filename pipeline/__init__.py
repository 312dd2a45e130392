"""Stages of the CIFAR-10 ablation pipeline: one module per DVC stage."""
