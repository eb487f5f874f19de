"""Typed exceptions, one per veto error code and denial reason.

Every error the registry or a gateway answers with carries a code
(``{"error": code, "message": text}``); ``veto`` raises the subclass of
:class:`VetoError` named after it, in CamelCase: ``unknown_kind`` raises
:class:`UnknownKind`, ``pop_required`` :class:`PopRequired`. Catch
:class:`VetoError` for all of them, or :class:`Denied` for the denial
reasons (``revoked``, ``expired``, ``stale``, ...).
"""

from __future__ import annotations

from typing import Dict, Optional, Type

from . import _veto


class VetoError(Exception):
    """An error answered by veto: ``code`` (the wire code), ``message``
    (what was wrong and, where it helps, what to do next) and ``status``
    (the HTTP status, when it came over HTTP)."""

    code: str = "error"

    def __init__(self, message: str, code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Denied(VetoError):
    """A request (or a chain) was denied; ``code`` is the denial reason."""


def _camel(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_"))


_error_codes, _deny_reasons = _veto.error_codes()
BY_CODE: Dict[str, Type[VetoError]] = {}
for _code in _error_codes:
    BY_CODE[_code] = type(_camel(_code), (VetoError,), {"code": _code, "__doc__": f"veto error `{_code}`."})
for _code in _deny_reasons:
    # A denial reason that is also an error code (`pop_required`,
    # `pop_invalid`) is one class, a Denied.
    base = BY_CODE.get(_code)
    bases = (Denied,) if base is None else (Denied, base)
    BY_CODE[_code] = type(_camel(_code), bases, {"code": _code, "__doc__": f"denied: `{_code}`."})
globals().update({cls.__name__: cls for cls in BY_CODE.values()})


def error_for(code: str, message: str, status: Optional[int] = None) -> VetoError:
    """The typed exception for ``code`` (a plain :class:`VetoError` for a code
    this version does not know)."""
    cls = BY_CODE.get(code, VetoError)
    return cls(message, code=code, status=status)


__all__ = ["VetoError", "Denied", "error_for", "BY_CODE"] + sorted(c.__name__ for c in BY_CODE.values())
