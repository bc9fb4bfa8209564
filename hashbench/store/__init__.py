"""Everything hashbench keeps on disk, kept so that nothing finished is lost: atomic writes, locks, content digests,
safe names and the hashbench home, and the results store (one directory per cell, verified on reading), which knows
no method and no metric."""
