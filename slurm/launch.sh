#!/usr/bin/env bash
# Run by the sbatch scripts inside their allocation: `srun sasa fit` with one task per device.
#
#   launch.sh <config.yaml> [more `sasa fit` arguments]
#
# Devices per node and node count come from the allocation (SLURM_NTASKS_PER_NODE,
# SLURM_JOB_NUM_NODES), GPUs if the job has any, else CPU processes (gloo). `--ckpt_path last`
# makes every start a resume when the run folder holds a checkpoint: after a requeue
# (preemption), a failure, or a plain resubmission. Arguments after the config override all of
# this, as later arguments do in `sasa fit`.
set -euo pipefail

die() { echo "sasa slurm: $*" >&2; exit 2; }

[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a SLURM job; submit the script with sbatch (see slurm/README.md)"
[ $# -ge 1 ] || die "no config given; usage: sbatch [options] $(basename "${SASA_SBATCH:-train.sbatch}") <config.yaml> [sasa fit arguments]"
config=$1
shift
[ -f "$config" ] || die "config $config not found (paths are relative to the folder sbatch ran in, $PWD)"

sasa=$(command -v sasa || true)
[ -n "$sasa" ] || sasa="$SLURM_SUBMIT_DIR/.venv/bin/sasa"
[ -x "$sasa" ] || die "the sasa command is not on PATH nor in $SLURM_SUBMIT_DIR/.venv (run make install)"

if [ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ]; then
    accelerator=gpu
    [ "$SLURM_GPUS_ON_NODE" -eq "$SLURM_NTASKS_PER_NODE" ] || die "one task per GPU: the job has" \
        "$SLURM_GPUS_ON_NODE GPUs per node but --ntasks-per-node=$SLURM_NTASKS_PER_NODE; give both the same number"
else
    accelerator=cpu
fi
# One process per device: the math libraries get the task's CPUs, not the whole node's.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"

echo "sasa slurm: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
    "${SLURM_JOB_NUM_NODES} node(s) x ${SLURM_NTASKS_PER_NODE} ${accelerator} process(es), config ${config}"
# --kill-on-bad-exit: when one rank dies, srun ends the others instead of leaving them waiting
# forever in a collective.
exec srun --kill-on-bad-exit=1 "$sasa" fit --config "$config" \
    --trainer.accelerator "$accelerator" \
    --trainer.devices "${SLURM_NTASKS_PER_NODE}" \
    --trainer.num_nodes "${SLURM_JOB_NUM_NODES}" \
    --ckpt_path last "$@"
