"""The error tree: every leaf carries its HTTP status, Exotel code and table description."""

from __future__ import annotations


class CallbridgeError(Exception):
    """An error a client may see; rendered once, by the API layer, into the Exotel envelope."""

    http_status: int = 500
    code: int = 1100
    description: str = "Internal Server Error"
    retry_after_s: int | None = None
    """When set, answers carry `Retry-After` with it (both the v3 envelope and v1's)."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.description
        super().__init__(self.message)


class ValidationFailed(CallbridgeError):
    http_status, code, description = 400, 400, "Invalid request"


class AuthenticationFailed(CallbridgeError):
    http_status, code, description = 401, 1010, "Authentication failed"


class AccountNotFound(CallbridgeError):
    http_status, code, description = 404, 1017, "AccountSid not found"


class AccountSidMissing(CallbridgeError):
    http_status, code, description = 400, 1001, "account_sid is mandatory"


class InvalidRecordingChannels(CallbridgeError):
    http_status, code, description = (
        400,
        1002,
        "Valid values for RecordingChannels are single, dual",
    )


class UserNotFound(CallbridgeError):
    http_status, code, description = 404, 10731, "User not found"


class NoDeviceForUser(CallbridgeError):
    http_status, code, description = 404, 10806, "No device found for user"


class DeviceNotFound(CallbridgeError):
    http_status, code, description = 404, 10702, "User Device not found"


class DeviceUnreachable(CallbridgeError):
    http_status, code, description = 409, 1012, "User device is unavailable"


class DeviceTurnedOff(CallbridgeError):
    http_status, code, description = 404, 10703, "Device is currently unavailable (turned off)"


class DeviceUnverified(CallbridgeError):
    http_status, code, description = 409, 10705, "User device is unverified"


class DeviceBusy(CallbridgeError):
    http_status, code, description = 409, 10706, "User device is currently busy"


class VoipNotAllowed(CallbridgeError):
    http_status, code, description = 405, 10712, "VOIP calls are not allowed"


class VirtualNumberNotFound(CallbridgeError):
    http_status, code, description = 404, 10716, "Given virtual_number not found"


class CallNotFound(CallbridgeError):
    http_status, code, description = 404, 1021, "Call not found / unsupported in this API"


class LegsCallNotFound(CallbridgeError):
    http_status, code, description = 404, 10744, "Call not found"


class NotFound(CallbridgeError):
    http_status, code, description = 404, 404, "Resource not found"


class MethodNotAllowed(CallbridgeError):
    http_status, code, description = 405, 405, "Method not allowed"


class Conflict(CallbridgeError):
    http_status, code, description = 409, 409, "Conflict"


class IdempotencyInFlight(CallbridgeError):
    http_status, code, description = (
        409,
        409,
        "A request with this Idempotency-Key is still being processed",
    )


class IdempotencyMismatch(CallbridgeError):
    http_status, code, description = (
        422,
        422,
        "Idempotency-Key was already used with a different request body",
    )


class RangeNotSatisfiable(CallbridgeError):
    http_status, code, description = 416, 416, "Requested range not satisfiable"

    def __init__(self, size: int, message: str | None = None) -> None:
        super().__init__(message)
        self.size = size


class NotProvided(CallbridgeError):
    """An Exotel endpoint family callbridge does not implement (SMS, number lookup, …): a 404
    whose message says so (not a 5xx: nothing failed, the resource is not here)."""

    http_status, code, description = 404, 404, "Not provided by callbridge"


class PayloadTooLarge(CallbridgeError):
    http_status, code, description = 413, 413, "Request body too large"


class TooManyRequests(CallbridgeError):
    http_status, code, description = 429, 10724, "Too many requests"

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(CallbridgeError):
    http_status, code, description = 503, 503, "Service unavailable"


class NodeNotLeased(ServiceUnavailable):
    """This node does not hold its cluster lease right now (it is renewing or re-joining)."""

    def __init__(self, message: str = "this node is re-joining the cluster; try again") -> None:
        super().__init__(message)

    retry_after_s = 1


class SipCapacityExhausted(ServiceUnavailable):
    """Every media worker is full: the click-to-call is refused before anything is dialled."""

    description = "SIP capacity exhausted"
    retry_after_s = 1


class InternalError(CallbridgeError):
    http_status, code, description = 500, 1100, "Internal Server Error"
