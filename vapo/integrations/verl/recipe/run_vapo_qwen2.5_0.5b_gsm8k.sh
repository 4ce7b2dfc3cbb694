#!/usr/bin/env bash
# VAPO on GSM8K with Qwen2.5-0.5B-Instruct, one node of 8 GPUs (adjust N_GPUS).
# Data: the preprocessing script of verl's repository (not part of its wheel) writes the parquet:
#   python examples/data_preprocess/gsm8k.py --local_save_dir ~/data/gsm8k
# For DAPO-Math-17k, point
# TRAIN_FILE at its parquet (verl-recipe's dapo/prepare_dapo_data.sh downloads it) and raise
# MAX_RESPONSE_LENGTH.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/train.parquet}
VAL_FILE=${VAL_FILE:-$DATA_DIR/test.parquet}
N_GPUS=${N_GPUS:-8}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-1024}

python -m vapo.integrations.verl.recipe.main_vapo \
    data.train_files="$TRAIN_FILE" \
    data.val_files="$VAL_FILE" \
    data.train_batch_size=256 \
    data.max_prompt_length=512 \
    data.max_response_length="$MAX_RESPONSE_LENGTH" \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.n=8 \
    critic.model.path="$MODEL" \
    critic.ppo_micro_batch_size_per_gpu=8 \
    trainer.critic_warmup=20 \
    trainer.n_gpus_per_node="$N_GPUS" \
    trainer.nnodes=1 \
    trainer.total_epochs=3 \
    trainer.logger='["console"]' \
    "$@"
