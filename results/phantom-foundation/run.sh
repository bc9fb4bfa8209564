#!/usr/bin/env bash
# The foundation suite on the phantom (synthetic): two backbones in one command, each frozen at its seeded random init
# (no pretrained weights can be fetched where these tables were made), its features cached once per backbone and seed,
# then ranked unhashed (float-cosine), hashed without training (PCA-RR, ITQ, LSH) and hashed by heads trained alone
# (HashNet, CSQ). Heads learn slowly on frozen features: a larger rate and more epochs than the quick profile's.
set -euo pipefail
cd "$(dirname "$0")"
hb=${HASHBENCH:-hashbench}
$hb run --suite foundation --backbone test_efficientnet,test_vit --seeds 0 1 2 --set lr=0.01 --epochs 100 --out runs
$hb leaderboard --out runs --suite foundation --format md --output foundation.md --no-figures
$hb leaderboard --out runs --metrics map@10,map@all --format md --output by-bits.md
$hb leaderboard --out runs --metrics map@10 --ranking cosine --format md --output before-binarising.md --no-figures
