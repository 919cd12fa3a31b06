"""audiotokens: classify audio as sequences of k-means tokens of mel-spectrogram frames."""

__version__ = "0.1.0"
