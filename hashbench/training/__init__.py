"""Training and encoding: the engine's loop, the input pipeline, augmentation, execution options and several processes."""
