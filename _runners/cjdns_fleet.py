"""
Runner for cjdns fleets, on the master: the pillar the `cjdns_fleet` ext_pillar gives a
minion, its neighbours, waiting for its card, making the fleet key, forgetting a card.

It reads `fleet_file` and `key_file` from the master's `ext_pillar` entry for cjdns_fleet (one
source of truth), and uses the compiler in `_pillar/cjdns_fleet.py` through Salt's loader:
sync both with `salt-run saltutil.sync_all`. A failure returns `{"Error": reason, "retcode": 1}`
(salt-run exits 1, an orchestrate `salt.runner` state fails).

    salt-run cjdns_fleet.render vps1
    salt-run cjdns_fleet.neighbours vps1
    salt-run cjdns_fleet.wait_card vps1 timeout=60
    salt-run cjdns_fleet.keygen
    salt-run cjdns_fleet.forget oldbox
"""

import logging
import re
import sys
import time
from types import ModuleType
from typing import Any, Callable

import salt.cache
import salt.key
import salt.loader

log = logging.getLogger(__name__)

__virtualname__ = "cjdns_fleet"
PILLAR = "cjdns_fleet"


def __virtual__():
    return __virtualname__


class RunnerError(Exception):
    """A failure whose message is the whole story (shown as the runner's Error)."""


def _failed(message: str) -> dict:
    __context__["retcode"] = 1
    return {"Error": message, "retcode": 1}


def _run(body: Callable[..., Any], *args: Any) -> Any:
    """body(compiler, *args) with the compiler loaded; a RunnerError or the compiler's
    FleetError becomes a failed result with its message, not a traceback."""
    try:
        compiler = _compiler()
    except RunnerError as error:
        return _failed(str(error))
    try:
        result = body(compiler, *args)
    except (RunnerError, compiler.FleetError) as error:
        return _failed(str(error))
    __context__["retcode"] = 0
    return result


def _settings() -> dict:
    """The ext_pillar arguments of the master's cjdns_fleet entry."""
    entries = [entry[PILLAR] for entry in __opts__.get("ext_pillar") or []
               if isinstance(entry, dict) and PILLAR in entry]
    if len(entries) != 1:
        raise RunnerError(f"the master config has {len(entries)} ext_pillar entries for {PILLAR}, not one "
                          f"(ext_pillar: [{{{PILLAR}: {{fleet_file: ..., key_file: ...}}}}])")
    if not isinstance(entries[0], dict):
        raise RunnerError(f"ext_pillar {PILLAR}: must be a mapping with fleet_file and key_file")
    return entries[0]


def _ext_pillar() -> Any:
    """The synced ext_pillar function, through Salt's loader (as the master loads it)."""
    try:
        return salt.loader.pillars(__opts__, {})[PILLAR]
    except KeyError:
        raise RunnerError(f"the {PILLAR} pillar module is not loaded: put _pillar/{PILLAR}.py in file_roots "
                          "and run salt-run saltutil.sync_all") from None


def _compiler() -> ModuleType:
    """The module behind the loaded ext_pillar, for its plain functions."""
    return sys.modules[_ext_pillar().__module__]


def _config(compiler: ModuleType) -> Any:
    settings = _settings()
    return compiler.config_of(settings.get("fleet_file"), settings.get("key_file"), __opts__.get("file_roots"))


def _member(compiler: ModuleType, minion: Any) -> str:
    problem = compiler.member_id_problem(minion)
    if problem:
        raise RunnerError(f"minion: {problem}")
    return minion


def render(minion: str) -> dict:
    """The pillar the cjdns_fleet ext_pillar gives `minion` (empty if it is not a member), for
    a node without a master: copy it into that node's pillar (a Qubes dom0, say).

    CLI Example::

        salt-run cjdns_fleet.render vps1 --out=yaml
    """
    return _run(_render, minion)


def _render(compiler: ModuleType, minion: str) -> dict:
    _member(compiler, minion)
    return _ext_pillar()(minion, {}, **_settings())


