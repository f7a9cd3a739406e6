"""
States for a cjdns node: its identity (key pair), the managed settings of cjdroute.conf,
its peers, and the installation of cjdroute.

Every state computes the end state first, compares, and in test mode returns the changes a
real run would report without writing; a real run writes once, atomically. A state that
cannot do its job returns ``result: False`` with the field and the reason in ``comment`` and
leaves every file as it was. ``changes`` never holds a private key or a password.

.. code-block:: yaml

    cjdns-proxy-identity:
      cjdns.identity:
        - name: /etc/cjdns/cjdroute.conf
"""

import hashlib
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable

__virtualname__ = "cjdns"

HIDDEN = "<hidden>"
NEW_KEY = "<new key, made on apply>"
RECORD = ".cjdns-formula.json"


def __virtual__():
    if "cjdns.address" not in __salt__:
        return (False, "cjdns state: the cjdns execution module did not load")
    return __virtualname__


def _cj() -> Any:
    """The execution module itself (pure functions; private helpers included)."""
    return sys.modules[__salt__["cjdns.address"].__module__]


def _ret(name: str) -> dict:
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _fail(ret: dict, message: str) -> dict:
    ret.update(result=False, changes={}, comment=message)
    return ret


def _test() -> bool:
    return bool(__opts__.get("test"))


def _pillar(key: str, default: Any) -> Any:
    """Pillar ``key`` (``a:b:c``) as given. Not through ``pillar.get``: called from module
    code, Salt 3008 returns every string there as ``'**********'`` (saltstack/salt#69599)."""
    import salt.utils.data

    return salt.utils.data.traverse_dict_and_list(__pillar__, key, default)


def _guarded(name: str, body: Callable[[dict], dict]) -> dict:
    """Run body under the config's lock; expected errors become result False with their text.

    Test mode takes no lock and creates nothing (not even the lock file).
    """
    cj = _cj()
    ret = _ret(name)
    directory = os.path.dirname(os.path.abspath(name))
    try:
        cj.mode_drift(directory, 0o700, directory=True)  # refuses a symbolic link, changes nothing
        if _test():
            return body(ret)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with cj.locked(name):
            return body(ret)
    except cj.CryptographyMissing as error:
        # Under test=True the package state before this one has only predicted its install.
        if _test():
            ret.update(result=None, changes={}, comment=f"test mode: {error}; a real run needs it installed first")
            return ret
        return _fail(ret, str(error))
    except cj.ConfigSyntaxError as error:
        return _fail(ret, f"{name}:{error.line}:{error.column}: {error.reason}")
    except (cj.CjdnsError, OSError) as error:
        text = str(error)
        return _fail(ret, text if text.startswith(name) else f"{name}: {text}")


def _read(name: str) -> str | None:
    """The config's text, or None. In test mode, the text an earlier state of this run would
    have written (so a dry run of identity -> config -> peers predicts what a real run does)."""
    cj = _cj()
    if _test():
        preview = __context__.get("cjdns.preview", {}).get(os.path.abspath(name))
        if preview is not None:
            return preview
    if os.path.lexists(name):
        cj._refuse_special(name)
        return cj.read_text(name)
    return None


def _existing(name: str) -> str:
    old = _read(name)
    if old is None:
        raise _cj().ConfigError("no such file (cjdns.identity makes it)")
    return old


def _finish(ret: dict, name: str, old: str | None, new: str, done: str, nothing: str) -> dict:
    """Test mode: predict (and remember the text for the next states); else write if changed."""
    if new == old:
        ret["comment"] = nothing
        return ret
    if _test():
        __context__.setdefault("cjdns.preview", {})[os.path.abspath(name)] = new
        ret["result"] = None
        ret["comment"] = f"{done} (test mode: not written)"
        return ret
    _cj().write_config(name, new)
    ret["comment"] = done
    return ret


# --------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------


def _shared_reason(cj: Any, private_key: str, public: str, compromised: set,
                   template_keys: str | None, beneath: list) -> str | None:
    if public in compromised:
        return "its public key is listed in pillar as compromised"
    if template_keys and public in cj.read_public_keys(template_keys):
        return f"it is the template's key (listed in {template_keys})"
    adopted_from = __context__.get("cjdns.template_public_keys", {}).get(public)
    if adopted_from:
        return f"it is the template's key (the template's {adopted_from}, beneath the manual's bind, holds it)"
    for path in beneath:
        text = cj.file_beneath_mount(path)
        if text is not None and cj.private_key_in(text) == private_key.lower():
            return f"it is the template's key (the template's {path}, beneath the bind mount, holds it)"
    return None


def _new_identity(cj: Any) -> Any:
    """A new key pair; a dry run makes none (and needs no X25519): its changes show NEW_KEY."""
    return cj.Identity("0" * 64, NEW_KEY, NEW_KEY) if _test() else cj._keypair()


def identity(name: str, compromised_keys: list | None = None, template_keys: str | None = None,
             check_beneath: bool = True, beneath_paths: list | None = None, udp_port: int = 0, admin_bind: str = "127.0.0.1:11234",
             tun_device: str = "tun0") -> dict:
    """Keep a private key whose public key and address are the node's name.

    name
        The config file. Without one, a fresh config is written with a new key pair
        (``udp_port``, ``admin_bind`` and ``tun_device`` fill it in; ``cjdns.config`` manages
        them afterwards). Without a ``privateKey`` in it, one is added.

    compromised_keys
        Public keys whose private half must be replaced wherever found.

    template_keys
        A file listing the template's retired public keys (written by ``cjdns.template_keys_absent``).

    check_beneath
        Compare with the copy the template has beneath the bind mount (Qubes bind-dirs), at
        ``name`` and at ``beneath_paths`` (e.g. the manual's /etc/cjdroute.conf).

    A key is never replaced for any other reason; a deliberate new identity is
    ``salt-call cjdns.regenerate_identity``.
    """
    compromised = set(compromised_keys or [])

    def body(ret: dict) -> dict:
        cj = _cj()
        problems = _check_settings({"udp_port": udp_port, "admin_bind": admin_bind, "tun_device": tun_device})
        if problems:
            raise cj.ConfigError("; ".join(problems))
        old = _read(name)
        if old is None:
            ident = _new_identity(cj)
            password = cj.random_password(40)
            new = cj.new_config(ident, int(udp_port), admin_bind, password, tun_device)
            ret["changes"] = {"public_key": {"old": None, "new": ident.public_key},
                              "ipv6": {"old": None, "new": ident.ipv6}}
            if _test():
                ret["changes"] = {k: {"old": None, "new": NEW_KEY} for k in ret["changes"]}
            return _finish(ret, name, None, new, f"made a new identity in a new config, address {ident.ipv6}" if not _test() else "would make a new identity in a new config", "")
        doc = cj.parse(old)
        cj._require_strict(doc)
        data = doc.data()
        private = data.get("privateKey")
        replace_reason = None
        before = None
        if private is None:
            replace_reason = "the config has no privateKey"
        else:
            try:
                before = cj.identity_of(private)
            except cj.KeyFormatError as error:
                raise cj.ConfigError(
                    f"privateKey: {error}; not replacing it silently, fix it or run "
                    "`salt-call cjdns.regenerate_identity` for a new identity"
                ) from None
            beneath = [name, *(beneath_paths or [])] if check_beneath else []
            replace_reason = _shared_reason(cj, private, before.public_key, compromised, template_keys, beneath)
        if replace_reason:
            ident = _new_identity(cj)
        else:
            ident = before
        new = old
        if replace_reason:
            new = cj.set_path(new, ("privateKey",), ident.private_key)
        new = cj.set_path(new, ("publicKey",), ident.public_key)
        new = cj.set_path(new, ("ipv6",), ident.ipv6)
        old_view = {"public_key": before.public_key if before else None, "ipv6": before.ipv6 if before else None}
        if replace_reason:
            shown = NEW_KEY if _test() else None
            ret["changes"] = {
                "public_key": {"old": old_view["public_key"], "new": shown or ident.public_key},
                "ipv6": {"old": old_view["ipv6"], "new": shown or ident.ipv6},
            }
            verb = "would replace" if _test() else "replaced"
            done = f"{verb} the node's key because {replace_reason}" + (
                f": address {old_view['ipv6']} -> {ident.ipv6}" if not _test() else "")
        else:
            derived = {"publicKey": ident.public_key, "ipv6": ident.ipv6}
            fixed = [k for k, value in derived.items() if data.get(k) != value]
            if fixed:
                ret["changes"] = {k: {"old": data.get(k), "new": derived[k]} for k in fixed}
            done = f"kept the node's key (address {ident.ipv6}); corrected {', '.join(fixed)}"
        return _finish(ret, name, old, new, done, f"identity kept: {ident.public_key} {ident.ipv6}")

    return _guarded(name, body)


# --------------------------------------------------------------------------------------
# The private key's file and directory: modes and owner on every apply
# --------------------------------------------------------------------------------------


def _mode_changes(cj: Any, wanted: list) -> dict:
    """{path: drift} for the (path, mode, directory) that differ; ConfigError on a link."""
    return {path: drift for path, mode, directory in wanted if (drift := cj.mode_drift(path, mode, directory))}


def _repair_modes(cj: Any, ret: dict, wanted: list, what: str) -> dict:
    """Report and (unless test) repair the modes and owners in ``wanted``, or refuse a link."""
    try:
        changes = _mode_changes(cj, wanted)
    except cj.CjdnsError as error:
        return _fail(ret, str(error))
    if not changes:
        ret["comment"] = f"{what}: modes and owner as wanted"
        return ret
    ret["changes"] = changes
    if _test():
        ret.update(result=None, comment=f"would repair the mode or owner of {', '.join(changes)}")
        return ret
    try:
        for path, mode, _directory in wanted:
            if path in changes:
                cj.repair_mode(path, mode)
    except OSError as error:
        return _fail(ret, f"could not repair {what}: {error}")
    ret["comment"] = f"repaired the mode or owner of {', '.join(changes)}"
    return ret


def protected(name: str) -> dict:
    """The config ``name`` (it holds the private key) is a regular file, root's, mode 0600, in
    a directory that is root's, mode 0700; neither is a symbolic link (refused: nothing is
    written through one). Checked and repaired on every apply; absent ones are left to
    ``cjdns.identity``, which makes them so.
    """
    cj = _cj()
    directory = os.path.dirname(os.path.abspath(name))
    # The directory first: a link there is refused before the config is looked at through it.
    wanted = [(directory, 0o700, True), (name, 0o600, False)]
    return _repair_modes(cj, _ret(name), wanted, f"{name} and its directory")


# --------------------------------------------------------------------------------------
# Managed settings
# --------------------------------------------------------------------------------------


def _record_path(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(name)), RECORD)


