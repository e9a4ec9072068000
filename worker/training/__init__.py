"""LoRA fine-tuning: hyperparameter resolution, adapter setup, the training loop and its checkpoints."""
