#!/usr/bin/env bash
# Run a reproduce_syncmnist.py study with every (variant, seed) as its own process, all at once.
#
# The MultiSyncMNIST models are small: one training process leaves most of a GPU idle, so on
# one GPU the runs of a study go faster side by side than one after another. Every run gets
# the same arguments (budget, data, optimiser, schedule); only --variants/--seeds differ.
# --geometry (authors | demo) and --protocol (onecycle | paper) pass through like any other
# argument: the shards are generated once in that geometry, and a --protocol paper study
# may share OUT (and its data) with a onecycle one, its runs in <variant>-paper/.
#
#   bash study/parallel_study.sh OUT VARIANTS SEEDS [reproduce_syncmnist.py args...]
#   bash study/parallel_study.sh /data/study nograph,fixed,dyreg 0,1 \
#       --budget 400000 --train-videos 100000 --eval-every 1 --workers 2 --resume
#
# Logs go to OUT/logs/<run>-seed<k>.log (<run> as the run folder: <variant>[-paper][-<tag>]);
# the exit status is non-zero if any run failed.
# THREADS (default 2) sets the CPU threads of each process, PYTHON the interpreter.
set -uo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 OUT VARIANTS SEEDS [reproduce_syncmnist.py args...]" >&2
    exit 2
fi
out=$1 variants=$2 seeds=$3
shift 3
for a in "$@"; do
    case $a in
        --variants*|--seeds*)
            echo "$0: give variants and seeds as the 2nd and 3rd arguments, not $a" >&2
            exit 2 ;;
    esac
done
# the run folders' names (reproduce_syncmnist.py run_name): <variant>[-paper][-<tag>]
protocol=onecycle tag=
prev=
for a in "$@"; do
    case $prev in
        --protocol) protocol=$a ;;
        --tag) tag=$a ;;
    esac
    case $a in
        --protocol=*) protocol=${a#--protocol=} ;;
        --tag=*) tag=${a#--tag=} ;;
    esac
    prev=$a
done
suffix=
[ "$protocol" != onecycle ] && suffix="-$protocol"
[ -n "$tag" ] && suffix="$suffix-$tag"
# each (variant, seed) once: two processes must never train the same run folder
variants=$(tr ',' '\n' <<< "$variants" | awk 'NF && !seen[$0]++' | paste -sd, -)
seeds=$(tr ',' '\n' <<< "$seeds" | awk 'NF && !seen[$0]++' | paste -sd, -)
here=$(cd "$(dirname "$0")" && pwd)
script="$here/reproduce_syncmnist.py"
threads=${THREADS:-2}
py=${PYTHON:-python}
mkdir -p "$out/logs"
# the shards first, once, so that the runs do not race to write them; with --in-memory (the
# default) also the decoded training split, DIR/data/train-inmemory.pt, which every run then
# memory-maps instead of decoding the shards itself (one shared copy in the page cache)
"$py" "$script" --out "$out" --data-only --data-workers "${DATA_WORKERS:-4}" "$@" \
    > "$out/logs/data.log" 2>&1 || { cat "$out/logs/data.log" >&2; exit 1; }
pids=()
names=()
# stopping the launcher stops its runs (they resume exactly with --resume)
trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 130' INT TERM
for s in ${seeds//,/ }; do
    for v in ${variants//,/ }; do
        OMP_NUM_THREADS=$threads PYTHONUNBUFFERED=1 "$py" "$script" --out "$out" \
            --variants "$v" --seeds "$s" --threads "$threads" "$@" \
            > "$out/logs/$v$suffix-seed$s.log" 2>&1 &
        pids+=($!)
        names+=("$v seed $s")
    done
done
status=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "failed: ${names[$i]} (see $out/logs)" >&2
        status=1
    fi
done
"$py" "$script" --out "$out" --table-only "$@" || status=1
exit $status
