#!/usr/bin/env bash
# The paper's three suites and the split-leak comparison on the phantom collection at a CPU
# budget (2 cores): the quick profile with 15 epochs, one seed. Table 4's ResNet-50 and ViT are
# replaced by timm's tiny test models (each caption names the backbone every row ran). Synthetic
# and small: these numbers show the pipeline end to end, they say nothing about TCIA.
set -euo pipefail
cd "$(dirname "$0")"
hb=${HASHBENCH:-hashbench}
common=(--dataset phantom --profile quick --epochs 15 --out runs)
$hb run --suite paper-table3 "${common[@]}"
$hb run --suite paper-table4 "${common[@]}" --set dafh-resnet50.backbone=test_resnet --set dafh-resnet50-at.backbone=test_resnet \
    --set dafh-vit-resnet50.backbone=test_resnet --set dafh-vit-resnet50.vit=test_vit
$hb run --suite paper-table5 "${common[@]}"
$hb run --methods dafh,hashnet --bits 32 --split slice "${common[@]}"
for suite in paper-table3 paper-table4 paper-table5; do
    $hb leaderboard --out runs --suite "$suite" --format md --output "$suite.md"
done
$hb leaderboard --out runs --metrics map@1 map@1-tie map@10 map@all map@tie map@tie-best map@tie-worst p@r2 --format md --output all-cells.md
$hb confusion "$(dirname "$(grep -l '"split": "patient"' runs/phantom/dafh/32bits/seed0-*/config.json)")" --output-dir .
COLUMNS=120 $hb ties --out runs > ties.txt
