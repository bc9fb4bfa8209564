"""Training and encoding: the engine's loop, the input pipeline, augmentation, execution options, the device at work."""
