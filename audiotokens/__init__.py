"""audiotokens: classify audio as sequences of k-means tokens of mel-spectrogram frames.

The public names are few and stable: `load` (a model bundle for scoring audio; it returns an
audiotokens.api.Model), `AudioTokenizer` (the learned vocabulary as a component), `run` (the pipeline, as
`audiotokens run`) and `UserError`.
"""

from .api import load, run
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["AudioTokenizer", "UserError", "__version__", "load", "run"]


def __getattr__(name: str):
    """`AudioTokenizer` (model/audio_tokenizer.py) is imported on first use: `import audiotokens` and the
    CLI's start-up stay free of torch, faiss and librosa until something needs them."""
    if name == "AudioTokenizer":
        from .model.audio_tokenizer import AudioTokenizer

        return AudioTokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
