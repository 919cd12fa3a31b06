"""Frames of every clip: mel spectrograms, hidden states of a local speech model, or waveform rows (the
spectrogram stage). A new frame kind goes here.
"""