def neighbours(minion: str, reachable: bool = False) -> Any:
    """Sorted ids of the members that have an edge with `minion`, with or without cards.
    reachable=True: only those this master can run states on (an accepted minion key, and
    no card in the fleet file, which marks a member without a master).

    CLI Example::

        salt-run cjdns_fleet.neighbours vps1
    """
    return _run(_neighbours, minion, reachable)


def _neighbours(compiler: ModuleType, minion: str, reachable: Any) -> list:
    fleet = compiler.load_fleet(_config(compiler).fleet_file)
    if _member(compiler, minion) not in fleet.members:
        raise RunnerError(f"{minion} is not a member of fleet {fleet.name}")
    found = compiler.neighbours(fleet, minion)
    if reachable is not True:
        return found
    accepted = set(salt.key.Key(__opts__).list_keys().get("minions", []))
    return [m for m in found if m in accepted and not fleet.members[m].public_key]


def wait_card(minion: str, timeout: float = 120, interval: float = 1, fingerprint: str = "") -> Any:
    """Wait until the master's cache holds a valid card of `minion`: True, or a failure that
    says why (none arrived, or the last one was refused).

    CLI Example::

        salt-run cjdns_fleet.wait_card vps1 timeout=60
    """
    return _run(_wait_card, minion, timeout, interval, fingerprint)


def _wait_card(compiler: ModuleType, minion: str, timeout: Any, interval: Any, fingerprint: Any = "") -> bool:
    for name, value in (("timeout", timeout), ("interval", interval)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise RunnerError(f"{name}: {value!r} must be a number of seconds > 0")
    if fingerprint not in ("", None) and not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{64}", fingerprint)):
        raise RunnerError("fingerprint: must be a card's sha256, 64 lower-case hex digits")
    fleet = compiler.load_fleet(_config(compiler).fleet_file)
    if _member(compiler, minion) not in fleet.members:
        raise RunnerError(f"{minion} is not a member of fleet {fleet.name}")
    fetch = compiler.mine_fetcher(__opts__)
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        found = compiler.fleet_card(fleet, fetch, minion)
        if isinstance(found, compiler.Card) and (
                not fingerprint or compiler.card_fingerprint(compiler.mine_card(fetch(minion))) == fingerprint):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if polls == 0:
            log.debug("cjdns_fleet.wait_card: no valid card of %s yet; polling every %g s", minion, interval)
        polls += 1
        time.sleep(min(interval, left))
    if isinstance(found, compiler.Card):
        why = f"the card stored is not the one announced ({str(fingerprint)[:16]}...)"
    else:
        why = "no cjdns.card in its mine data" if found is None else f"its card is refused: {found.reason}"
    raise RunnerError(f"{minion}: no valid card after {timeout:g} s ({why})")


def keygen() -> dict:
    """Make the fleet key (32 random bytes, mode 0600) at the ext_pillar's key_file; refuses
    to overwrite one (that would rotate every password).

    CLI Example::

        salt-run cjdns_fleet.keygen
    """
    return _run(_keygen)


def _keygen(compiler: ModuleType) -> dict:
    path = _config(compiler).key_file
    compiler.create_key(path)
    return {"key_file": path, "created": True}


def forget(minion: str) -> dict:
    """Remove the cjdns.card entry from `minion`'s mine data in the master's cache (a member
    dropped from the fleet); says what was removed.

    CLI Example::

        salt-run cjdns_fleet.forget oldbox
    """
    return _run(_forget, minion)


def _forget(compiler: ModuleType, minion: str) -> dict:
    bank = f"minions/{_member(compiler, minion)}"
    cache = salt.cache.factory(__opts__)
    mine = cache.fetch(bank, "mine")
    if not isinstance(mine, dict) or compiler.CARD_FUNCTION not in mine:
        return {"minion": minion, "removed": None, "comment": f"no {compiler.CARD_FUNCTION} in its mine data"}
    card = compiler.mine_card(mine)
    del mine[compiler.CARD_FUNCTION]
    cache.store(bank, "mine", mine)
    shown = {key: card.get(key) for key in ("id", "publicKey", "ipv6")} if isinstance(card, dict) else repr(card)[:80]
    return {"minion": minion, "removed": {compiler.CARD_FUNCTION: shown},
            "comment": f"removed {compiler.CARD_FUNCTION} from {minion}'s mine data"}
