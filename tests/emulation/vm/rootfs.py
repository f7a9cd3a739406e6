"""The Debian 13 root filesystem of the emulated qubes, and their local apt repository.

`python3 tests/emulation/vm/rootfs.py` (root) builds, once, into the cache directory
(`$CJDNS_TEST_CACHE`, default /var/cache/cjdns-formula-tests):

* `rootfs-<key>/`: debootstrap trixie, variant minbase, plus the Debian packages of a Qubes
  minimal template (template-packages.txt: no python3-cryptography) and our emulated
  `qubes-core-agent`, from the Debian archive apt is configured with on this machine. Its apt
  sources name only the local repository.
* `repo-<key>/`: the local apt repository the qubes use (they have no network): the emulated
  Qubes packages built here with dpkg-deb (agent/), and the Debian packages of
  repo-packages.txt with their dependencies, downloaded when the root filesystem is built.

The debootstrap and the downloads are kept in `base-<key>/`, keyed by the package lists alone;
the rest is keyed by everything that goes into it, so a change to an emulated package rebuilds
in seconds and a change to a package list starts from debootstrap; older builds are removed. A lock file serialises concurrent
builders (pytest workers, `make demo` and `make test` at once).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT = HERE / "agent"
QUBES_NFT = HERE.parent / "qubes_nft" / "base.nft"
CACHE = Path(os.environ.get("CJDNS_TEST_CACHE", "/var/cache/cjdns-formula-tests"))
SUITE = "trixie"
REPO_IN_QUBE = "/var/lib/qubes-emulation/repo"
# Directories the emulated qubes-core-agent package owns (git keeps no empty directory).
AGENT_DIRS = {
    "qubes-core-agent": ("rw", "etc/qubes", "etc/qubes/autostart", "var/lib/qubes",
                         "usr/share/qubes", "usr/lib/qubes-bind-dirs.d"),
    "qubes-core-agent-networking": ("usr/lib/qubes",),
}
APT_SOURCE_DIRS = ("/etc/apt/sources.list.d",)
APT_SOURCE_FILES = ("/etc/apt/sources.list",)


class BuildError(Exception):
    """The root filesystem or the repository could not be built."""


def package_list(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _digest(paths: list[Path], seed: str = "") -> str:
    digest = hashlib.sha256(seed.encode())
    for path in paths:
        digest.update(str(path.relative_to(HERE.parent)).encode() + b"\0")
        digest.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
    return digest.hexdigest()[:16]


def base_key() -> str:
    return _digest([HERE / "template-packages.txt", HERE / "repo-packages.txt"], SUITE)


def cache_key() -> str:
    agent = sorted(p for p in AGENT.rglob("*") if p.is_file() or p.is_symlink())
    return _digest([Path(__file__), QUBES_NFT, *agent], base_key())


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (main archive, not security)."""
    if os.environ.get("CJDNS_TEST_MIRROR"):
        return os.environ["CJDNS_TEST_MIRROR"]
    texts = []
    for directory in APT_SOURCE_DIRS:
        if os.path.isdir(directory):
            texts += [Path(directory, f).read_text() for f in sorted(os.listdir(directory))
                      if f.endswith((".sources", ".list"))]
    texts += [Path(f).read_text() for f in APT_SOURCE_FILES if os.path.isfile(f)]
    for text in texts:
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if re.search(r"/debian/?$", uri):
                return uri.rstrip("/")
    raise BuildError("no Debian archive found in this machine's apt sources (set CJDNS_TEST_MIRROR)")


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise BuildError(f"{' '.join(argv[:6])}… failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def build_agent_debs(out: Path) -> list[Path]:
    """dpkg-deb of every emulated Qubes package under agent/ (owned by root, as dpkg installs it)."""
    debs = []
    for source in sorted(p for p in AGENT.iterdir() if (p / "DEBIAN" / "control").is_file()):
        staging = out / f".{source.name}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging, symlinks=True)
        for sub in AGENT_DIRS.get(source.name, ()):
            (staging / sub).mkdir(parents=True, exist_ok=True)
        if source.name == "qubes-core-agent-networking":
            shutil.copy(QUBES_NFT, staging / "usr/lib/qubes/qubes-nft.conf")
        for path in staging.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        deb = out / f"{source.name}.deb"
        run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(staging), str(deb)])
        shutil.rmtree(staging)
        debs.append(deb)
    return debs


