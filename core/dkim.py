"""DKIM keys per domain and their rotation lifecycle.

    generate -> active (signs; replaces the pair, and the old signer stays published)
    rotate   -> pending (publish its DNS record first) -> activate -> active
    the previous signer stays published until it is retired; retired keys are neither
    published nor kept on the mail hosts.

Key material is made by the command layer (randomness, sealing); the decider only checks the
lifecycle. One subject per domain, so two rotations of one domain cannot interleave.
"""

import msgspec

from core.errors import Conflict, NotFound
from core.events import (
    DkimKeyActivated,
    DkimKeyDeleted,
    DkimKeyGenerated,
    DkimKeyRetired,
    Event,
)

STATUSES = ("active", "pending", "previous", "retired")


class DkimState(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    keys: dict[str, str] = {}  # selector -> status

    @property
    def active(self) -> str:
        return next((sel for sel, status in self.keys.items() if status == "active"), "")


class NewKey(msgspec.Struct, frozen=True, kw_only=True):
    """The material of a generated key: public half in clear, private half sealed."""

    selector: str
    algorithm: str
    public_key: str
    private_key_sealed: str


class Generate(msgspec.Struct, frozen=True, kw_only=True):
    key: NewKey


class Rotate(msgspec.Struct, frozen=True, kw_only=True):
    key: NewKey


class Activate(msgspec.Struct, frozen=True, kw_only=True):
    selector: str


class Retire(msgspec.Struct, frozen=True, kw_only=True):
    selector: str


class Delete(msgspec.Struct, frozen=True, kw_only=True):
    selector: str


Command = Generate | Rotate | Activate | Retire | Delete


def _generated(state: DkimState, key: NewKey, status: str, previous: str) -> DkimKeyGenerated:
    return DkimKeyGenerated(
        domain=state.domain,
        selector=key.selector,
        algorithm=key.algorithm,
        public_key=key.public_key,
        private_key_sealed=key.private_key_sealed,
        status=status,
        previous=previous,
    )


def _known(state: DkimState, selector: str) -> str:
    status = state.keys.get(selector)
    if status is None:
        raise NotFound(
            "public key not found", f"no DKIM key {selector!r} for domain {state.domain}"
        )
    return status


def decide(cmd: Command, state: DkimState) -> list[Event]:
    match cmd:
        case Generate(key=key):
            previous = state.active if state.active != key.selector else ""
            return [_generated(state, key, "active", previous)]
        case Rotate(key=key):
            if not state.active:
                raise Conflict(
                    "nothing to rotate",
                    f"{state.domain} has no active DKIM key; generate one first",
                )
            if key.selector in state.keys:
                raise Conflict("selector exists", f"selector {key.selector!r} is already in use")
            return [_generated(state, key, "pending", "")]
        case Activate(selector=selector):
            status = _known(state, selector)
            if status == "active":
                return []
            if status == "retired":
                raise Conflict(
                    "key is retired",
                    f"selector {selector!r} was retired (its DNS record may be gone); rotate "
                    "to a new one",
                )
            return [DkimKeyActivated(domain=state.domain, selector=selector, previous=state.active)]
        case Retire(selector=selector):
            status = _known(state, selector)
            if status == "active":
                raise Conflict(
                    "key is signing",
                    f"selector {selector!r} signs mail for {state.domain}; activate another "
                    "key first",
                )
            if status == "retired":
                return []
            return [DkimKeyRetired(domain=state.domain, selector=selector)]
        case Delete(selector=selector):
            _known(state, selector)
            return [DkimKeyDeleted(domain=state.domain, selector=selector)]
    raise AssertionError(cmd)


def evolve(state: DkimState, event: Event) -> DkimState:
    """The key statuses after `event` (the projection applies the same rules in SQL)."""
    keys = dict(state.keys)
    match event:
        case DkimKeyGenerated(selector=sel, status=status, previous=previous):
            if status == "active":
                keys = {s: ("previous" if st == "active" else st) for s, st in keys.items()}
            keys[sel] = status
            if previous and previous in keys and previous != sel:
                keys[previous] = "previous"
        case DkimKeyActivated(selector=sel):
            keys = {s: ("previous" if st == "active" else st) for s, st in keys.items()}
            keys[sel] = "active"
        case DkimKeyRetired(selector=sel):
            keys[sel] = "retired"
        case DkimKeyDeleted(selector=sel):
            keys.pop(sel, None)
    return DkimState(domain=state.domain, keys=keys)
