"""Training stage: DeepSpeed SFT / DPO / LM-loss cells (train.trainer.main) and their data
(train.data)."""