def write_index(repo: Path) -> None:
    """Packages and Release of a flat repository (`deb [trusted=yes] file:REPO ./`)."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        control = run(["dpkg-deb", "-f", str(deb)]).stdout.rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Release").write_text(
        "Origin: cjdns-formula tests\nLabel: qubes-emulation\nSuite: local\nCodename: local\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\n"
        "Architectures: all amd64\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")


def chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8", "HOME": "/root"}
    return run(["chroot", str(root), *argv], env=env)


def build_base(base: Path) -> None:
    """debootstrap, and the Debian packages of the repository in base/debs."""
    root, debs = base / "rootfs", base / "debs"
    include = ",".join(package_list("template-packages.txt"))
    run(["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(root), debian_mirror()])
    # Downloaded by the new system's own apt, so that their dependencies are resolved against
    # what a minimal template has.
    chroot(root, "apt-get", "clean")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    chroot(root, "apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends",
           *package_list("repo-packages.txt"))
    debs.mkdir()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        shutil.move(str(deb), debs / deb.name)
    (root / "etc/resolv.conf").write_text("")


def build(base: Path, root: Path, repo: Path) -> None:
    run(["cp", "-a", "--reflink=auto", str(base / "rootfs"), str(root)])
    shutil.copytree(base / "debs", repo)
    build_agent_debs(repo)
    write_index(repo)
    # The template's Qubes agent, from the local repository, as the qubes will see it.
    for path in APT_SOURCE_FILES:
        (root / path.lstrip("/")).unlink(missing_ok=True)
    sources = root / "etc/apt/sources.list.d"
    for path in sources.iterdir():
        path.unlink()
    (sources / "qubes-emulation.list").write_text(f"deb [trusted=yes] file:{REPO_IN_QUBE} ./\n")
    mounted = root / REPO_IN_QUBE.lstrip("/")
    mounted.mkdir(parents=True)
    run(["mount", "--bind", "-o", "ro", str(repo), str(mounted)])
    try:
        chroot(root, "apt-get", "update", "-q")
        chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", "qubes-core-agent")
        chroot(root, "apt-get", "clean")
    finally:
        run(["umount", str(mounted)])
    # This machine's /dev/null may lack write bits for others, and systemd-nspawn copies its
    # mode: make it the usual 0666 at boot, as every Debian system has it.
    (root / "etc/tmpfiles.d/qubes-emulation-dev-null.conf").write_text("z /dev/null 0666 - - -\n")
    # The hostname is the qube's name, set by qubes-sysinit from QubesDB (as Qubes does).
    (root / "etc/hostname").unlink(missing_ok=True)


def ensure() -> tuple[Path, Path]:
    """(root filesystem, repository) for this checkout; builds them if needed (root only)."""
    key = cache_key()
    root, repo = CACHE / f"rootfs-{key}", CACHE / f"repo-{key}"
    if (root / ".complete").exists() and (repo / "Packages").exists():
        return root, repo
    if os.geteuid() != 0:
        raise BuildError("building the emulated qubes' root filesystem needs root (debootstrap)")
    for tool in ("debootstrap", "dpkg-deb", "systemd-nspawn"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is missing: apt-get install debootstrap systemd-container")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return root, repo
        started = time.monotonic()
        base = CACHE / f"base-{base_key()}"
        keep = {base.name, root.name, repo.name}
        for old in CACHE.iterdir():
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        if not (base / ".complete").exists():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir()
            build_base(base)
            (base / ".complete").touch()
        work = CACHE / f"tmp-{key}"
        work.mkdir()
        build(base, work / "rootfs", work / "repo")
        (work / "rootfs").rename(root)
        (work / "repo").rename(repo)
        work.rmdir()
        (root / ".complete").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    return root, repo


if __name__ == "__main__":
    try:
        built = ensure()
    except BuildError as exc:
        sys.exit(f"emulated qubes: {exc}")
    print(f"root filesystem {built[0]}\nrepository      {built[1]}")
