"""Where protocol, policy and storage meet: the answer to an Omaha request.

`omaha` answers a request: steady-state check-ins from memory (nebula.checkin), the rest in one
transaction per request (`transition`). Nothing here imports nebula.web.
"""

from nebula.service.omaha import OmahaService, normalize_track

__all__ = ["OmahaService", "normalize_track"]
