"""Apply to the test venv's Salt the two fixes Qubes builds its Salt 3007.13 with.

Without them, salt-ssh into a Python 3.13 target (a Debian 13 qube) delivers no salt:// file:

- salt.utils.url.create: Python 3.13's urlunparse writes a relative path as "file:path", not
  "file:///path", so cutting eight characters turns "top.sls" into ".sls"
  (saltstack/salt#66898; Qubes' urllib.patch).
- salt.config.insert_system_path put the extension directories first on sys.path, so a
  module there named like a standard one (configparser) hides it (saltstack/salt#68755;
  Qubes' 0001-Do-not-insert-local-paths-before-standard-library-pa.patch).

Salt 3006.29 and 3008.4 already carry both fixes. Any version whose files still contain the
unfixed code must be listed in NEEDS_PATCHES; the tool refuses to pass over it silently.

    python tests/support/patch_salt.py            # patch the Salt this interpreter imports
    python tests/support/patch_salt.py --check    # exit 1 unless fully patched (or not needed)
    python tests/support/patch_salt.py --salt-dir DIR --version 3007.13
"""

import argparse
import importlib.metadata
import importlib.util
import pathlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    """One exact, unique text replacement in one file under the salt package."""

    path: str
    old: str
    new: str


URL_IMPORT = Edit(
    "utils/url.py",
    "from urllib.parse import urlparse, urlunparse\n",
    "from urllib.parse import urlparse, urlunparse, urlunsplit\n",
)
URL_CREATE = Edit(
    "utils/url.py",
    '    url = salt.utils.data.decode(urlunparse(("file", "", path, "", query, "")))\n'
    '    return "salt://{}".format(url[len("file:///") :])\n',
    "    # No scheme, so no prefix to cut: Python 3.13 writes relative file: URLs differently.\n"
    '    return "salt://" + salt.utils.data.decode(urlunsplit(("", "", path, query, "")))\n',
)
SYS_PATH = Edit(
    "config/__init__.py",
    '            sys.path.insert(0, path_options["path"])\n',
    '            sys.path.append(path_options["path"])\n',
)

NEEDS_PATCHES: dict[str, tuple[Edit, ...]] = {
    "3007.13": (URL_IMPORT, URL_CREATE, SYS_PATH),
}
# The unfixed code, looked for in versions not listed above.
UNFIXED_MARKERS: tuple[Edit, ...] = (URL_CREATE, SYS_PATH)


class PatchError(Exception):
    pass


def installed_salt() -> tuple[pathlib.Path, str]:
    spec = importlib.util.find_spec("salt")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("salt is not installed for this interpreter")
    return pathlib.Path(next(iter(spec.submodule_search_locations))), importlib.metadata.version("salt")


def edit_state(text: str, edit: Edit, file: pathlib.Path) -> str:
    """'applied' or 'pending'; raises when the file holds neither text exactly once."""
    if text.count(edit.new) == 1 and edit.old not in text:
        return "applied"
    if text.count(edit.old) == 1:
        return "pending"
    raise PatchError(f"{file}: expected exactly one of these texts, found neither:\n"
                     f"--- unpatched:\n{edit.old}--- patched:\n{edit.new}---")


def run(salt_dir: pathlib.Path, version: str, check: bool) -> list[str]:
    """Patch (or with check, inspect) salt_dir; returns what it did, one line each."""
    edits = NEEDS_PATCHES.get(version)
    if edits is None:
        for marker in UNFIXED_MARKERS:
            file = salt_dir / marker.path
            if marker.old in file.read_text(encoding="utf-8"):
                raise PatchError(f"{file}: Salt {version} still has the unfixed code below and "
                                 f"is not listed in NEEDS_PATCHES:\n{marker.old}")
        return [f"Salt {version}: no patches needed (fixed upstream)"]
    report = []
    pending: dict[pathlib.Path, str] = {}
    for edit in edits:
        file = salt_dir / edit.path
        text = pending.get(file, file.read_text(encoding="utf-8"))
        if edit_state(text, edit, file) == "applied":
            report.append(f"{file}: already patched ({edit.new.strip().splitlines()[-1].strip()})")
            continue
        if check:
            raise PatchError(f"{file}: not patched, still has:\n{edit.old}")
        pending[file] = text.replace(edit.old, edit.new, 1)
        report.append(f"{file}: patched ({edit.new.strip().splitlines()[-1].strip()})")
    # Every edit is checked before any file is written, so a refusal leaves Salt untouched.
    for file, text in pending.items():
        file.write_text(text, encoding="utf-8")
    if not pending:
        report.append(f"Salt {version}: nothing to change, all {len(edits)} edits already applied")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; fail unless patched")
    parser.add_argument("--salt-dir", type=pathlib.Path, help="a salt package directory (default: installed)")
    parser.add_argument("--version", help="the Salt version of --salt-dir")
    args = parser.parse_args(argv)
    if (args.salt_dir is None) != (args.version is None):
        parser.error("--salt-dir and --version go together")
    try:
        if args.salt_dir is None:
            salt_dir, version = installed_salt()
        else:
            salt_dir, version = args.salt_dir, args.version
        for line in run(salt_dir, version, args.check):
            print(line)
    except (PatchError, OSError) as exc:
        print(f"patch_salt: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
