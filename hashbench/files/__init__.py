"""File handling every part shares: atomic writes, locks, content digests, safe names and the hashbench home."""
