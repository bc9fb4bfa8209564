#!/usr/bin/env bash
# The README's main command, then two more seeds at 32 bits, and what the statistics say.
# Synthetic phantom, quick profile (30 epochs), 2 CPU cores: about 12 minutes.
set -euo pipefail
cd "$(dirname "$0")"
hb=${HASHBENCH:-hashbench}
$hb run --methods dafh,hashnet --bits 16 32 48 --out runs
$hb run --methods dafh,hashnet --bits 32 --seeds 1 2 --out runs
$hb leaderboard --out runs --metrics map@1 map@10 map@all map@tie map@tie-best map@tie-worst --format md --output leaderboard.md
COLUMNS=110 $hb compare dafh hashnet --bits 32 --out runs --metrics map@1 map@10 map@all map@tie > compare-32bits.txt
COLUMNS=110 $hb compare dafh hashnet --bits 16 --out runs --metrics map@10 map@tie > compare-16bits.txt
