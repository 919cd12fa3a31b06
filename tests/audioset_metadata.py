"""Where the real AudioSet metadata lives: $AUDIOSET_METADATA, else ../shared/audioset beside the checkout."""
import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("AUDIOSET_METADATA", ""),
    Path(__file__).resolve().parents[2] / "shared" / "audioset",
    "/work/shared/audioset",
]
AUDIOSET = next((Path(p) for p in _CANDIDATES if p and (Path(p) / "balanced_train_segments.csv").is_file()),
                Path(_CANDIDATES[1]))
