"""The one error the model store raises: what is wrong, with which file, and what to do."""


class ModelStoreError(ValueError):
    """A release cannot be read, verified or decrypted; the message names the file and the fix.

    `path` is the model file at fault (relative to the release) when one is.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path
