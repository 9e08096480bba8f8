"""Keep credentials out of what tileseg prints and writes.

Object storage is reached with secrets from the environment (``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``GS_SECRET_ACCESS_KEY``, ``AZURE_STORAGE_ACCESS_KEY`` ...) or in
URLs (``https://user:password@host/...``, pre-signed URLs with ``X-Amz-Signature=``).
:func:`redact` removes all of them from a text; :func:`redact_logs` applies it to every
log record, :mod:`pipeline.cli` to the one-line errors and :mod:`pipeline.report` to
``report.json``.

Only the standard library: the command line installs the log filter before it imports
the pipeline.
"""

from __future__ import annotations

import logging
import os
import re

__all__ = ["MASK", "redact", "redact_logs", "secret_values"]

#: what a secret is replaced by
MASK = "***"

#: environment variables whose values are secrets (names, upper case)
#: (not GOOGLE_APPLICATION_CREDENTIALS: a path, not a secret)
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|_SAS$")

#: a URL's password (``scheme://user:password@host``)
_USERINFO = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/@\s:]*):([^/@\s]+)@")

#: the query parameters of signed URLs (S3, GCS, Azure SAS) and bearer tokens
_SIGNED = re.compile(
    r"([?&](?:X-Amz-Signature|X-Amz-Security-Token|X-Amz-Credential|X-Goog-Signature|"
    r"X-Goog-Credential|Signature|AWSAccessKeyId|sig|token|access_token|api_key|key)=)"
    r"[^&\s\"'#]+", re.IGNORECASE)

#: values shorter than this are not looked for (they would mask ordinary words)
_MIN_LEN = 6


def secret_values(environ: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    """Return the values of the secret environment variables, longest first."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items()
             if _SECRET_NAME.search(k.upper()) and not k.upper().endswith("_KEY_ID")
             and len(v) >= _MIN_LEN}
    return sorted(found, key=len, reverse=True)


def redact(text: str) -> str:
    """Return ``text`` without URL passwords, URL signatures and secret variables' values.

    Examples
    --------
    >>> redact("https://me:hunter22@example.com/a.tif?X-Amz-Signature=abc&x=1")
    'https://me:***@example.com/a.tif?X-Amz-Signature=***&x=1'
    """
    text = _USERINFO.sub(rf"\1:{MASK}@", text)
    text = _SIGNED.sub(rf"\1{MASK}", text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


class _RedactingFilter(logging.Filter):
    """Rewrite a record's message through :func:`redact` (its arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactingFilter()


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Redact every record that the handlers of ``logger`` (default: root) emit.

    A handler's filter sees the records of every logger that propagates to it
    (rasterio's and botocore's debug messages included), unlike a logger's filter.
    Idempotent.
    """
    for handler in (logger or logging.getLogger()).handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
