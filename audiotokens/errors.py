"""The one exception type whose message is shown to the user as is (no traceback)."""


class UserError(Exception):
    """Bad input, configuration or state that the user can fix; the message says what and how."""
