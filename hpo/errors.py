"""Errors the command line reports in one line (exit status 2): mistakes the user can fix.

ValueError
└── ConfigError   a setting is wrong; names the file (when there is one), key and value
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting the user gave is invalid; `key` names it (e.g. "train.lr").

    `message` is the text without the source and key prefix, so that code which knows more
    (a study file's path, the section a key sits in) can re-raise it with both.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.message = message
        self.key = key
        self.source = source
        prefix = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)
