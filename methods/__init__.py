"""Built-in hashing methods (installed as ``hashbench.methods``): one file each, registered on import."""