def _read_json_record(path: str) -> dict:
    """A record the formula keeps beside the config; {} when missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        return record if isinstance(record, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def _read_record(name: str) -> dict:
    return _read_json_record(_record_path(name))


def _write_record(name: str, record: dict) -> None:
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    path = _record_path(name)
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return
    except FileNotFoundError:
        pass
    _cj().atomic_write(path, data, 0o600)


def _port_of(bind: str) -> str:
    return bind.rsplit(":", 1)[1] if isinstance(bind, str) and ":" in bind else ""


def _settings_changes(cj: Any, text: str, data: dict, settings: dict, record: dict) -> tuple[str, dict, list]:
    """Apply the managed settings to text; return new text, changes and the managed users."""
    changes: dict = {}

    def put(path: tuple, value: Any, label: str, secret: bool = False) -> None:
        nonlocal text
        old = cj.get_path(data, path)
        if old == value and not isinstance(old, bool):
            return
        text = cj.set_path(text, path, value)
        changes[label] = {"old": HIDDEN if secret and old is not None else old, "new": HIDDEN if secret else value}

    def drop(path: tuple, label: str) -> None:
        nonlocal text
        old = cj.get_path(data, path)
        if old is None:
            return
        text = cj.delete_path(text, path)
        changes[label] = {"old": old, "new": None}

    admin_bind = settings.get("admin_bind")
    if admin_bind:
        put(("admin", "bind"), admin_bind, "admin.bind")
    password = settings.get("admin_password") or ""
    current = cj.get_path(data, ("admin", "password"))
    if password:
        put(("admin", "password"), password, "admin.password", secret=True)
    elif not isinstance(current, str) or current == "NONE" or len(current.encode()) > 53:
        put(("admin", "password"), cj.random_password(40), "admin.password", secret=True)

    port = int(settings.get("udp_port") or 0)
    prefix, blocks = cj._udp_interfaces(data)
    single = isinstance(cj.get_path(data, prefix), dict)
    families = {cj._bind_family(b.get("bind")) for b in blocks if isinstance(b, dict)}
    if port:
        for index, block in enumerate(blocks):
            bind = block.get("bind") if isinstance(block, dict) else None
            if isinstance(bind, str) and _port_of(bind) != str(port):
                host = bind.rsplit(":", 1)[0]
                path = (prefix if single else prefix + (index,)) + ("bind",)
                put(path, f"{host}:{port}", "/".join(map(str, path)))
    if not blocks:
        raise cj.ConfigError("interfaces.UDPInterface: missing; cjdroute needs at least one UDP interface")
    if 6 not in families and not single and port:
        text = cj.edit(text, prefix, {None: [{"bind": f"[::]:{port}", "connectTo": {}}]})
        changes["interfaces/UDPInterface/[::]"] = {"old": None, "new": f"[::]:{port}"}
    beacon = settings.get("beacon")
    if beacon is not None:
        for index, block in enumerate(blocks):
            if isinstance(block, dict) and "beacon" in block:
                path = (prefix if single else prefix + (index,)) + ("beacon",)
                put(path, int(beacon), "/".join(map(str, path)))

    tun = settings.get("tun_device")
    if tun:
        put(("router", "interface", "type"), "TUNInterface", "router.interface.type")
        put(("router", "interface", "tunDevice"), tun, "router.interface.tunDevice")
    log_to = settings.get("log_to") or ""
    if log_to:
        put(("logging", "logTo"), log_to, "logging.logTo")
    else:
        drop(("logging", "logTo"), "logging.logTo")
    seeds = list(settings.get("dns_seeds") or [])
    if seeds:
        put(("router", "dnsSeeds"), seeds, "router.dnsSeeds")
    else:
        drop(("router", "dnsSeeds"), "router.dnsSeeds")

    text, users = _authorized(cj, text, settings.get("authorized_passwords") or {}, record, changes)
    return text, changes, users


def _authorized(cj: Any, text: str, wanted: dict, record: dict, changes: dict) -> tuple[str, list]:
    """Managed authorizedPasswords entries, one per named peer (matched by "user")."""
    data = cj.loads(text)
    entries = data.get("authorizedPasswords")
    if entries is None:
        text = cj.set_path(text, ("authorizedPasswords",), [])
        entries = []
    if not isinstance(entries, list):
        raise cj.ConfigError("authorizedPasswords: must be a list")
    by_user = {e.get("user"): i for i, e in enumerate(entries) if isinstance(e, dict)}
    edits: dict = {}
    appends = []
    for user, options in sorted(wanted.items()):
        options = options or {}
        desired = {}
        index = by_user.get(user)
        old = entries[index] if index is not None else None
        desired["password"] = options.get("password") or (old or {}).get("password") or cj.random_password(31)
        desired["user"] = user
        if options.get("ipv6"):
            # As cjdroute prints addresses (8 groups of 4 digits), whatever the spelling in pillar.
            desired["ipv6"] = ipaddress.IPv6Address(options["ipv6"]).exploded
        if old == desired:
            continue
        label = f"authorizedPasswords.{user}"
        if old is None:
            appends.append(desired)
            changes[label] = {"old": None, "new": {**desired, "password": HIDDEN}}
        else:
            edits[index] = desired
            changes[label] = {"old": {**old, "password": HIDDEN}, "new": {**desired, "password": HIDDEN}}
    for user in sorted(set(record.get("users", [])) - set(wanted)):
        if user in by_user:
            edits[by_user[user]] = cj.DELETE
            changes[f"authorizedPasswords.{user}"] = {"old": {**entries[by_user[user]], "password": HIDDEN}, "new": None}
    if appends:
        edits[None] = appends
    if edits:
        text = cj.edit(text, ("authorizedPasswords",), edits)
    return text, sorted(wanted)


# A DNS host name (RFC 1123 labels), for router.dnsSeeds.
_HOST_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _tun_name_problem(tun: Any) -> str | None:
    """Linux's dev_valid_name (net/core/dev.c): 1-15 bytes, not "." or "..", no '/', ':' or
    whitespace. Also refused: '%' (the kernel would pick a name from a tun%d pattern, which the
    firewall rules would not name) and characters that cannot sit in an nft or shell string."""
    if not isinstance(tun, str):
        return f"must be a string, not {_type_name(tun)}"
    if not 1 <= len(tun.encode()) <= 15 or tun in (".", ".."):
        return f"{tun!r} is not a Linux interface name (1-15 characters, not '.' or '..')"
    bad = sorted({c for c in tun if c in "/:%\"'`$" or c.isspace() or not c.isprintable() or not c.isascii()})
    if bad:
        return (f"{tun!r} is not a Linux interface name: {' '.join(repr(c) for c in bad)} not allowed "
                "(no '/', ':', '%', quotes, '$', whitespace or non-ASCII)")
    return None


def _mesh_address_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    try:
        ip = ipaddress.IPv6Address(value)
    except ValueError:
        return f"{value!r} is not an IPv6 address"
    if "%" in value or ip not in ipaddress.ip_network("fc00::/8"):
        return f"{value!r} is not a cjdns address (fc00::/8): it names the one peer allowed to use this password"
    return None


def _check_settings(settings: dict) -> list[str]:
    """Problems of the settings cjdns.config writes, as "field: reason". Secrets are named,
    never shown."""
    cj = _cj()
    problems = []
    port = settings.get("udp_port")
    if port not in (None, 0) and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
        problems.append(f"udp_port: {port!r} is not a port number (1-65535)")
    password = settings.get("admin_password")
    if password not in (None, ""):
        reason = cj._check_text_field(password, "admin_password", 53)
        if reason:
            problems.append(f"admin_password: {reason}" + (" (cjdroute's admin auth hashes only 63 bytes of password+cookie)" if "longer" in reason else ""))
        elif password == "NONE":
            problems.append("admin_password: \"NONE\" turns off cjdroute's admin authentication; "
                            "leave it empty for a generated password, or give a real one")
    bind = settings.get("admin_bind")
    if bind is not None:
        try:
            cj.endpoint_family(bind)
        except cj.CjdnsError as error:
            problems.append(f"admin_bind: {error}")
    authorized = settings.get("authorized_passwords") or {}
    if not isinstance(authorized, Mapping):
        problems.append(f"authorized_passwords: must be a mapping of names, not {_type_name(authorized)} (value not shown)")
        authorized = {}
    for user, options in authorized.items():
        if not isinstance(options, (Mapping, type(None))):
            problems.append(f"authorized_passwords.{user}: must be a mapping (password, ipv6) or empty, "
                            f"not {_type_name(options)} (value not shown)")
            continue
        reason = cj._check_text_field(user, "a user name", 64)
        if reason:
            problems.append(f"authorized_passwords.{user}: {reason}")
        for key in sorted(set(options or {}) - {"password", "ipv6"}, key=str):
            problems.append(f"authorized_passwords.{user}.{key}: unknown field (allowed: password, ipv6)")
        if options and options.get("password") not in (None, ""):
            reason = cj._check_text_field(options["password"], "a password")
            if reason:
                problems.append(f"authorized_passwords.{user}.password: {reason}")
        if options and options.get("ipv6") not in (None, ""):
            reason = _mesh_address_problem(options["ipv6"])
            if reason:
                problems.append(f"authorized_passwords.{user}.ipv6: {reason}")
    tun = settings.get("tun_device")
    if tun is not None:
        reason = _tun_name_problem(tun)
        if reason:
            problems.append(f"tun_device: {reason}")
    seeds = settings.get("dns_seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, str) and _HOST_NAME.fullmatch(s) for s in seeds)):
        problems.append("dns_seeds: must be a list of host names (empty: no DNS-seed peering)")
    beacon = settings.get("beacon")
    if beacon is not None and (beacon not in (0, 1, 2) or isinstance(beacon, bool)):
        problems.append(f"beacon: {beacon!r} must be 0 (off), 1 (listen) or 2 (listen and send)")
    log_to = settings.get("log_to")
    if log_to not in (None, "", "stdout"):
        problems.append(f"log_to: {log_to!r} must be 'stdout' or empty (cjdroute knows no other value)")
    return problems


def config(name: str, settings: dict | None = None, secrets_pillar: str | None = None) -> dict:
    """Manage the settings of cjdroute.conf the formula owns; everything else stays as it is.

    settings (all optional)
        ``admin_bind``; ``admin_password`` (empty: keep the node's own, or make one if it is
        "NONE"); ``udp_port`` (both UDP interfaces); ``beacon``; ``tun_device``; ``log_to``;
        ``dns_seeds`` (a list; empty removes ``router.dnsSeeds``); ``authorized_passwords``
        (``{user: {password?, ipv6?}}``: a password is generated in the node when none is
        given; see ``salt-call cjdns.credentials``).

    secrets_pillar
        A pillar key (e.g. ``cjdns:node``) to read ``admin_password`` and
        ``authorized_passwords`` from, so they never become state arguments (Salt caches those).
    """
    settings = dict(settings or {})
    if secrets_pillar:
        for key, empty in (("admin_password", ""), ("authorized_passwords", {})):
            settings.setdefault(key, _pillar(f"{secrets_pillar}:{key}", empty))

    def body(ret: dict) -> dict:
        cj = _cj()
        problems = _check_settings(settings)
        if problems:
            raise cj.ConfigError("; ".join(problems))
        old = _existing(name)
        doc = cj.parse(old)
        cj._require_strict(doc)
        record = _read_record(name)
        new, changes, users = _settings_changes(cj, old, doc.data(), settings, record)
        ret["changes"] = changes
        result = _finish(ret, name, old, new, f"set {', '.join(sorted(changes))}", "managed settings are as wanted")
        # The record says which entries the formula manages; it changes only with them.
        if not _test() and new != old and record.get("users") != users:
            _write_record(name, {**record, "users": users})
        return result

    return _guarded(name, body)


# --------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------


def peers(name: str, peers: dict | None = None, pillar_key: str | None = None, exclusive: bool = False) -> dict:
    """Merge pillar peers into the UDPInterface of their address family.

    peers
        ``{"a.b.c.d:port" or "[v6]:port": {password, publicKey, login?, peerName?}}``, as in
        a ``connectTo`` block. All are validated first; one comment lists every problem.

    pillar_key
        Read the peers from this pillar key instead (e.g. ``cjdns:node:peers``), so their
        passwords never become state arguments, which Salt keeps in its cache.

    exclusive
        With it, every peer not in pillar is removed, hand-added ones too. Without it
        (the default), hand-added peers stay, and only peers this formula added earlier
        are removed when pillar no longer lists them.
    """
    wanted = peers if peers is not None else (_pillar(pillar_key, {}) if pillar_key else {})

    def body(ret: dict) -> dict:
        cj = _cj()
        valid = cj.validate_peers(wanted or {})
        old = _existing(name)
        record = _read_record(name)
        prune = tuple(sorted(set(record.get("peers", [])) - set(valid)))
        plan = cj.merge_peers(old, valid, exclusive=bool(exclusive), prune=prune)
        labels = {e: (valid.get(e) or {}).get("peerName") for e in valid}
        for kind in ("added", "updated", "removed"):
            items = getattr(plan, kind)
            if items:
                ret["changes"][kind] = [f"{e} ({labels[e]})" if labels.get(e) else e for e in items]
        summary = ", ".join(f"{len(getattr(plan, k))} {k}" for k in ("added", "updated", "removed") if getattr(plan, k))
        result = _finish(ret, name, old, plan.text, f"peers: {summary}", f"{len(valid)} pillar peers configured, nothing to change")
        managed = sorted(valid)
        if not _test() and plan.text != old and record.get("peers") != managed:
            _write_record(name, {**record, "peers": managed})
        return result

    return _guarded(name, body)


# --------------------------------------------------------------------------------------
# The template holds no private key
# --------------------------------------------------------------------------------------


def template_keys_absent(name: str, paths: list | None = None, confdir: str | None = None) -> dict:
    """Remove every cjdns private key from a Qubes template, remembering its public key.

    name
        File that lists the removed keys' public halves (public data, mode 0644). Qubes
        made from the template read it to tell that a key they hold is the template's.

    paths
        Config files to check (e.g. the manual's /etc/cjdroute.conf).

    confdir
        A directory whose files are all checked (the formula's /etc/cjdns).
    """
    cj = _cj()
    ret = _ret(name)
    candidates = [p for p in (paths or []) if os.path.isfile(p) and not os.path.islink(p)]
    if confdir and os.path.isdir(confdir):
        candidates += sorted(
            os.path.join(confdir, f) for f in os.listdir(confdir)
            if os.path.isfile(os.path.join(confdir, f)) and not os.path.islink(os.path.join(confdir, f))
        )
    found: dict[str, str | None] = {}
    missing = None
    for path in dict.fromkeys(candidates):
        try:
            private = cj.private_key_in(cj.read_text(path))
        except (OSError, cj.CjdnsError):
            continue
        if private is None:
            continue
        try:
            found[path] = cj.public_key(private)
        except cj.KeyFormatError:
            found[path] = None
        except cj.CryptographyMissing as error:
            # Removing the key without recording its public half would let a qube keep it.
            if not _test():
                return _fail(ret, str(error))
            found[path], missing = None, error
    known = cj.read_public_keys(name)
    publics = sorted({p for p in found.values() if p} - known)
    if not found and not publics:
        ret["comment"] = "no private key in the template"
        return ret
    ret["changes"] = {"removed": sorted(found)}
    if publics:
        ret["changes"]["recorded_public_keys"] = publics
    described = "; ".join(
        f"{path} (public key {pub}, address {cj.address(pub)})" if pub else path for path, pub in sorted(found.items())
    )
    why = "a template's key would be shared by every qube made from it"
    if _test():
        ret["result"] = None
        ret["comment"] = f"would remove the template's private key from {described}: {why}"
        if missing:
            ret["comment"] += f" (and record its public half, which needs X25519: {missing})"
        return ret
    try:
        if publics:
            lines = sorted(known | set(publics))
            text = "# Public keys of cjdns keys removed from this template (cjdns-formula).\n" + "\n".join(lines) + "\n"
            os.makedirs(os.path.dirname(os.path.abspath(name)), mode=0o755, exist_ok=True)
            cj.atomic_write(name, text.encode(), 0o644)
        for path in found:
            os.unlink(path)
    except OSError as error:
        return _fail(ret, f"could not remove the template's key: {error}")
    ret["comment"] = f"removed the template's private key from {described}: {why}"
    return ret


# --------------------------------------------------------------------------------------
# Installing cjdroute
# --------------------------------------------------------------------------------------


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest() if hasattr(hashlib, "file_digest") else hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None


def _install_file(source: str, target: str) -> None:
    """Install an executable atomically (the module's atomic_write: same directory, fsync, rename)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(source, "rb") as handle:
        _cj().atomic_write(target, handle.read(), 0o755)


def _proxy_env(proxy: str, extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TERM")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root")
    if proxy:
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[key] = proxy
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


def _run(argv: list, cwd: str | None, env: dict, timeout: float) -> None:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{' '.join(argv)}` took longer than {timeout:.0f} s") from None
    except FileNotFoundError:
        raise RuntimeError(f"`{argv[0]}` is not installed") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}:\n{tail}")


def _stamp(builddir: str) -> dict:
    try:
        with open(os.path.join(builddir, ".cjdns-formula-build.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}


def _check_install_args(method: str, rev: str, repo: str, url: str, sha256: str, commit: str = "") -> list[str]:
    import re

    problems = []
    if method not in ("source", "binary"):
        problems.append(f"install.method: {method!r} must be 'source' or 'binary'")
    if method == "source":
        if not isinstance(rev, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}", rev):
            problems.append(f"install.source.rev: {rev!r} is not a git tag or commit name")
        if not isinstance(repo, str) or not re.fullmatch(r"(https://|file://|/)\S+", repo):
            problems.append(f"install.source.repo: {repo!r} must be an https:// URL (or a local path)")
        if not isinstance(commit, str) or not re.fullmatch(r"([0-9a-f]{40})?", commit):
            problems.append(f"install.source.commit: {commit!r} must be empty or a commit id (40 lowercase hex digits)")
    if method == "binary":
        if not isinstance(url, str) or not re.fullmatch(r"(https://|file://)\S+", url):
            problems.append(f"install.binary.url: {url!r} must be an https:// URL")
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            problems.append(f"install.binary.sha256: {sha256!r} must be 64 lowercase hex digits")
    return problems


def _installed_files(name: str, tools: list | None) -> list:
    """(path, mode, directory) of cjdroute and the tools beside it that exist."""
    prefix = os.path.dirname(name)
    paths = [name, *(os.path.join(prefix, tool) for tool in tools or [])]
    return [(path, 0o755, False) for path in paths if os.path.lexists(path)]


def _commit_of(builddir: str, rev: str, env: dict) -> str:
    """The commit ``rev`` names in the clone at ``builddir`` (a tag is peeled to its commit)."""
    proc = subprocess.run(["git", "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}"], cwd=builddir,
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{rev!r} is not a tag or commit in the fetched repository: {proc.stderr.strip()}")
    return proc.stdout.strip()


def installed(name: str, method: str = "source", rev: str = "", repo: str = "", builddir: str = "",
              tools: list | None = None, proxy: str = "", build_env: dict | None = None,
              build_timeout: float = 3600, url: str = "", sha256: str = "", commit: str = "") -> dict:
    """cjdroute installed at ``name`` (e.g. /usr/bin/cjdroute), built from a pinned tag or
    downloaded with a checksum; it and ``tools`` are root's, mode 0755 (no setuid, not
    writable by others), repaired on every apply.

    method: source
        git clone ``repo`` into ``builddir`` (through ``proxy``, Qubes' updates proxy in a
        template), check out ``rev``, run ``./do``, install ``cjdroute`` and ``tools``
        beside ``name``. Rebuilds only when ``rev`` (or ``commit``) changes or the binary
        was altered. With ``commit``, the checkout of ``rev`` must be exactly that commit,
        or nothing is built (a tag can be moved; a commit id cannot).

    method: binary
        Download ``url``, refuse it unless its sha256 is ``sha256``, install it.
    """
    cj = _cj()
    ret = _ret(name)
    problems = _check_install_args(method, rev, repo, url, sha256, commit)
    if problems:
        return _fail(ret, "; ".join(problems))
    try:
        modes = _mode_changes(cj, _installed_files(name, tools))
    except cj.CjdnsError as error:
        return _fail(ret, str(error))
    current = _sha256(name)
    if method == "binary":
        if current == sha256:
            return _modes_only(cj, ret, name, tools, f"cjdroute (sha256 {sha256}) at {name}")
        ret["changes"] = {"cjdroute": {"old": current, "new": sha256}, **({"modes": modes} if modes else {})}
        if _test():
            ret.update(result=None, comment=f"would download {url} and install it as {name}")
            return ret
        result = _install_binary(ret, name, url, sha256, proxy)
        return result if result["result"] is False else _also_modes(cj, result, name, tools, modes)
    stamp = _stamp(builddir)
    pinned = not commit or stamp.get("commit") == commit
    if stamp.get("rev") == rev and current and stamp.get("sha256") == current and pinned:
        return _modes_only(cj, ret, name, tools, f"cjdroute {rev} at {name}")
    ret["changes"] = {"cjdroute": {"old": stamp.get("rev") if current else None, "new": rev}}
    if commit:
        ret["changes"]["commit"] = {"old": stamp.get("commit") if current else None, "new": commit}
    if modes:
        ret["changes"]["modes"] = modes
    if _test():
        ret.update(result=None, comment=f"would build cjdroute {rev} from {repo} in {builddir} and install it as {name}")
        return ret
    result = _build(ret, name, rev, repo, builddir, tools, _proxy_env(proxy, build_env or {}), build_timeout, commit)
    return result if result["result"] is False else _also_modes(cj, result, name, tools, modes)


def _modes_only(cj: Any, ret: dict, name: str, tools: list | None, what: str) -> dict:
    """cjdroute is the wanted build: only its and the tools' modes may need repair."""
    ret = _repair_modes(cj, ret, _installed_files(name, tools), what)
    if ret["changes"]:
        ret["changes"] = {"modes": ret["changes"]}
    return ret


def _also_modes(cj: Any, ret: dict, name: str, tools: list | None, modes: dict) -> dict:
    """After an install: repair the tools' modes too, and report the old modes that changed."""
    follow = _repair_modes(cj, _ret(name), _installed_files(name, tools), name)
    if follow["result"] is False:
        return _fail(ret, follow["comment"])
    drift = {**modes, **follow["changes"]}
    if drift:
        ret["changes"]["modes"] = drift
    return ret


def _build(ret: dict, name: str, rev: str, repo: str, builddir: str, tools: list | None, env: dict,
           build_timeout: float, commit: str) -> dict:
    prefix = os.path.dirname(name)
    try:
        if not os.path.isdir(os.path.join(builddir, ".git")):
            os.makedirs(os.path.dirname(builddir.rstrip("/")) or "/", exist_ok=True)
            _run(["git", "clone", "--no-checkout", repo, builddir], None, env, build_timeout)
        _run(["git", "fetch", "--force", "--tags", repo], builddir, env, build_timeout)
        # Checked before the checkout: a moved tag leaves the build tree and cjdroute as they were.
        head = _commit_of(builddir, rev, env)
        if commit and head != commit:
            return _fail(ret, f"install.source.commit: {rev} in {repo} is commit {head}, not the pinned {commit}; "
                              "nothing built or installed (was the tag moved?)")
        _run(["git", "-c", "advice.detachedHead=false", "checkout", "--force", head], builddir, env, 600)
        started = time.monotonic()
        _run(["./do"], builddir, env, build_timeout)
        for tool in ["cjdroute", *(tools or [])]:
            built = os.path.join(builddir, tool)
            if tool == "cjdroute" or os.path.exists(built):
                _install_file(built, os.path.join(prefix, tool) if tool != "cjdroute" else name)
        stamp = {"rev": rev, "commit": head, "sha256": _sha256(name), "repo": repo,
                 "seconds": round(time.monotonic() - started)}
        with open(os.path.join(builddir, ".cjdns-formula-build.json"), "w", encoding="utf-8") as handle:
            json.dump(stamp, handle)
    except (RuntimeError, OSError) as error:
        return _fail(ret, f"building cjdroute {rev}: {error}")
    ret["comment"] = f"built cjdroute {rev} (commit {head}) from {repo} and installed it as {name}"
    return ret


_MAX_BINARY = 256 << 20  # far above cjdroute's size; a larger download is not cjdroute


def _install_binary(ret: dict, name: str, url: str, sha256: str, proxy: str) -> dict:
    import urllib.request

    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {}))
    try:
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with opener.open(url, timeout=60) as response:
            data = response.read(_MAX_BINARY + 1)
        if len(data) > _MAX_BINARY:
            return _fail(ret, f"install.binary.url: {url} is larger than {_MAX_BINARY >> 20} MiB; not installed")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            return _fail(ret, f"install.binary.sha256: {url} has sha256 {digest}, not {sha256}; not installed")
        _cj().atomic_write(name, data, 0o755)
    except OSError as error:
        return _fail(ret, f"install.binary.url: could not download {url}: {error}")
    ret["comment"] = f"installed {url} (sha256 {sha256}) as {name}"
    return ret


# --------------------------------------------------------------------------------------
# dom0: qube settings with a dry run that writes nothing
#
# Qubes' qvm.prefs state writes even under test=True, and qvm.features/qvm.service fail in
# test mode for a qube that does not exist yet. This state calls the real qvm states in a
# real run, and in test mode predicts their changes from read-only qvm calls instead.
# --------------------------------------------------------------------------------------

_CREATION_PREFS = ("label", "template")
_NONE_ALIASES = ("netvm", "guivm", "audiovm", "default_dispvm", "management_dispvm")


def _status_text(status: Any) -> str:
    """The text a read-only qvm call returns: a Status's comment (a dict's from the CLI)."""
    text = getattr(status, "comment", None)
    if text is None and isinstance(status, dict):
        text = status.get("comment") or status.get("stdout", "")
    return str(text or "")


def _qvm_listing(status: Any) -> dict:
    """Parse the "key : value" lines a read-only qvm.prefs call puts in its comment."""
    values = {}
    for line in _status_text(status).splitlines():
        if ": " in line:
            key, value = line.split(": ", 1)
            values[key.strip()] = value
    return values


def _qvm_flags(status: Any) -> dict:
    """Parse "[ENABLED]  k" / "[DISABLED] k" / "[SET]  k: v" lines of qvm.features/qvm.service."""
    flags: dict = {}
    for line in _status_text(status).splitlines():
        line = line.strip()
        if line.startswith("[ENABLED]"):
            flags[line[len("[ENABLED]"):].strip()] = "1"
        elif line.startswith("[DISABLED]"):
            flags[line[len("[DISABLED]"):].strip()] = ""
        elif line.startswith("[SET]") and ": " in line:
            key, value = line[len("[SET]"):].strip().split(": ", 1)
            flags[key] = value
    return flags


def _predict_prefs(name: str, prefs: dict, exists: bool, created_with: dict) -> dict:
    current = {}
    if exists and prefs:
        current = _qvm_listing(__salt__["qvm.prefs"](name, get=list(prefs)))
    changes = {}
    for key, value in prefs.items():
        dest = key.replace("-", "_")
        new = None if dest in _NONE_ALIASES and value in ("", "none") else value
        if exists:
            old_text = current.get(dest, "*default*")
        else:
            old_text = str(created_with[key]) if key in created_with else "*default*"
        if old_text == str(new) or (old_text == "None" and new is None):
            continue
        old: Any = old_text
        if old_text not in ("*default*", "None") and isinstance(new, (bool, int)):
            old = {"True": True, "False": False}.get(old_text, int(old_text) if old_text.lstrip("-").isdigit() else old_text)
        changes[dest] = {"old": None if old_text == "None" else old, "new": new}
    return {"qvm.create": changes} if changes else {}


def _predict_flags(name: str, enable: list, exists: bool, service: bool, disable: list = ()) -> dict:
    current = _qvm_flags(__salt__["qvm.service" if service else "qvm.features"](name)) if exists else {}
    changes = {}
    for key, wanted in [*((k, "1") for k in enable), *((k, "") for k in disable)]:
        old = current.get(key)
        if old == wanted:
            continue
        if service:
            shown = {None: "Missing", "": "Disabled", "1": "Enabled"}
            changes[key] = {"old": shown.get(old, old), "new": shown[wanted]}
        else:
            changes[key] = {"old": old, "new": wanted}
    label = "qvm.service" if service else "qvm.features"
    return {label: changes} if changes else {}


def qvm_settings(name: str, prefs: dict | None = None, features_enable: list | None = None,
                 services_enable: list | None = None, services_disable: list | None = None,
                 created_with: dict | None = None, missing_ok: bool = False) -> dict:
    """Set a qube's prefs, enable features and Qubes services, with an honest dry run.

    A real run calls Qubes' ``qvm.prefs``, ``qvm.features`` and ``qvm.service`` states;
    ``changes`` has their changes under ``qvm.prefs``/``qvm.features``/``qvm.service`` as
    ``qvm.vm`` reports them. Under test=True nothing is written: the changes are predicted
    from read-only calls (for a qube about to be created, from ``created_with``, the
    prefs ``qvm.present`` gives it, and Qubes' defaults for the rest).
    ``missing_ok``: a qube that does not exist is nothing to change (uninstall).
    """
    ret = _ret(name)
    prefs = dict(prefs or {})
    features_enable = list(features_enable or [])
    services_enable = list(services_enable or [])
    services_disable = list(services_disable or [])
    exists = bool(__salt__["qvm.check"](name))
    if not exists and missing_ok:
        ret["comment"] = f"qube {name} does not exist: nothing to change"
        return ret
    if not exists and created_with is None:
        return _fail(ret, f"qube {name} does not exist")
    if _test():
        predicted = {
            "qvm.prefs": _predict_prefs(name, prefs, exists, dict(created_with or {})),
            "qvm.features": _predict_flags(name, features_enable, exists, service=False),
            "qvm.service": _predict_flags(name, services_enable, exists, service=True, disable=services_disable),
        }
        ret["changes"] = {k: v for k, v in predicted.items() if v}
        if ret["changes"]:
            ret["result"] = None
            ret["comment"] = f"would change {', '.join(sorted(ret['changes']))} of {name} (test mode: nothing written)"
        else:
            ret["comment"] = f"{name}: prefs, features and services are as wanted"
        return ret
    if not exists:
        return _fail(ret, f"qube {name} does not exist")
    comments = []
    steps = []
    if prefs:
        steps.append(("qvm.prefs", lambda: __states__["qvm.prefs"](name, **prefs)))
    if features_enable:
        steps.append(("qvm.features", lambda: __states__["qvm.features"](name, enable=features_enable)))
    if services_enable or services_disable:
        steps.append(("qvm.service", lambda: __states__["qvm.service"](
            name, **({"enable": services_enable} if services_enable else {}),
            **({"disable": services_disable} if services_disable else {}))))
    for label, step in steps:
        try:
            result = step()
        except Exception as error:  # qubesadmin errors escape the qvm states as exceptions
            return _fail(ret, f"{label} on {name}: {type(error).__name__}: {error}")
        result = result if isinstance(result, dict) else vars(result)
        if result.get("changes"):
            ret["changes"][label] = result["changes"]
        if result.get("comment"):
            comments.append(f"{label}: {result['comment']}".strip())
        if result.get("result") is False:
            ret["result"] = False
            ret["comment"] = "\n".join(comments)
            return ret
    done = f"changed {', '.join(sorted(ret['changes']))} of {name}" if ret["changes"] else ""
    ret["comment"] = "\n".join([done] * bool(done) + comments) or f"{name}: prefs, features and services are as wanted"
    return ret


# --------------------------------------------------------------------------------------
# dom0 touches only what the formula owns
#
# The template and sys-cjdns get the feature OWNER_FEATURE (value: their own name) when the
# formula makes them; an existing qube without it is refused unless pillar adopts it. A
# client's netvm before it was moved onto sys-cjdns is kept on sys-cjdns as the feature
# CLIENT_FEATURE + <client> ("default", "none" or a qube name: Qubes forbids "none" and
# "default" as qube names), which is also the list of clients to restore. The value is the
# name because qvm-clone copies features: a copy under another name is not the formula's.
# Only Qubes' qvm module is used; it has no call that lists qubes, so qubes that use
# sys-cjdns or cjdns-gw without the formula's knowledge are found by Qubes' own refusal.
# --------------------------------------------------------------------------------------

OWNER_FEATURE = "cjdns-formula-owned"
CLIENT_FEATURE = "cjdns-formula-client."
_CLIENT_CLASSES = ("AppVM", "StandaloneVM")


def _qube_name_ok(name: Any) -> bool:
    """Qubes' own rules (qubes-core-admin qubes/vm/__init__.py validate_name)."""
    import re

    return (isinstance(name, str) and re.fullmatch(_QUBE_NAME, name) is not None
            and name not in ("none", "default", "Domain-0") and not name.endswith("-dm"))


def _qvm_exists(name: str) -> bool:
    return _qube_name_ok(name) and bool(__salt__["qvm.check"](name))


def _qvm_has_pref(name: str, key: str) -> bool:
    """Whether the qube's class has the property. qubesd answers QubesNoSuchPropertyError for
    one it lacks (``template`` on a TemplateVM), which qubesadmin raises as an AttributeError
    (qubes-core-admin-client qubesadmin/exc.py, base.py property_is_default); the qvm module's
    prefs lets it through. The qvm module has no call that names a qube's class."""
    try:
        __salt__["qvm.prefs"](name, get=[key])
    except AttributeError:
        return False
    return True


def _qube(name: str) -> dict | None:
    """What the formula needs to know of a qube, from read-only qvm calls; None if missing."""
    if not _qvm_exists(name):
        return None
    if not _qvm_has_pref(name, "netvm"):
        return {"name": name, "class": "AdminVM", "features": {}, "power": "Running"}
    based, dvm = _qvm_has_pref(name, "template"), _qvm_has_pref(name, "template-for-dispvms")
    klass = {(True, True): "AppVM", (True, False): "DispVM", (False, True): "StandaloneVM",
             (False, False): "TemplateVM"}[(based, dvm)]
    keys = ["netvm", "provides-network"] + (["template"] if based else []) + (["template-for-dispvms"] if dvm else [])
    info = _qvm_listing(__salt__["qvm.prefs"](name, get=keys))
    info.update(name=name, features=_qvm_flags(__salt__["qvm.features"](name)))
    info["class"] = klass
    info["power"] = str(getattr(__salt__["qvm.state"](name), "stdout", "") or "").strip()
    return info


def _a(klass: str) -> str:
    return f"an {klass}" if klass[0] in "AEIOU" else f"a {klass}"


def _owned(info: dict) -> bool:
    return info["features"].get(OWNER_FEATURE) == info["name"]


def _running(info: dict | None) -> bool:
    """Conservative both ways: a qube counts as running unless halted, a netvm only when running."""
    return info is not None and info["power"] != "Halted"


def _netvm_value(shown: str) -> str | None:
    return None if shown == "None" else shown


def _unowned(key: str, name: str) -> str:
    return (f"cjdns.qubes.{key}: qube {name!r} exists and was not made by this formula (no feature "
            f"{OWNER_FEATURE}={name}). Choose a name no qube has, or list it in "
            f"cjdns:qubes:adopt to let the formula manage {name} from now on")


def _upstream(netvm: str, stop: str) -> list[str]:
    """The netvm chain from ``netvm`` up, as far as it is explicit (a default netvm ends it)."""
    chain: list[str] = []
    current: str | None = netvm
    while current and current not in chain:
        chain.append(current)
        if current == stop:
            break
        info = _qube(current)
        current = _netvm_value(info["netvm"]) if info and info["class"] != "AdminVM" else None
        current = None if current == "*default*" else current
    return chain


def _client_problem(name: str, info: dict | None, upstream: list[str], proxy: str) -> str | None:
    where = f"cjdns.qubes.clients: qube {name!r}"
    if info is None:
        return f"{where} does not exist"
    if name in upstream:
        return f"{where} is on {proxy}'s own way out ({' -> '.join([proxy, *upstream])}): it cannot use {proxy}"
    if info["class"] not in _CLIENT_CLASSES:
        return f"{where} is {_a(info['class'])}; only AppVMs and StandaloneVMs can use {proxy} as their netvm"
    if info.get("template_for_dispvms") == "True":
        return f"{where} is a disposable template (template_for_dispvms, e.g. the management DispVM's); it is not made a client"
    if info.get("provides_network") == "True":
        return f"{where} provides network to other qubes; a netvm is not made a client of {proxy}"
    return None


def qubes_owned(name: str, template: str, proxy: str, source_template: str = "", proxy_netvm: str = "",
                clients: list | None = None, adopt: list | None = None, install: bool = True,
                wipe: bool = False) -> dict:
    """Refuse, before anything changes, qubes the formula must not touch.

    The template and sys-cjdns, where they exist, must be of the right class and carry the
    formula's mark (or be listed in ``adopt``). With ``install``: the source template must be a
    TemplateVM (or missing: qvm-template installs it), sys-cjdns must be based on the
    template, its netvm must provide network without a loop, and each client must be an AppVM
    or StandaloneVM that is no disposable template, no netvm and not on sys-cjdns's way out.
    Without ``install`` (the uninstall) and with ``wipe``: refused while a client the formula
    knows of would stay on sys-cjdns, which Qubes would then refuse to remove.
    Read-only, so a dry run refuses exactly what a real run refuses.
    """
    ret = _ret(name)
    adopted = set(adopt or [])
    problems = []
    found = {"template": _qube(template), "proxy": _qube(proxy)}
    for key, qube, klass in (("template", template, "TemplateVM"), ("proxy", proxy, "AppVM")):
        info = found[key]
        if info is None:
            continue
        if info["class"] != klass:
            problems.append(f"cjdns.qubes.{key}: qube {qube!r} is {_a(info['class'])}, not {_a(klass)}")
        elif not _owned(info) and qube not in adopted:
            problems.append(_unowned(key, qube))
    if install:
        source = _qube(source_template)
        if source is not None and source["class"] != "TemplateVM":
            problems.append(f"cjdns.qubes.source_template: qube {source_template!r} is {_a(source['class'])}, not a TemplateVM")
        info = found["proxy"]
        if info is not None and info["class"] == "AppVM" and (_owned(info) or proxy in adopted) \
                and info.get("template") != template:
            problems.append(f"cjdns.qubes.proxy: qube {proxy!r} is based on {info.get('template')!r}, not on {template}")
        upstream: list[str] = []
        netvm = _qube(proxy_netvm)
        if netvm is None:
            problems.append(f"cjdns.qubes.proxy_netvm: qube {proxy_netvm!r} does not exist")
        elif netvm["class"] == "AdminVM" or netvm.get("provides_network") != "True":
            problems.append(f"cjdns.qubes.proxy_netvm: qube {proxy_netvm!r} does not provide network")
        else:
            upstream = _upstream(proxy_netvm, proxy)
            if proxy in upstream:
                problems.append(f"cjdns.qubes.proxy_netvm: qube {proxy_netvm!r} reaches the network through {proxy} "
                                f"({' -> '.join(upstream)}): Qubes refuses netvm loops")
        for client in clients or []:
            problem = _client_problem(client, _qube(client), upstream, proxy)
            if problem:
                problems.append(problem)
    if not install and wipe and found["proxy"] is not None and not problems:
        _steps, notes, staying = _clients_plan(proxy, list(clients or []), restore_all=True)
        if staying:
            problems.append(f"cjdns.wipe_identity: {proxy} cannot be removed: it would still be the netvm of "
                            f"{', '.join(staying)}. Give them another netvm first (qvm-prefs <qube> netvm <netvm>), "
                            f"or uninstall without wipe_identity")
            problems += [n for n in notes if n.split(":", 1)[0] in staying]
    if problems:
        return _fail(ret, "refused, nothing was changed:\n" + "\n".join(f"- {p}" for p in problems))
    mine = [qube for key, qube in (("template", template), ("proxy", proxy)) if found[key]]
    ret["comment"] = f"this formula's (made or adopted): {', '.join(mine) or 'none exists'}"
    if install and clients:
        ret["comment"] += f"; clients checked: {', '.join(clients)}"
    return ret


def _features_state(qube: str, **kwargs: Any) -> dict:
    result = __states__["qvm.features"](qube, **kwargs)
    return result if isinstance(result, dict) else vars(result)


def qube_marked(name: str) -> dict:
    """Mark a qube as made (or adopted) by the formula: feature OWNER_FEATURE = its name.

    Runs right after the qube is created (or found owned or adopted by ``qubes_owned``).
    """
    ret = _ret(name)
    exists = _qvm_exists(name)
    current = _qvm_flags(__salt__["qvm.features"](name)).get(OWNER_FEATURE) if exists else None
    if current == name:
        ret["comment"] = f"{name} is marked as this formula's ({OWNER_FEATURE})"
        return ret
    ret["changes"] = {OWNER_FEATURE: {"old": current, "new": name}}
    if _test():
        ret.update(result=None, comment=f"would mark {name} as this formula's ({OWNER_FEATURE}; test mode: nothing written)")
        return ret
    if not exists:
        return _fail(ret, f"qube {name} does not exist")
    try:
        result = _features_state(name, set=[{OWNER_FEATURE: name}])
    except Exception as error:  # qubesadmin errors escape the qvm states as exceptions
        return _fail(ret, f"qvm.features on {name}: {type(error).__name__}: {error}")
    if result.get("result") is False:
        return _fail(ret, f"qvm.features on {name}: {result.get('comment') or result.get('stderr')}")
    ret["comment"] = f"marked {name} as this formula's ({OWNER_FEATURE})"
    return ret


def _netvm_setting(value: str | None) -> str:
    """What to give Qubes' qvm.prefs for a netvm ('none' is None for the key `netvm`)."""
    return "none" if value is None else value


def _recorded(previous: str | None) -> str:
    return "default" if previous == "*default*" else "none" if previous is None else previous


def _restored(record: str) -> str | None:
    return "*default*" if record == "default" else None if record == "none" else record


def _clients_plan(proxy: str, clients: list, restore_all: bool) -> tuple[list, list, list]:
    """What ``qvm_clients`` does, from read-only calls: (steps, notes, still_on_proxy).

    steps: (client, [(kind, old, new)]) with kind "record" (the client's earlier netvm kept on
    the proxy) or "netvm", in the order they are written. still_on_proxy: clients the
    formula knows of that keep the proxy as netvm after the steps.
    """
    info = _qube(proxy)
    flags = info["features"] if info else {}
    records = {k[len(CLIENT_FEATURE):]: v for k, v in flags.items() if k.startswith(CLIENT_FEATURE)}
    steps: list = []
    notes: list = []
    staying: list = []
    listed = list(clients)
    for client in sorted(set(records) if restore_all else set(records) - set(listed)):
        record = records[client]
        forget = ("record", record, None)
        current = _qube(client)
        if current is None:
            steps.append((client, [forget]))
            notes.append(f"{client}: no longer exists; skipped")
            continue
        if current["netvm"] != proxy:
            steps.append((client, [forget]))
            notes.append(f"{client}: uses {current['netvm']} now, not {proxy}; left alone")
            continue
        earlier = _restored(record)
        if earlier not in (None, "*default*"):
            target = _qube(earlier)
            if target is None or target.get("provides_network") != "True":
                notes.append(f"{client}: its earlier netvm {earlier} no longer exists or provides no network; left on {proxy} "
                             f"(set one by hand: qvm-prefs {client} netvm <qube>)")
                staying.append(client)
                continue
            if _running(current) and target["power"] != "Running":
                notes.append(f"{client}: running, and its earlier netvm {earlier} is not (Qubes cannot attach a running qube "
                             f"to a halted netvm); left on {proxy}: start {earlier} or shut {client} down, then apply again")
                staying.append(client)
                continue
        steps.append((client, [("netvm", proxy, earlier), forget]))
    proxy_up = info is not None and info["power"] == "Running"
    for client in listed:
        current = _qube(client)
        if restore_all:
            if client not in records and current is not None and current["netvm"] == proxy:
                notes.append(f"{client}: uses {proxy}, but its earlier netvm was never recorded; left on {proxy} "
                             f"(set one by hand: qvm-prefs {client} netvm <qube>)")
                staying.append(client)
            continue
        if current is None:
            notes.append(f"{client}: does not exist")
            continue
        if current["netvm"] == proxy:
            staying.append(client)
            if client not in records:
                notes.append(f"{client}: already uses {proxy}, but its earlier netvm was never recorded: "
                             f"uninstalling will leave it on {proxy}")
            continue
        if _running(current) and not proxy_up:
            notes.append(f"{client}: running, and {proxy} is not (Qubes cannot attach a running qube to a halted netvm): "
                         f"it keeps netvm {current['netvm']} for now. Start {proxy} once cjdns-formula has set it up, "
                         f"or shut {client} down, then apply cjdns.dom0 again")
            continue
        previous = _netvm_value(current["netvm"])
        steps.append((client, [("record", records.get(client), _recorded(previous)), ("netvm", previous, proxy)]))
        staying.append(client)
    return steps, notes, staying


def _client_changes(actions: list) -> dict:
    names = {"record": "recorded_netvm", "netvm": "netvm"}
    return {names[kind]: {"old": old, "new": new} for kind, old, new in actions}


def qvm_clients(name: str, clients: list | None = None, restore_all: bool = False) -> dict:
    """Clients of sys-cjdns (``name``): move the listed ones onto it, recording each one's netvm
    before; give the recorded netvm back to those dropped from ``clients`` (all of them with
    ``restore_all``, the uninstall), but only while their netvm is still sys-cjdns.

    ``changes`` has, per client, ``netvm`` and ``recorded_netvm`` as old/new; notes say what was
    left alone and why. A client that cannot be switched now (Qubes refuses a running qube on
    a halted netvm) is left as it is with a note, not an error. Test mode writes nothing and
    reports the same changes.
    """
    ret = _ret(name)
    steps, notes, _staying = _clients_plan(name, list(clients or []), restore_all)
    missing = [n for n in notes if n.endswith(": does not exist")]
    lines = []
    failed = []
    for client, actions in steps:
        done = []
        try:
            for action in actions:
                if not _test():
                    _client_write(name, client, action)
                done.append(action)
        except Exception as error:  # a Qubes refusal for one client does not stop the others
            failed.append(f"{client}: {error}")
        if done:
            ret["changes"][client] = _client_changes(done)
        would = "would be " if _test() else ""
        netvm = [a for a in done if a[0] == "netvm"]
        if netvm and netvm[0][2] == name:
            lines.append(f"{client}: {would}moved onto {name} (netvm was {netvm[0][1]}; recorded)")
        elif netvm:
            lines.append(f"{client}: {would}given back netvm {netvm[0][2]} (was {name})")
        elif done:
            lines.append(f"{client}: record of its earlier netvm {would}dropped")
    if _test() and ret["changes"]:
        ret["result"] = None
        lines.append("(test mode: nothing written)")
    if failed or missing:
        ret["result"] = False
    nothing = f"no client of {name} to give back" if restore_all else f"clients of {name} are as wanted"
    ret["comment"] = "\n".join(failed + lines + notes) or nothing
    return ret


def _client_write(proxy: str, client: str, action: tuple) -> None:
    kind, _old, new = action
    if kind == "record":
        key = CLIENT_FEATURE + client
        result = _features_state(proxy, **({"default": [key]} if new is None else {"set": [{key: new}]}))
    else:
        result = __states__["qvm.prefs"](client, netvm=_netvm_setting(new))
        result = result if isinstance(result, dict) else vars(result)
    if result.get("result") is False:
        raise RuntimeError(result.get("comment") or result.get("stderr") or "qvm state failed")


def qube_absent(name: str, pillar_key: str, adopt: list | None = None, clients: list | None = None) -> dict:
    """Remove a qube of the formula (``qvm.absent``), reporting the removal in ``changes``.

    Refused for a qube without the formula's mark (unless adopted) and, for sys-cjdns, while a
    client the formula knows of still uses it (``clients``: the listed ones; the recorded ones
    are read from it). Test mode predicts the same, including the refusal.
    """
    ret = _ret(name)
    info = _qube(name)
    if info is None:
        ret["comment"] = f"{name} does not exist: nothing to remove"
        return ret
    if not _owned(info) and name not in set(adopt or []):
        return _fail(ret, f"{pillar_key}: qube {name!r} was not made by this formula (no feature "
                          f"{OWNER_FEATURE}={name}); not removed")
    if clients is not None:
        _steps, _notes, staying = _clients_plan(name, list(clients), restore_all=True)
        if staying:
            return _fail(ret, f"{pillar_key}: {name} not removed: it is still the netvm of {', '.join(staying)}; "
                              f"give them another netvm first (qvm-prefs <qube> netvm <netvm>)")
    ret["changes"] = {"removed": name}
    if _test():
        ret.update(result=None, comment=f"would remove {name} (qvm-remove; test mode: nothing removed)")
        return ret
    try:
        result = __states__["qvm.absent"](name)
    except Exception as error:  # qubesadmin errors escape the qvm states as exceptions
        return _fail(ret, f"qvm.absent on {name}: {type(error).__name__}: {error}")
    result = result if isinstance(result, dict) else vars(result)
    if _qvm_exists(name):
        return _fail(ret, f"{name} not removed: {result.get('comment') or result.get('stderr')}".strip())
    ret["comment"] = f"removed {name}"
    return ret


# --------------------------------------------------------------------------------------
# Pillar check: every SLS requires it, so a bad value stops the run before anything changes
# --------------------------------------------------------------------------------------

_FREE_FORM = {"node.peers", "node.authorized_passwords", "install.source.build_env"}
_QUBE_NAME = r"[A-Za-z][A-Za-z0-9_.-]{0,30}"
_LABELS = ("red", "orange", "yellow", "green", "gray", "blue", "purple", "black")


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None:
        return "null"
    return {bool: "true/false", int: "an integer", str: "a string", list: "a list",
            float: "a decimal number"}.get(type(value), type(value).__name__)


# Pillar keys that hold passwords (and everything below them): a problem there names the
# field and the type it has, never the value (comments reach the minion log and Salt's cache).
_SECRET_KEYS = ("node.admin_password", "node.peers", "node.authorized_passwords")


def _is_secret(where: str) -> bool:
    relative = where.split(".", 1)[-1]
    return any(relative == key or relative.startswith(key + ".") for key in _SECRET_KEYS)


def _shown(value: Any, where: str) -> str:
    """A wrong value as a comment may show it: a plain value outside the secret keys as
    itself; a secret or a mapping/list (which may hold secrets) only by its type."""
    if _is_secret(where):
        return f"{_type_name(value)} (value not shown)"
    if isinstance(value, (Mapping, list, tuple, set)):
        return _type_name(value)
    return repr(value)


def _shape_problems(value: Any, default: Any, where: str) -> list[str]:
    import difflib

    if default is None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return [f"{where}: {_shown(value, where)} must be an integer or null"]
        return []
    # Salt hands pillar and state arguments over as dict, OrderedDict or (3008) MaskedDict.
    expected = Mapping if isinstance(default, Mapping) else type(default)
    if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, expected):
        return [f"{where}: {_shown(value, where)} must be {_type_name(default)}"]
    if not isinstance(default, Mapping) or where.split(".", 1)[-1] in _FREE_FORM:
        return []
    problems = []
    for key, sub in value.items():
        if key not in default:
            close = difflib.get_close_matches(str(key), list(default), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(default)})"
            problems.append(f"{where}.{key}: unknown key{hint}")
        else:
            problems.extend(_shape_problems(sub, default[key], f"{where}.{key}"))
    return problems


def _well_typed(value: Any, default: Any, where: str) -> Any:
    """``value`` with every part _shape_problems reports replaced by its default (unknown keys
    dropped), so the value checks can still run on the rest and name every bad field at once."""
    if _shape_problems(value, default, where) == [] or not isinstance(default, Mapping) or not isinstance(value, Mapping):
        return value if _shape_problems(value, default, where) == [] else default
    return {key: _well_typed(sub, default[key], f"{where}.{key}") for key, sub in value.items() if key in default}


# Debian Policy 5.6.1: lower case letters, digits, "+", "-", "."; at least two characters,
# starting with a letter or digit (so never an apt option).
_DEBIAN_PACKAGE = r"[a-z0-9][a-z0-9+.-]+"


def _package_problems(packages: dict) -> list[str]:
    import re

    problems = []
    for key, names in packages.items():
        for index, name in enumerate(names):
            if not isinstance(name, str) or not re.fullmatch(_DEBIAN_PACKAGE, name):
                problems.append(f"cjdns.packages.{key}[{index}]: {name!r:.80} is not a Debian package name "
                                "(lower-case letters, digits, '+', '-', '.'; starts with a letter or digit)")
    return problems


# The kernel gives the TUN's own route metric 256 (IP6_RT_PRIO_USER); metrics are 32-bit.
_ROUTE_METRIC = (256, 4294967295)
_UNIT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}(?<!\.service)"
# Paths go into unit files, shell scripts and nft rules, unquoted in some of them.
_PATH = r"(/[A-Za-z0-9_.+@-]+)+"
# Directories of the system the formula writes into but never owns: a path the formula owns
# (a file it writes or removes, a directory it makes 0700 or deletes) can be none of them.
_SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/home/user", "/lib", "/lib32", "/lib64", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib",
    "/usr/lib64", "/usr/libexec", "/usr/local", "/usr/local/bin", "/usr/local/lib", "/usr/local/sbin",
    "/usr/local/src", "/usr/sbin", "/usr/share", "/usr/src", "/var", "/var/cache", "/var/lib", "/var/log",
    "/var/run", "/var/tmp", "/etc/systemd", "/etc/systemd/system", "/etc/qubes-bind-dirs.d", "/etc/default",
    "/rw", "/rw/config", "/rw/bind-dirs", "/rw/usrlocal", "/rw/config/qubes-bind-dirs.d",
    "/rw/config/qubes-firewall.d", "/run/qubes-service",
})
# paths.* keys that name system directories the formula only writes into.
_SYSTEM_PATH_KEYS = frozenset({"qubes_service_dir", "template_bind_dirs_dir", "qube_bind_dirs_dir", "rw_bind_dirs"})


def _path_problem(path: Any, owned: bool) -> str | None:
    import posixpath

    if not isinstance(path, str):
        return f"must be a string, not {_type_name(path)}"
    if not path.startswith("/"):
        return f"{path!r} must be an absolute path"
    if posixpath.normpath(path) != path or path.startswith("//"):
        return f"{path!r} is not normalised (write it as {posixpath.normpath(path)!r})"
    if path != "/" and not re.fullmatch(_PATH, path):
        return f"{path!r} may only hold letters, digits and '/', '_', '.', '+', '@', '-'"
    if owned and path in _SYSTEM_DIRS:
        return f"{path!r} is a system directory; the formula writes, changes the mode of or removes this path"
    return None


def _path_problems(cfg: dict) -> list[str]:
    import posixpath

    problems = []
    paths = cfg["paths"]
    for key, path in paths.items():
        reason = _path_problem(path, key not in _SYSTEM_PATH_KEYS)
        if reason:
            problems.append(f"cjdns.paths.{key}: {reason}")
    source = cfg["install"]["source"]
    for where, path, owned in (("install.prefix", cfg["install"]["prefix"], False),
                               ("install.source.builddir", source["builddir"], True)):
        reason = _path_problem(path, owned)
        if reason:
            problems.append(f"cjdns.{where}: {reason}")
    if not problems and posixpath.dirname(paths["config"]) != paths["confdir"]:
        problems.append(f"cjdns.paths.config: {paths['config']!r} must be directly in cjdns.paths.confdir "
                        f"({paths['confdir']!r}), the directory the formula keeps 0700 and persistent")
    return problems


def _install_problems(install: dict) -> list[str]:
    problems = []
    for index, tool in enumerate(install["tools"]):
        if not isinstance(tool, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}", tool):
            problems.append(f"cjdns.install.tools[{index}]: {tool!r:.80} is not a bare file name "
                            "(letters, digits, '_', '.', '+', '-'; no '/')")
    source = install["source"]
    for index, name in enumerate(source["build_deps"]):
        if not isinstance(name, str) or not re.fullmatch(_DEBIAN_PACKAGE, name):
            problems.append(f"cjdns.install.source.build_deps[{index}]: {name!r:.80} is not a Debian package name")
    for key, value in source["build_env"].items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
            problems.append(f"cjdns.install.source.build_env: {key!r:.80} is not an environment variable name")
        elif not isinstance(value, str) or any(ord(c) < 0x20 for c in value):
            problems.append(f"cjdns.install.source.build_env.{key}: must be a string without control characters")
    if not 1 <= source["build_timeout"] <= 86400:
        problems.append(f"cjdns.install.source.build_timeout: {source['build_timeout']} must be 1-86400 seconds")
    proxy = source["proxy"]
    if proxy and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?", proxy) \
            and not re.fullmatch(r"https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?/?", proxy):
        problems.append(f"cjdns.install.source.proxy: {proxy!r:.80} must be http://host:port (or empty)")
    return problems


def _value_problems(cfg: dict) -> list[str]:
    cj = _cj()
    problems = []
    q = cfg["qubes"]
    for key in ("source_template", "template", "proxy", "proxy_netvm"):
        if not _qube_name_ok(q[key]) or str(q[key]).lower() in ("none", "dom0", "default"):
            problems.append(f"cjdns.qubes.{key}: {q[key]!r} is not a valid qube name")
    for client in q["clients"]:
        if not _qube_name_ok(client) or client in ("dom0", q["proxy"], q["template"], q["source_template"]):
            problems.append(f"cjdns.qubes.clients: {client!r} is not a qube that can use {q['proxy']} as its netvm")
    for qube in q["adopt"]:
        if qube not in (q["template"], q["proxy"]):
            problems.append(f"cjdns.qubes.adopt: {qube!r} is neither cjdns.qubes.template nor cjdns.qubes.proxy")
    if q["template"] == q["proxy"]:
        problems.append("cjdns.qubes.proxy: must differ from cjdns.qubes.template")
    if q["source_template"] in (q["template"], q["proxy"]):
        problems.append("cjdns.qubes.source_template: must differ from cjdns.qubes.template and cjdns.qubes.proxy")
    repo = q["source_template_fromrepo"]
    if repo and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", repo):
        problems.append(f"cjdns.qubes.source_template_fromrepo: {repo!r} is not a repository id (letters, digits, _ . -)")
    if q["proxy_netvm"] == q["proxy"]:
        problems.append("cjdns.qubes.proxy_netvm: sys-cjdns cannot be its own netvm")
    if q["proxy_label"] not in _LABELS:
        problems.append(f"cjdns.qubes.proxy_label: {q['proxy_label']!r} is not a Qubes label ({', '.join(_LABELS)})")
    if not 200 <= q["proxy_memory"] <= q["proxy_maxmem"]:
        problems.append(f"cjdns.qubes.proxy_memory: {q['proxy_memory']} must be at least 200 and at most proxy_maxmem ({q['proxy_maxmem']})")
    if not 1 <= q["proxy_vcpus"] <= 64:
        problems.append(f"cjdns.qubes.proxy_vcpus: {q['proxy_vcpus']} must be 1-64")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", q["service_flag"]):
        problems.append(f"cjdns.qubes.service_flag: {q['service_flag']!r} is not a Qubes service name")
    problems += _package_problems(cfg["packages"])
    install = cfg["install"]
    problems += [f"cjdns.{p}" for p in _check_install_args(
        install["method"], install["source"]["rev"], install["source"]["repo"],
        install["binary"]["url"], install["binary"]["sha256"], install["source"]["commit"])]
    problems += _path_problems(cfg)
    problems += _install_problems(install)
    node = cfg["node"]
    problems += [f"cjdns.node.{p}" for p in _check_settings(node)]
    if not 1 <= node["udp_port"] <= 65535:
        problems.append(f"cjdns.node.udp_port: {node['udp_port']} is not a port number (1-65535)")
    if not _ROUTE_METRIC[0] < node["blackhole_metric"] <= _ROUTE_METRIC[1]:
        problems.append(f"cjdns.node.blackhole_metric: {node['blackhole_metric']} must be {_ROUTE_METRIC[0] + 1}-"
                        f"{_ROUTE_METRIC[1]}: above the metric of cjdroute's own fc00::/8 route ({_ROUTE_METRIC[0]}), "
                        "so the blackhole only catches traffic while cjdroute is down")
    if not re.fullmatch(_UNIT_NAME, node["service"]):
        problems.append(f"cjdns.node.service: {node['service']!r} is not a systemd unit name "
                        "(letters, digits, '_', '.', '-', '@'; without '.service')")
    if not 1 <= node["start_attempts"] <= 10:
        problems.append(f"cjdns.node.start_attempts: {node['start_attempts']} must be 1-10")
    if not 0 <= node["start_interval"] <= 300:
        problems.append(f"cjdns.node.start_interval: {node['start_interval']} must be 0-300 (seconds)")
    if node["min_established_peers"] is not None and node["min_established_peers"] < 0:
        problems.append(f"cjdns.node.min_established_peers: {node['min_established_peers']} must be 0 or more (or null)")
    try:
        cj.validate_peers(node["peers"], "cjdns.node.peers")
    except cj.PeerError as error:
        problems += error.problems
    for key in node["compromised_keys"]:
        try:
            cj.parse_public_key(key)
        except cj.KeyFormatError as error:
            problems.append(f"cjdns.node.compromised_keys: {key!r}: {error}")
    return problems + _fleet_problems(cj, cfg["fleet"])


# Salt minion ids as fleet members may use them (they become logins and state arguments).
_MEMBER_ID = r"[A-Za-z0-9._-]{1,64}"
_SLS_NAME = r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)*"


def _fleet_problems(cj: Any, fleet: dict) -> list[str]:
    """The fleet keys the ext_pillar sets, and the orchestration's settings."""
    problems = []
    ids = [("member", fleet["member"])] if fleet["member"] else []
    for key in ("neighbours", "pending", "unreachable", "members"):
        ids += [(f"{key}[{index}]", value) for index, value in enumerate(fleet[key])]
    for where, value in ids:
        if not (isinstance(value, str) and re.fullmatch(_MEMBER_ID, value)):
            problems.append(f"cjdns.fleet.{where}: {value!r:.80} is not a minion id (letters, digits, '.', '_', '-'; 1-64)")
    for key in fleet["compromised_keys"]:
        try:
            cj.parse_public_key(key)
        except cj.KeyFormatError as error:
            problems.append(f"cjdns.fleet.compromised_keys: {key!r}: {error}")
    for index, endpoint in enumerate(fleet["endpoints"]):
        try:
            cj.peer_endpoint(endpoint)
        except cj.CjdnsError as error:
            problems.append(f"cjdns.fleet.endpoints[{index}]: {error}")
    if fleet["epoch"] < 0:
        problems.append(f"cjdns.fleet.epoch: {fleet['epoch']} must be 0 or more")
    if not re.fullmatch(_SLS_NAME, fleet["sls"]):
        problems.append(f"cjdns.fleet.sls: {fleet['sls']!r:.80} is not an SLS name (e.g. cjdns.node)")
    if not 1 <= fleet["card_timeout"] <= 3600:
        problems.append(f"cjdns.fleet.card_timeout: {fleet['card_timeout']} must be 1-3600 (seconds)")
    return problems


def _merge(default: Any, value: Any) -> Any:
    if isinstance(default, Mapping) and isinstance(value, Mapping):
        return {**default, **{k: _merge(default.get(k), v) for k, v in value.items()}}
    return value


def pillar_valid(name: str = "cjdns", defaults: dict | None = None) -> dict:
    """Check pillar ``name`` against the formula's defaults: unknown keys (with a did-you-mean),
    types, qube names, labels, ports, install method, peers. Never changes anything.
    In dom0 it also checks that sys-cjdns's netvm exists.
    """
    ret = _ret(name)
    defaults = defaults or {}
    pillar = _pillar(name, {})
    problems = _shape_problems(pillar, defaults, name)
    try:
        if defaults:
            problems += _value_problems(_merge(defaults, _well_typed(pillar, defaults, name)))
    except (KeyError, TypeError) as error:  # never the error's text: it may quote a value
        problems.append(f"{name}: {type(error).__name__} while checking values")
    if not problems and __grains__.get("id") == "dom0" and "qvm.check" in __salt__:
        cfg = _merge(defaults, pillar)["qubes"]
        # Clients are checked by cjdns.qubes_owned: an uninstall must go on without them.
        for qube, why in [(cfg["proxy_netvm"], "cjdns.qubes.proxy_netvm")]:
            if not __salt__["qvm.check"](qube):
                problems.append(f"{why}: qube {qube!r} does not exist")
    if problems:
        return _fail(ret, "pillar " + name + " is not usable:\n" + "\n".join(f"- {p}" for p in problems))
    ret["comment"] = f"pillar {name} is valid"
    return ret


# --------------------------------------------------------------------------------------
# Health, usable as a requisite
# --------------------------------------------------------------------------------------


def healthy(name: str, min_established: int | None = None, timeout: float = 2.0) -> dict:
    """Succeeds when the node at config ``name`` is healthy (``cjdns.health``): its fc address
    is up, the admin API answers, at least ``min_established`` peers are ESTABLISHED.
    Changes nothing; other states can ``require`` it.
    """
    ret = _ret(name)
    try:
        report = __salt__["cjdns.health"](name, min_established, timeout)
    except Exception as error:  # CommandExecutionError from the module: config unreadable etc.
        return _fail(ret, str(error))
    status = report["status"]
    if report["healthy"]:
        ret["comment"] = (f"cjdns node {status['ipv6']} is healthy: address up on {', '.join(status['address_on'])}, "
                          f"{status['peers'].get('established', 0)} peers established")
        return ret
    ret["comment"] = "cjdns node is not healthy: " + "; ".join(report["problems"])
    ret["result"] = None if _test() else False
    return ret


# --------------------------------------------------------------------------------------
# Coming from the Qubes manual: bind the config directory now, adopt the old file, retire
# the single-file bind
# --------------------------------------------------------------------------------------


def _mounted(path: str) -> bool:
    cj = _cj()
    return os.path.abspath(path) in cj._mount_points()


def bound(name: str, rw_root: str = "/rw/bind-dirs") -> dict:
    """The directory ``name`` is bind-mounted from its persistent copy under ``rw_root`` now,
    as Qubes' bind-dirs does at boot, so what the formula writes survives a reboot even when
    the template's bind-dirs entry is newer than the running qube.
    """
    ret = _ret(name)
    rw = os.path.join(rw_root, name.lstrip("/"))
    for path in (name, rw):
        if os.path.islink(path):
            return _fail(ret, f"{path}: is a symbolic link (to {os.readlink(path)}); refusing to bind-mount "
                              "through it, make it a real directory owned by root")
    if _mounted(name):
        ret["comment"] = f"{name} is bind-mounted (persistent in {rw})"
        return ret
    if not os.path.isdir(os.path.dirname(rw_root.rstrip("/"))):
        return _fail(ret, f"{os.path.dirname(rw_root.rstrip('/'))} does not exist: this is not a Qubes AppVM with a private volume")
    ret["changes"] = {"bind": {"old": None, "new": rw}}
    if _test():
        ret.update(result=None, comment=f"would bind-mount {rw} on {name} (as bind-dirs does at boot)")
        return ret
    try:
        if not os.path.isdir(rw):
            os.makedirs(os.path.dirname(rw), mode=0o755, exist_ok=True)
            os.makedirs(rw, mode=0o700)
            if os.path.isdir(name):
                subprocess.run(["cp", "-a", "--", f"{name}/.", rw], check=True, capture_output=True)
        os.makedirs(name, mode=0o700, exist_ok=True)
        subprocess.run(["mount", "--bind", "--", rw, name], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        return _fail(ret, f"could not bind-mount {rw} on {name}: {detail.strip()}")
    ret["comment"] = f"bind-mounted {rw} on {name} (as bind-dirs does at boot)"
    return ret


def _regular_file(path: str) -> bool:
    """A regular file itself (never through a symbolic link)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _interrupted_adoption(ret: dict, name: str, found: list) -> None:
    """``name`` is adopted already. A source still holding exactly its bytes is what an
    adoption stopped between writing ``name`` and removing the source left: it goes (another
    copy of the key). Any other source is the user's and stays."""
    with open(name, "rb") as handle:
        adopted_bytes = handle.read()
    leftovers = []
    for path in found:
        if _regular_file(path) and not _mounted(path):
            with open(path, "rb") as handle:
                if handle.read() == adopted_bytes:
                    leftovers.append(path)
    others = [p for p in found if p not in leftovers]
    ret["comment"] = f"{name} exists" + (f"; {', '.join(others)} left alone" if others else "")
    if not leftovers:
        return
    ret["changes"]["removed"] = leftovers
    if _test():
        ret["result"] = None
        ret["comment"] += f"; would remove {', '.join(leftovers)} (the same bytes as {name}: an interrupted adoption)"
        return
    for path in leftovers:
        os.unlink(path)
    ret["comment"] += f"; removed {', '.join(leftovers)} (the same bytes as {name}: an interrupted adoption)"


def _backup_cleanup(ret: dict, name: str, backup: str, keep_backup: bool) -> dict:
    """``name`` is adopted already: a backup holding a key goes once ``name`` is a config the
    formula can edit (kept, 0600, only with ``keep_backup``)."""
    cj = _cj()
    if not os.path.lexists(backup):
        return ret
    if keep_backup:
        mode = os.lstat(backup).st_mode
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) != 0o600:
            ret["changes"]["backup_mode"] = {"old": oct(stat.S_IMODE(mode)), "new": "0o600"}
            if _test():
                ret["result"] = None
            else:
                os.chmod(backup, 0o600)
        ret["comment"] += f"; kept the backup {backup} (keep_manual_backup), mode 0600"
        return ret
    try:
        cj._require_strict(cj.read_config(name))
    except (cj.CjdnsError, OSError) as error:
        ret["comment"] += f"; kept the backup {backup}: {name} is not a config the formula can edit yet ({error})"
        return ret
    ret["changes"]["removed"] = ret["changes"].get("removed", []) + [backup]
    if _test():
        ret.update(result=None, comment=ret["comment"] + f"; would remove the backup {backup} (a copy of the key)")
        return ret
    os.unlink(backup)
    ret["comment"] += f"; removed the backup {backup} (a copy of the key)"
    return ret


def adopted(name: str, sources: list | None = None, backup: str | None = None, keep_backup: bool = False) -> dict:
    """Adopt a config made by hand (the Qubes manual's /rw/bind-dirs/etc/cjdroute.conf) as
    ``name``: the same bytes; the old file removed only once ``name`` holds them, so no
    other copy of the private key is left. A symbolic link among ``sources`` is refused (the
    key would stay behind it), and so is a config the formula could not edit afterwards (no
    ``"version": 2``): nothing changes until it is fixed. ``keep_backup`` keeps a 0600 copy at
    ``backup``; without it, a backup left by an earlier adoption is removed.
    """
    cj = _cj()
    ret = _ret(name)
    backup = backup or f"{name}.manual-backup"
    sources = list(sources or [])
    found = [p for p in sources if os.path.lexists(p)]
    if os.path.lexists(name) or not found:
        try:
            if not os.path.lexists(name):
                ret["comment"] = "nothing to adopt"
                return ret
            _interrupted_adoption(ret, name, found)
            return _backup_cleanup(ret, name, backup, keep_backup)
        except OSError as error:
            return _fail(ret, f"{name}: {error}")
    links = [p for p in found if os.path.islink(p)]
    if links:
        return _fail(ret, f"{links[0]} is a symbolic link (to {os.readlink(links[0])}); refusing to adopt through it: "
                          "the key would stay in the file it points to. Put that file in its place "
                          "(or remove the link), then re-apply; nothing was changed")
    source = found[0]
    if not _regular_file(source):
        return _fail(ret, f"{source} is not a regular file; refusing to adopt it; nothing was changed")
    try:
        text = cj.read_text(source)
        cj._require_strict(cj.parse(text))
    except cj.ConfigSyntaxError as error:
        return _fail(ret, f"{source}:{error.line}:{error.column}: {error.reason} (fix it, then re-apply to adopt it; "
                          "nothing was changed)")
    except (cj.CjdnsError, OSError) as error:
        return _fail(ret, f"{source}: {error}")
    legacy = [p for p in sources if p != source and (os.path.lexists(p) or _mounted(p))]
    # Remember the template's key found beneath the manual's single-file bind before that bind
    # goes: cjdns.identity must still recognise it later in this run.
    for path in legacy:
        private = cj.private_key_in(cj.file_beneath_mount(path) or "") if _mounted(path) else None
        if private:
            try:
                public = cj.public_key(private)
            except cj.KeyFormatError:
                continue
            except cj.CryptographyMissing as error:
                if not _test():
                    return _fail(ret, str(error))
                continue
            __context__.setdefault("cjdns.template_public_keys", {})[public] = path
    kept = [backup] if keep_backup else []
    stale = [backup] if os.path.lexists(backup) and not keep_backup else []
    ret["changes"] = {"adopted": {"old": source, "new": name}, "removed": [source, *legacy, *stale]}
    if kept:
        ret["changes"]["backup"] = backup
    if _test():
        __context__.setdefault("cjdns.preview", {})[os.path.abspath(name)] = text
        ret.update(result=None, comment=f"would adopt {source} as {name}" + (f" (backup {backup})" if kept else "")
                   + f" and remove {', '.join([source, *legacy, *stale])}")
        return ret
    data = text.encode("utf-8", "surrogateescape")
    try:
        os.makedirs(os.path.dirname(name), mode=0o700, exist_ok=True)
        cj.atomic_write(name, data, 0o600)
        with open(name, "rb") as handle:
            if handle.read() != data:
                raise OSError(f"{name} does not hold what was written; {source} kept")
        for path in kept:
            cj.atomic_write(path, data, 0o600)
        os.unlink(source)
        for path in legacy:
            # The manual's single-file bind: unmount it (the file under it, in this qube's
            # volatile root, is the template's old copy) and remove what is left.
            while _mounted(path):
                subprocess.run(["umount", "--lazy", "--", path], check=True, capture_output=True)
            if os.path.lexists(path):
                os.unlink(path)
        for path in stale:
            os.unlink(path)
    except (OSError, subprocess.CalledProcessError) as error:
        return _fail(ret, f"adopting {source}: {error}")
    ret["comment"] = (f"adopted {source} as {name}" + (f", kept a 0600 backup in {backup}" if kept else "")
                      + f", removed {', '.join([source, *legacy, *stale])}")
    return ret


def bind_entry_absent(name: str, path: str) -> dict:
    """No bind-dirs file under ``name`` (a file, or a directory of *.conf) binds ``path``.
    A file that binds only ``path`` is removed; otherwise just that entry's line goes.
    """
    import re

    ret = _ret(name)
    files = [name] if os.path.isfile(name) else sorted(
        os.path.join(name, f) for f in (os.listdir(name) if os.path.isdir(name) else []) if f.endswith(".conf"))
    entry = re.compile(r"""^\s*binds\+=\(\s*['"]?""" + re.escape(path) + r"""['"]?\s*\)\s*$""")
    plan: dict = {}
    for conf in files:
        with open(conf, encoding="utf-8") as handle:
            lines = handle.read().splitlines(keepends=True)
        kept = [line for line in lines if not entry.match(line)]
        if len(kept) == len(lines):
            continue
        meaningful = [line for line in kept if line.strip() and not line.lstrip().startswith("#")]
        plan[conf] = None if not meaningful else "".join(kept)
    if not plan:
        ret["comment"] = f"no bind-dirs entry for {path}"
        return ret
    ret["changes"] = {"removed": sorted(c for c, t in plan.items() if t is None),
                      "edited": sorted(c for c, t in plan.items() if t is not None)}
    ret["changes"] = {k: v for k, v in ret["changes"].items() if v}
    what = f"the single-file bind-dirs entry for {path} (a file bound alone cannot be replaced safely; the formula binds its directory)"
    if _test():
        ret.update(result=None, comment=f"would retire {what}")
        return ret
    try:
        for conf, text in plan.items():
            if text is None:
                os.unlink(conf)
            else:
                _cj().atomic_write(conf, text.encode(), 0o644)
    except OSError as error:
        return _fail(ret, f"retiring the bind-dirs entry for {path}: {error}")
    ret["comment"] = f"retired {what}: {', '.join(sorted(plan))}"
    return ret


# --------------------------------------------------------------------------------------
# Peers and passwords applied to the running node; a restart only when the API cannot
# --------------------------------------------------------------------------------------
# cjdns.live compares the running node with the config file (the truth: what a restart
# loads) and makes only the difference through the admin API. What it cannot change live
# (the key, the admin API, the UDP binds, the TUN device, every other setting) it hands to
# cjdns.restart_needed, the one state the service watches: it has changes only then, so the
# service restarts only then, and says why.

LIVE_CONTEXT = "cjdns.restart"


def _live_record_path(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(name)), _cj().LIVE_RECORD)


def _read_live_record(name: str) -> dict:
    return _read_json_record(_live_record_path(name))


def _write_live_record(name: str, record: dict, old: dict) -> None:
    """Kept beside the config (0600): fingerprints of credentials, never a password."""
    if _test() or record == old:
        return
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    _cj().atomic_write(_live_record_path(name), data, 0o600)


def _process_alive(process: Any) -> bool:
    if not isinstance(process, list) or len(process) != 2 or process[0] is None:
        return False
    return _cj().process_start(process[0]) == process[1]


def _service_active(service: str) -> bool:
    if not service or "service.status" not in __salt__:
        return False
    try:
        return bool(__salt__["service.status"](service))
    except Exception:  # no init system here (a container without systemd): cannot tell
        return False


def _main_pid(service: str) -> int | None:
    """The unit's MainPID, for a cjdroute whose Core_pid answer is not {"pid": N} (its reply
    was not recorded); any process that stays the same until a restart identifies the node."""
    if not service or "service.show" not in __salt__:
        return None
    try:
        pid = int(__salt__["service.show"](service).get("MainPID", 0))
    except Exception:  # no systemd here
        return None
    return pid or None


def _peer_label(key: str, data: dict, running: dict) -> str:
    peer = _cj()._live_peers(data).get(key)
    if peer:
        return f"{peer['endpoint']} ({peer['peerName']})" if peer.get("peerName") else peer["endpoint"]
    seen = next((p for p in running.get("peers", []) if p["public_key"] == key), None)
    if seen and seen.get("incoming"):
        return f"incoming {seen.get('ipv6')} ({seen.get('lladdr')})"
    if seen:  # a peer the file no longer has: as peerStats shows it (user = its peerName)
        return f"{seen.get('lladdr')} ({seen['user']})" if seen.get("user") else str(seen.get("lladdr"))
    return key


def _live_changes(plan: Any, data: dict, running: dict) -> dict:
    label = lambda key: _peer_label(key, data, running)  # noqa: E731
    users = {
        "added": [u for u in plan.add_users if u not in plan.changed_users],
        "changed": list(plan.changed_users),
        "removed": [u for u in plan.remove_users if u not in plan.changed_users],
    }
    peers = {
        "connected": [label(k) for k in plan.connect if k not in plan.reconnect],
        "reconnected": [label(k) for k in plan.reconnect],
        "disconnected": [label(k) for k in plan.disconnect if k not in plan.reconnect],
        "re-authenticated": [label(k) for k in plan.reset_incoming],
    }
    changes = {}
    if any(users.values()):
        changes["authorizedPasswords"] = {k: v for k, v in users.items() if v}
    if any(peers.values()):
        changes["peers"] = {k: v for k, v in peers.items() if v}
    return changes


def _summary(changes: dict) -> str:
    parts = [f"{len(v)} {what} {k}" for what, group in (("authorized password(s)", changes.get("authorizedPasswords", {})),
                                                       ("peer(s)", changes.get("peers", {})))
             for k, v in group.items()]
    return ", ".join(parts)


def _ask_restart(ret: dict, name: str, reason: str, pending: dict, record: dict) -> dict:
    __context__.setdefault(LIVE_CONTEXT, {})[os.path.abspath(name)] = reason
    ret["changes"]["restart"] = reason
    if _test():
        ret["result"] = None
        ret["comment"] = f"cjdroute would restart: {reason} (test mode)"
    else:
        ret["comment"] = f"cjdroute restarts: {reason}"
    _write_live_record(name, pending, record)
    return ret


def live(name: str, service: str = "", timeout: float = 2.0, wait: float = 1.0) -> dict:
    """Bring the running cjdroute to its config file ``name`` without a restart where the
    admin API can: authorized passwords added, changed (remove, then add) and removed
    (remove, then the peer using them is disconnected); peers connected, reconnected with
    new credentials (disconnect, then beginConnection) and disconnected.

    When something differs that only a restart applies, or an admin call fails half-way, it
    changes nothing more and asks ``cjdns.restart_needed`` for a restart, with the reason.
    A node that is not running gets nothing; the service state starts it from the file.

    service
        The systemd unit, to tell a node whose admin API moved from one that is not running.
    """
    ret = _ret(name)
    cj = _cj()
    try:
        text = _existing(name)
        doc = cj.parse(text)
        cj._require_strict(doc)
        data = doc.data()
        on_disk = cj.read_text(name) if os.path.exists(name) else None
        mtime = os.stat(name).st_mtime if on_disk == text else time.time()
        record = _read_live_record(name)
        salt = record.get("salt") or os.urandom(16).hex()
        wanted = cj.live_view(data, salt)
        client = cj._admin_client(data, name, timeout)
    except cj.ConfigSyntaxError as error:
        return _fail(ret, f"{name}:{error.line}:{error.column}: {error.reason}")
    except Exception as error:  # CjdnsError, OSError, or Salt's CommandExecutionError (no admin.bind)
        return _fail(ret, f"{name}: {error}")
    pending = {"salt": salt, "view": wanted, "process": None, "replaced": None}
    try:
        running = cj.read_running(client)
    except cj.AdminAuthError:
        return _ask_restart(ret, name, "the running cjdroute refuses the file's admin password (admin.password changed)", pending, record)
    except cj.AdminTimeout:
        if _process_alive(record.get("process")) or _service_active(service):
            return _ask_restart(ret, name, f"the admin API does not answer at {client.address} while cjdroute runs (admin.bind changed)", pending, record)
        ret["comment"] = "cjdroute is not running: nothing to apply live; the service state starts it from the file"
        _write_live_record(name, pending, record)
        return ret
    except cj.AdminError as error:
        return _ask_restart(ret, name, f"the admin API cannot be read ({error})", pending, record)
    if running["pid"] is None:
        running["pid"] = _main_pid(service)
    start = cj.process_start(running["pid"])
    me = [running["pid"], start]
    pending["replaced"] = me
    base, why = cj.live_baseline(record, running["pid"], start, wanted, mtime)
    plan = cj.plan_live(wanted, base, running, why)
    if plan.restart:
        return _ask_restart(ret, name, "; ".join(plan.restart), pending, record)
    done = {"salt": salt, "view": wanted, "process": me, "replaced": None}
    if plan.empty():
        ret["comment"] = "the running cjdroute matches the config file"
        _write_live_record(name, done, record)
        return ret
    changes = _live_changes(plan, data, running)
    ret["changes"] = changes
    if _test():
        ret["result"] = None
        ret["comment"] = f"would change live, without a restart: {_summary(changes)} (test mode)"
        return ret
    try:
        states = cj.apply_live(client, data, plan, wait=float(wait))
    except cj.LiveApplyError as error:
        ret["changes"] = {"live": error.done} if error.done else {}
        live_part = f"live before the failure: {'; '.join(error.done)}" if error.done else "nothing was changed live"
        return _ask_restart(ret, name, f"an admin call failed half-way ({error}); {live_part}; restarting so the node runs exactly the file", pending, record)
    except cj.CjdnsError as error:  # refused before any call (a peer without password)
        return _fail(ret, f"{name}: {error}")
    _write_live_record(name, done, record)
    comment = f"changed live, without a restart: {_summary(changes)}"
    if states:
        comment += "; peerStats: " + ", ".join(f"{_peer_label(k, data, running)} {s}" for k, s in sorted(states.items()))
    ret["comment"] = comment
    return ret


def restart_needed(name: str) -> dict:
    """Has changes only when ``cjdns.live`` found that the node at config ``name`` needs a
    restart (the change says why). The service state watches this, not the config states."""
    ret = _ret(name)
    reason = __context__.get(LIVE_CONTEXT, {}).get(os.path.abspath(name))
    if not reason:
        ret["comment"] = "no restart needed: the running cjdroute has what the file says, or takes it live"
        return ret
    ret["changes"] = {"restart": reason}
    ret["result"] = None if _test() else True
    ret["comment"] = f"cjdroute restart {'predicted' if _test() else 'requested'}: {reason}"
    return ret


# --------------------------------------------------------------------------------------
# The fail-closed firewall of sys-cjdns, as the running system has it
# --------------------------------------------------------------------------------------


def firewall_loaded(name: str, udp_port: int, tun_device: str = "tun0", blackhole_metric: int = 500) -> dict:
    """The formula's nftables chains, the jumps to them from Qubes' chains and the blackhole
    route for fc00::/8 are in the running system, as the script ``name`` loads them
    (qubes-firewall runs it at every start). Every apply compares the live ruleset and
    routes with what the script makes; whatever is missing or different is reported in
    ``changes`` and the script is run, then the check is repeated: still missing is
    ``result: False``, so cjdroute (which requires this state) is not started unguarded.
    """
    ret = _ret(name)
    check = __salt__["cjdns.live_firewall_drift"]
    try:
        missing = check(int(udp_port), tun_device, int(blackhole_metric))
    except Exception as error:  # CjdnsError or CommandExecutionError: nft or ip missing
        return _fail(ret, f"could not read the live firewall: {error}")
    if not missing:
        ret["comment"] = f"the firewall rules of {name} and the blackhole route are in place"
        return ret
    ret["changes"] = {"missing": missing}
    if _test():
        ret.update(result=None, comment=f"would run {name} to load what is missing")
        return ret
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    try:
        proc = subprocess.run([name], capture_output=True, text=True, timeout=60, env=env, check=False)
        output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
    except (OSError, subprocess.TimeoutExpired) as error:
        output = str(error)
    try:
        still = check(int(udp_port), tun_device, int(blackhole_metric))
    except Exception as error:
        return _fail(ret, f"could not read the live firewall: {error}")
    if still:
        ret.update(result=False, comment=f"ran {name}, but the live system still lacks: {'; '.join(still)}"
                                         + (f"\n{output}" if output else ""))
        return ret
    ret["comment"] = f"ran {name}: loaded {'; '.join(missing)}"
    return ret


# --------------------------------------------------------------------------------------
# Fleet mode: the node's card in the master's mine, and the event that brings neighbours along
# --------------------------------------------------------------------------------------

CARD_FUNCTION = "cjdns.card"
CARD_EVENT = "cjdns/fleet/card"


def _card_record_path(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(name)), _cj().CARD_RECORD)


def _card_summary(card: dict) -> dict | None:
    return {k: card[k] for k in ("publicKey", "endpoints", "epoch") if k in card} or None


def _stored_card(node_id: str) -> Any:
    """The card the mine holds for this minion (the master's; salt-call --local: its own)."""
    found = __salt__["mine.get"](node_id, CARD_FUNCTION, tgt_type="list")
    return found.get(node_id) if isinstance(found, dict) else None


def _send_card(name: str, members: list, fingerprint: str) -> str | None:
    """mine.send then the event; the reason when either fails. The master stores mine data
    after mine.send returns and says nothing when it has: the reactor waits for it."""
    sent = __salt__["mine.send"](CARD_FUNCTION, mine_function=CARD_FUNCTION, path=name,
                                 allow_tgt=list(members), allow_tgt_type="list")
    if sent is not True:
        return f"mine.send {CARD_FUNCTION} failed (the minion log says why)"
    if _masterless():
        return None
    if not __salt__["event.send"](CARD_EVENT, {"fingerprint": fingerprint}):
        return f"the event {CARD_EVENT} could not be sent"
    return None


def _masterless() -> bool:
    """salt-call --local (or salt-ssh): the mine is this minion's own, and no master hears events."""
    return __opts__.get("file_client") == "local" or bool(__opts__.get("local"))


def card_published(name: str) -> dict:
    """Fleet mode: publish this node's card (``cjdns.card``: public key, address, endpoints,
    epoch) to the master's mine and announce it with the event ``cjdns/fleet/card`` (its body:
    the card's fingerprint, which the master's orchestration waits for), whenever the card the
    mine holds differs (a new key or endpoints, or a master that lost it). Only fleet
    members (pillar ``cjdns:fleet:member``, set by the fleet ext_pillar) publish; the mine
    entry may be read only by the fleet's members (``allow_tgt``).
    """
    ret = _ret(name)
    if not _pillar("cjdns:fleet:member", ""):
        ret["comment"] = "not a fleet member (no pillar cjdns:fleet:member): no card to publish"
        return ret

    def body(ret: dict) -> dict:
        cj = _cj()
        card = cj.card_from(name, cj.loads(_existing(name)))
        # What the mine holds, not what this node sent last: a master that lost it (a key
        # deleted and accepted again, cjdns_fleet.forget, a new master) gets it again.
        stored = _stored_card(card["id"])
        if stored == card:
            ret["comment"] = f"card of {card['publicKey']} in the mine, unchanged"
            return ret
        before = stored if isinstance(stored, dict) else {}
        ret["changes"] = {"card": {"old": _card_summary(before), "new": _card_summary(card)}}
        if _test():
            ret.update(result=None, comment=f"card would be sent to the mine and announced ({CARD_EVENT})")
            return ret
        problem = _send_card(name, _pillar("cjdns:fleet:members", []) or [card["id"]], cj.card_fingerprint(card))
        if problem:
            return _fail(ret, problem)
        cj.atomic_write(_card_record_path(name), (json.dumps(card, indent=2, sort_keys=True) + "\n").encode(), 0o600)
        ret["comment"] = ("masterless: card kept in this minion's own mine, no event" if _masterless()
                          else f"card sent to the mine and announced ({CARD_EVENT})")
        return ret

    return _guarded(name, body)
