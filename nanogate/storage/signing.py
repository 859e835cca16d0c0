"""Signed, expiring links: an HMAC over the object's name and the link's expiry time.

A link carries its own proof, so serving a file needs no database lookup and no key: whoever
holds the URL may fetch the object until it expires, and no one can mint or stretch a link
without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Literal

Verdict = Literal["ok", "expired", "bad"]

# A separate purpose tag, so a MAC made here can never be replayed where the same secret
# signs something else.
_PURPOSE = b"nanogate/files/v1\n"
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[0-9a-fA-F]{64}")
MIN_SECRET_BYTES = 16


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        # A short secret can be brute-forced offline from a single link.
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the URL signing secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def sign(self, name: str, expires: int) -> str:
        """Hex HMAC-SHA256 of the link: valid for `name` until the unix time `expires`."""
        # Digits, then a colon, then the name: the first colon splits the message one way only.
        # surrogatepass: any str encodes (and distinct strs to distinct bytes), so no raise.
        message = _PURPOSE + f"{expires}:{name}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, name: str, expires: str | int, sig: str, now: float | None = None) -> Verdict:
        """Verdict: "ok", "expired" (a genuine link past its time) or "bad" (altered, malformed)."""
        if isinstance(expires, str):
            if not _EXPIRES.fullmatch(expires):
                return "bad"
            expires = int(expires)
        elif expires < 0:
            return "bad"
        if not _SIG.fullmatch(sig):
            return "bad"
        # The signature is checked before the time, so only genuine links are told "expired".
        if not hmac.compare_digest(self.sign(name, expires), sig.lower()):
            return "bad"
        return "ok" if (time.time() if now is None else now) < expires else "expired"
