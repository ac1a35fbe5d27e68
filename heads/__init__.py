"""Heads stage: heads trained on cached features, their evaluation, and fine-tuning."""
