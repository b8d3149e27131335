"""The exception tree of Nebula. Every error Nebula raises on purpose derives from NebulaError.

    NebulaError
    ├── ConfigError               bad settings, flags or configuration file
    ├── DatabaseUnavailableError  a database that cannot be reached or opened
    ├── ProtocolError             an Omaha request that cannot be understood (HTTP 400)
    │   └── RequestTooLargeError  a body over the size limit (HTTP 413)
    ├── SlowRequestError          a request body that did not arrive in time (HTTP 408)
    ├── PayloadError              a payload file that is refused (HTTP 422)
    │   ├── NotCrAUError          not a CrAU file at all
    │   ├── TruncatedPayloadError shorter than its header and manifest say
    │   ├── MalformedPayloadError a manifest or signature blob that does not decode
    │   ├── UnsignedPayloadError  no version-2 signature in it
    │   └── SignatureError        signed, but by no trusted key (or the signature is corrupt)
    ├── NotFoundError             an admin API object that does not exist (HTTP 404)
    ├── ConflictError             an admin change that clashes with existing data (HTTP 409)
    ├── InvalidInputError         an admin request with bad fields (HTTP 400)
    └── AuthError                 a missing or unknown token (HTTP 401)
        └── ForbiddenError        a token whose role may not do this (HTTP 403)

Exceptions reach HTTP only through the error middleware in nebula.web, which maps each class to
its status with `http_status`. This module imports nothing of Nebula.
"""

from __future__ import annotations


class NebulaError(Exception):
    """Base of every error Nebula raises on purpose."""

    http_status = 500


class ConfigError(NebulaError):
    """Settings, flags or a configuration file that cannot be used."""


class DatabaseUnavailableError(NebulaError):
    """A database that cannot be reached or opened (down, missing, refused credentials)."""

    http_status = 503


class ProtocolError(NebulaError):
    """An Omaha request that cannot be understood."""

    http_status = 400


class RequestTooLargeError(ProtocolError):
    """A request body over the configured size limit."""

    http_status = 413


class SlowRequestError(NebulaError):
    """A request body that stalled or trickled past the body timeout."""

    http_status = 408


class PayloadError(NebulaError):
    """A payload file that Nebula refuses to store or serve."""

    http_status = 422


class NotCrAUError(PayloadError):
    """The file does not start with the CrAU magic and version 1."""


class TruncatedPayloadError(PayloadError):
    """The file ends before its header, manifest or signature blob does."""


class MalformedPayloadError(PayloadError):
    """The manifest or the signature blob does not decode."""


class UnsignedPayloadError(PayloadError):
    """The file carries no version-2 signature."""


class SignatureError(PayloadError):
    """The version-2 signature does not verify against any trusted key."""


class NotFoundError(NebulaError):
    """An object named in an admin request does not exist."""

    http_status = 404


class ConflictError(NebulaError):
    """An admin change that clashes with data already stored."""

    http_status = 409


class InvalidInputError(NebulaError):
    """An admin request whose fields are missing or wrong."""

    http_status = 400


class AuthError(NebulaError):
    """A request to the admin API without a valid token."""

    http_status = 401


class ForbiddenError(AuthError):
    """A valid token whose role does not allow this request."""

    http_status = 403
