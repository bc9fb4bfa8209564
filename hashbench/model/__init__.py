"""The method contract: the Method base class, shared network parts, typed options, backbones and weights, and the registry of methods."""
