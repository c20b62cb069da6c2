#!/usr/bin/env bash
# Regenerate the committed results on one machine: the BreastMNIST checkpoints, then Table 3 and
# Fig. 6 for every defense and data set. Each (defense, data set) is an independent job and JOBS
# of them run side by side: the mini model leaves a GPU (or a many-core CPU) mostly idle, so
# parallel jobs, not bigger batches, are what fill it. Rerunning skips what is already stored
# (runs resume from their verified units; a checkpoint that exists is kept).
#
#   DEVICE=cuda JOBS=16 bash benchmarks/reproduce_results.sh     # a GPU host
#   DEVICE=cpu  JOBS=2  bash benchmarks/reproduce_results.sh     # a 2-core CPU: many core-hours
#
# Logs go to $LOGS (default results/logs); a job's exit status is its log's last line.
set -uo pipefail

DEVICE=${DEVICE:-auto}
JOBS=${JOBS:-4}
PYTHON=${PYTHON:-python3}
LOGS=${LOGS:-results/logs}
read -ra DEFENSES <<<"${DEFENSES:-none pgd-at pni dbn-clean dbn-adv l2p rpf cap ctrw rpan rpan-code}"
read -ra SUITES <<<"${SUITES:-table3 fig6_steps fig6_eps}"
read -ra DATASETS <<<"${DATASETS:-breastmnist pneumoniamnist}"
SUITE_DIR=${SUITE_DIR:-benchmarks}
ZOO=robustmed/zoo/mail-rn18-mini/breastmnist
mkdir -p "$LOGS"

run() {  # run NAME CMD...: log the command's output, then its exit status
    local name=$1; shift
    "$@" >"$LOGS/$name.log" 2>&1
    local status=$?
    echo "exit $status" >>"$LOGS/$name.log"
    return $status
}

breast_recipe() {  # the recipe, epochs and seed each shipped BreastMNIST checkpoint was trained with (README, Training)
    case $1 in
        none) echo "cpu 60 0" ;;                # one pass over the 546 images per epoch
        rpan-code) echo "cpu 120 0" ;;          # clean training, as released
        pni) echo "cpu-at-small 46 2" ;;        # 40 clean warm-up epochs; seed: best validation of seeds 0-2
        rpf) echo "cpu-at-small 46 1" ;;
        *) echo "cpu-at 20 0" ;;                # 12 random batches of 128 per adversarial epoch
    esac
}

train_breast() {  # once per defense (a lock makes later jobs wait for it); a checkpoint trained before is kept
    local defense=$1 init=() recipe epochs seed
    read -r recipe epochs seed <<<"$(breast_recipe "$defense")"
    mkdir -p "$ZOO"
    if [ "$defense" != none ]; then  # adversarial training starts from the clean model (546 images: from
        (train_breast none) || return 1  # scratch it sits at the majority class for many epochs)
        init=(--init "$ZOO/none.pt")
    fi
    exec 9>"$LOGS/.train-$defense.lock"
    flock 9
    [ -f "$ZOO/$defense.pt" ] && return 0
    run "train-breastmnist-$defense" env OMP_NUM_THREADS=1 "$PYTHON" -m robustmed train --defense "$defense" \
        --dataset breastmnist --recipe "$recipe" --epochs "$epochs" --seed "$seed" --device "$DEVICE" \
        --no-progress --out zoo "${init[@]}"
}

job() {  # job SUITE DEFENSE DATASET: one row of one suite, training its checkpoint first where needed
    local suite=$1 defense=$2 dataset=$3
    if [ "$dataset" = breastmnist ]; then (train_breast "$defense") || return 1; fi
    run "$suite-$dataset-$defense" env OMP_NUM_THREADS=1 "$PYTHON" -m robustmed bench \
        --suite "$SUITE_DIR/$suite.toml" --defense "$defense" --dataset "$dataset" --device "$DEVICE" --no-progress
}
export -f run breast_recipe train_breast job
export DEVICE PYTHON LOGS SUITE_DIR ZOO

# Suite-major order, so the tables finish before the figures; BreastMNIST rows first (training).
for suite in "${SUITES[@]}"; do
    for dataset in "${DATASETS[@]}"; do
        for defense in "${DEFENSES[@]}"; do echo "$suite $defense $dataset"; done
    done
done >"$LOGS/queue"
xargs -P "$JOBS" -L 1 bash -c 'job "$0" "$1" "$2"' <"$LOGS/queue"
failed=$(grep -L "^exit 0$" "$LOGS"/*.log)
[ -z "$failed" ] && echo "all jobs done" || { echo "failed: $failed"; exit 1; }
