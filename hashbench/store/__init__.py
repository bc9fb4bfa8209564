"""The results store: one directory per cell, written atomically and verified on reading; it knows no method and no metric."""
