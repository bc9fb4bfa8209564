"""Built-in hashing methods (mapped to ``hashbench.methods``); the method interface lands with issue 3."""
