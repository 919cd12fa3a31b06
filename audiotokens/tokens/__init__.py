"""Frames to token ids: k-means primitives, the quantizer kinds, the vocabulary artifact, and the cluster
and tokenize stages. A new quantizer kind goes in quantizers.py.
"""
