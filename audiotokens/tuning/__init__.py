"""Search over configurations (`audiotokens tune`): the search space, the Optuna study, its outputs."""
from __future__ import annotations

from ..errors import UserError

DEFAULT_STUDY = "default"  # its files in <workdir>/tune/default/


def require_optuna() -> None:
    """One line, not an ImportError, when the optional extra is missing."""
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        raise UserError(f"audiotokens tune needs Optuna ({exc.name} is missing); install it with "
                        "`pip install 'audiotokens[tune]'`") from None
