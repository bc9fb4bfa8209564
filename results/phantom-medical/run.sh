#!/usr/bin/env bash
# Medical retrieval protocols on the phantom (synthetic): the paper's slice-level split judged as it is and with each
# query's own patient left out, patients retrieved instead of slices, graded relevance, one table per modality, and
# the mAP conventions of other codebases. Every table after the first run is recomputed from the stored codes.
set -euo pipefail
cd "$(dirname "$0")"
hb=${HASHBENCH:-hashbench}
$hb run --methods dafh,hashnet,lsh,itq --bits 32 --seeds 0 1 2 --split slice --out runs
metrics="map@1,map@10,p@5,hit@5,acc@5"
$hb leaderboard --out runs --metrics "$metrics" --format md --output slice.md
$hb leaderboard --out runs --metrics "$metrics" --exclude same-patient --format md --output without-own-patient.md
$hb leaderboard --out runs --metrics map@10,acc@5 --level patient --exclude same-patient --format md \
    --output patient-level.md --no-figures
$hb leaderboard --out runs --metrics ndcg@10,acg@10,wmap@10 --relevance label,modality --exclude same-patient \
    --format md --output graded.md --no-figures
$hb leaderboard --out runs --metrics map@10 --exclude same-patient --by modality --format md --output by-modality.md \
    --no-figures
for norm in found min all; do
    $hb leaderboard --out runs --metrics map@10 --exclude same-patient --ap-norm "$norm" --format md \
        --output "ap-norm-$norm.md" --no-figures
done
$hb leaderboard --out runs --metrics map@10 --exclude same-patient --empty-queries drop --format md \
    --output empty-queries-drop.md --no-figures
COLUMNS=130 $hb compare dafh itq --out runs --metrics map@10,acc@5 > compare-dafh-itq.txt
COLUMNS=130 $hb compare dafh itq --out runs --metrics map@10,acc@5 --exclude same-patient \
    > compare-dafh-itq-without-own-patient.txt
