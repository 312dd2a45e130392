"""The augmentation regimes, one module each: `DRAWS` (uniforms per image) and
`apply(x, u, c)` (pipeline.arm.augment). Their names: pipeline.core.config.AUGMENTATIONS."""
