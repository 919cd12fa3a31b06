"""Fitting a model: the train stage, optimisation, loaders and datasets, augmentation, checkpoints, the
training-memory estimate, contrastive training, pre-training and fine-tuning from it.
"""
