"""Training: the fine-tuning and LM loops, their plans, starts, checkpoints and interruption."""
