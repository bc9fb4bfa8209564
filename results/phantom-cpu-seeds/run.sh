#!/usr/bin/env bash
# The README's main command (seed 0), then the same with four more seeds: the numbers the README
# quotes, with what a fresh run should expect. Synthetic phantom, quick profile, 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"
hb=${HASHBENCH:-hashbench}
$hb run --methods dafh,hashnet --bits 16 32 48 --out runs
$hb run --methods dafh,hashnet --bits 16 32 48 --seeds 1 2 3 4 --out runs
$hb run --methods lsh,pcah,itq,sh --bits 16 32 48 --seeds 0 1 2 3 4 --out runs   # the training-free floor, same split
$hb run --methods mdsh,bihalf,cibhash --bits 16 32 48 --seeds 0 1 2 3 4 --out runs   # newer methods, same budget
$hb run --methods hyp2,dhd --bits 16 32 48 --seeds 0 1 2 --out runs
# ADSH's epoch is three passes over its sample: 10 of them see as many images as 30 epochs of the others
$hb run --methods adsh --bits 16 32 48 --seeds 0 1 2 --epochs 10 --out runs
$hb leaderboard --out runs --metrics map@1 map@1-tie map@10 map@all map@tie map@tie-best map@tie-worst --format md --output leaderboard.md
for bits in 16 32 48; do
    COLUMNS=130 $hb compare dafh hashnet --bits "$bits" --out runs --metrics map@1,map@10,map@all,map@tie > "compare-${bits}bits.txt"
done
