"""Row 1: cjdns._keypair() per valid fc key against the floor of the raw operations it needs.

cjdns keeps drawing random keys until the address (sha512(sha512(public))) starts with 0xfc,
about 256 candidates per key. Each rep makes KEYS keys while a counting wrapper around the
module's _raw_public (the one call per candidate) records how many candidates that took; the
floor then does exactly that many candidates with nothing but the raw operations:
urandom(32) -> X25519 public key (raw bytes) -> 2x SHA-512. Reps alternate product/floor.
"""

import hashlib
import os
from types import ModuleType
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common import Row, median, seconds, timed

KEYS = 32
REPS = 7
TARGET = 1.2


def floor(candidates: int) -> None:
    """The raw work of `candidates` attempts, with local names so the floor is as fast as it gets."""
    urandom, sha512, from_bytes = os.urandom, hashlib.sha512, X25519PrivateKey.from_private_bytes
    raw_enc, raw_fmt = Encoding.Raw, PublicFormat.Raw
    for _ in range(candidates):
        public = from_bytes(urandom(32)).public_key().public_bytes(raw_enc, raw_fmt)
        sha512(sha512(public).digest()).digest()


def make_keys(cj: ModuleType, count: int) -> int:
    """Make `count` keys with cj._keypair(); return how many candidates that took."""
    original = cj._raw_public
    attempts = 0

    def counting(private_raw: bytes) -> Any:
        nonlocal attempts
        attempts += 1
        return original(private_raw)

    cj._raw_public = counting  # _keypair looks the name up at call time
    try:
        for _ in range(count):
            ident = cj._keypair()
            assert ident.ipv6.startswith("fc"), ident.ipv6
    finally:
        cj._raw_public = original
    return attempts


def run(cj: ModuleType) -> list[Row]:
    make_keys(cj, 2)  # warm up (imports, OpenSSL)
    floor(200)
    ratios, product_times, floor_times, all_attempts = [], [], [], []
    for _ in range(REPS):
        product_time, attempts = timed(lambda: make_keys(cj, KEYS))
        floor_time, _ = timed(lambda: floor(attempts))
        ratios.append(product_time / floor_time)
        product_times.append(product_time / KEYS)
        floor_times.append(floor_time / KEYS)
        all_attempts.append(attempts)
    per_key = sum(all_attempts) / (KEYS * REPS)
    return [Row(
        "1. Key generation: cjdns._keypair() per valid fc key",
        f"{seconds(median(product_times))}/key",
        f"{seconds(median(floor_times))}/key (X25519 + 2x SHA-512 per candidate)",
        median(ratios), TARGET,
        notes=[f"row 1: {KEYS} keys x {REPS} reps; {per_key:.0f} candidates per valid key on average "
               f"(expected ~256); per-rep ratios {', '.join(f'{r:.2f}' for r in ratios)}"],
    )]


def profile_target(cj: ModuleType) -> Callable[[], None]:
    return lambda: make_keys(cj, KEYS)
