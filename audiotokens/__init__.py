"""audiotokens: classify audio as sequences of k-means tokens of mel-spectrogram frames.

The public names are few and stable: `load` (a model bundle for scoring audio; it returns an
audiotokens.api.Model), `AudioTokenizer` (the learned vocabulary as a component), `run` (the pipeline, as
`audiotokens run`) and `UserError`.
"""

from .api import AudioTokenizer, load, run
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["AudioTokenizer", "UserError", "__version__", "load", "run"]
