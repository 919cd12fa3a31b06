"""Audio and what is known about it: data sources (one registered loader per format, in sources/), audio
decoding, the split stage and k-fold assignment, and corruptions for robustness and noisy training.
"""
