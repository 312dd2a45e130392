"""The augmentation regimes, one module each: `DRAWS` (uniforms per image) and
`apply(x, u, c)` (pipeline.arm.augment). A new regime is a new file here, and nothing else."""
