"""Ours: this repository's package, measured as a user gets it (installed non-editable
from the working tree into .cache/ours-venv), or with --no-install from the current
interpreter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from . import CACHE, LOOPBACK_CASES, OURS_STAMP, OURS_VENV, REPO, SCRIPT
from .measure import free_port, wait_listening
from .tools import RelaySet, Tool, clean_env, ensure_venv, isolated_env, venv_lock

if TYPE_CHECKING:
    from .cases import Bench


def _our_cli() -> list[str]:
    script = Path(sys.executable).parent / "p2p-copy"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "p2p_copy"]


def git_short_hash() -> str:
    """The checked-out commit (read from .git without running git), or ""."""
    try:
        git = REPO / ".git"
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = (REPO / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:10]
        ref = head.split(":", 1)[1].strip()
        if (git / "commondir").is_file():  # a worktree's branches live in the main .git
            git = (git / (git / "commondir").read_text().strip()).resolve()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()[:10]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:10]
    except (OSError, IndexError):
        pass
    return ""


def source_digest(tree: Path) -> str:
    """SHA-256 over pyproject.toml and every file under p2p_copy/ (names and contents;
    bytecode caches left out)."""
    h = hashlib.sha256()
    files = [tree / "pyproject.toml", *sorted(
        f for f in (tree / "p2p_copy").rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc")]
    for f in files:
        h.update(f.relative_to(tree).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def snapshot_tree(dest: Path) -> Path:
    """A copy of what the package is built from (pyproject.toml, README.md, p2p_copy/), so
    that pip builds from a fixed snapshot and writes no build/ into the working tree."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "p2p_copy", dest / "p2p_copy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _pip(python: Path, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", *args], capture_output=True, text=True,
        cwd=CACHE, env=isolated_env(Path("/tmp")), timeout=timeout)


def _imports(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                          timeout=60, env=isolated_env(Path("/tmp")), cwd=CACHE).returncode == 0


def ensure_ours_venv() -> tuple[str, str]:
    """OURS_VENV holding the working tree's package, installed non-editable like a user's
    ``pip install .`` of a checkout (dependencies from the package index). Our package is
    reinstalled (--no-deps --force-reinstall) only when pyproject.toml or p2p_copy/
    changed. Returns (source digest, installed version)."""
    python = OURS_VENV / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ours-src-", dir=CACHE) as tmp:
        src = snapshot_tree(Path(tmp) / "p2p-copy")
        digest = source_digest(src)
        # With the [fast] extra (uvloop), as the README's install line has it.
        fresh = ensure_venv(OURS_VENV, [f"{src}[fast]"], "p2p-copy", None, False)
        stamp = OURS_VENV / OURS_STAMP
        with venv_lock(OURS_VENV):
            old = stamp.read_text().strip() if stamp.is_file() else ""
            if fresh or old != digest:
                if not fresh:
                    print(f"  reinstalling p2p-copy from the working tree into {OURS_VENV} ...",
                          flush=True)
                    run = _pip(python, "install", "--quiet", "--no-input", "--no-deps",
                               "--force-reinstall", str(src))
                    if run.returncode == 0 and (_pip(python, "check").returncode != 0
                                                or not _imports(python, "uvloop")):
                        # pyproject.toml gained a dependency: let pip fetch what is missing.
                        run = _pip(python, "install", "--quiet", "--no-input", f"{src}[fast]")
                    if run.returncode != 0:
                        stamp.unlink(missing_ok=True)
                        tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
                        raise RuntimeError(f"pip install {src} into {OURS_VENV} failed: {tail}")
                # pip compiles bytecode when it installs; make sure (a missing __pycache__
                # would cost every process ~0.1 s of compiling).
                for pkg in OURS_VENV.glob("lib/python*/site-packages/p2p_copy"):
                    sources = {f.stem for f in pkg.glob("*.py")}
                    compiled = {f.name.split(".")[0] for f in pkg.glob("__pycache__/*.pyc")}
                    if not sources <= compiled:
                        subprocess.run([str(python), "-m", "compileall", "-q", str(pkg)],
                                       capture_output=True, timeout=120, cwd=CACHE,
                                       env=isolated_env(Path("/tmp")))
                stamp.write_text(digest + "\n")
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('p2p-copy'))"],
        capture_output=True, text=True, timeout=60, env=isolated_env(Path("/tmp")), cwd=OURS_VENV)
    if out.returncode != 0:
        raise RuntimeError(f"{OURS_VENV}: p2p-copy not importable: {out.stderr.strip()[-300:]}")
    return digest, out.stdout.strip()


class Ours(Tool):
    name = "ours"
    label = "p2p-copy (this repo)"
    cases: tuple[str, ...] = (*LOOPBACK_CASES, "longlink")

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.venv = not bench.args.no_install
        commands = ("run-relay-server 127.0.0.1 PORT --no-tls; send ws://127.0.0.1:PORT CODE "
                    "PATH; receive ws://127.0.0.1:PORT CODE --out DIR (default settings; "
                    "pairs: N p2p_copy.send()/receive() coroutines in one sender and one "
                    "receiver process")
        if self.venv:
            self.python = str(OURS_VENV / "bin" / "python")
            self.cli = [str(OURS_VENV / "bin" / "p2p-copy")]
            commit = git_short_hash()
            try:
                digest, version = ensure_ours_venv()
                self.version = (f"p2p-copy {version} in {OURS_VENV}, installed from the working "
                                f"tree at {commit or 'an unknown commit'} (sources sha256 "
                                f"{digest[:12]})")
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.available, self.reason = False, str(exc)[-500:]
            self.description = (
                f"{self.cli[0]} {commands}, run with {self.python}); the working tree "
                f"(pyproject.toml, README.md, p2p_copy/ at {commit or '?'} plus any uncommitted "
                f"changes) installed non-editable with pip, with the [fast] extra (uvloop), into "
                f"its own virtualenv {OURS_VENV} "
                "(python -m venv, no system site-packages, dependencies from the package "
                "index, bytecode compiled by pip), reinstalled only when the sources' SHA-256 "
                "changes; run from the venv directory with PYTHONPATH etc. removed, like seed"
            )
            return
        # --no-install: the current interpreter's install (today's editable one).
        self.python = sys.executable
        self.cli = _our_cli()
        probe = subprocess.run(
            [sys.executable, "-c", "import p2p_copy; print(p2p_copy.__version__, "
             "p2p_copy.__file__)"], capture_output=True, text=True, timeout=60,
            # Not from REPO, whose p2p_copy would shadow PYTHONPATH's: from where the runs
            # start (cwd() below), so that the line names the tree they import.
            env=clean_env(Path("/tmp")), cwd=bench.tmp)
        if probe.returncode != 0:
            self.available, self.reason = False, probe.stderr.strip()[-500:]
        self.version = probe.stdout.strip() + " (--no-install: the current interpreter's install)"
        # pip compiles a package's bytecode when it installs it (the seed's and
        # magic-wormhole's venvs have theirs); an editable install under
        # PYTHONDONTWRITEBYTECODE never gets it and would compile ~0.1 s of source at
        # every start. Compile once, like an install would.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "p2p_copy")],
                       capture_output=True, timeout=120, cwd=REPO)
        self.description = (
            f"{' '.join(self.cli)} {commands}); --no-install was given, so NOT the clean "
            f"venv {OURS_VENV}: the console script next to {sys.executable} (whatever install "
            "it has, e.g. editable, with its site-packages' .pth files paid at every start), "
            "bytecode compiled with compileall"
        )

    def env(self, tmp: Path) -> dict[str, str]:
        return isolated_env(tmp) if self.venv else clean_env(tmp)

    def cwd(self, work: Path) -> Path:
        # From the venv directory, so that the repository's p2p_copy can never be imported.
        return OURS_VENV if self.venv else work

    def start_relay(self, work: Path, case: str) -> RelaySet:
        port = free_port()
        relay = self.bench.proc(
            "relay", [*self.cli, "run-relay-server", "127.0.0.1", str(port), "--no-tls",
                      "--log-level", "WARNING"], self.cwd(work), self.env(self.bench.tmp))
        wait_listening(port, [relay])
        return RelaySet(relay, ports={"relay": port}, url=f"ws://127.0.0.1:{port}")

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        # On the long link ours is the one-lane reference; ours-lanes runs the default.
        lanes = ["--lanes", "1"] if case == "longlink" and self.name == "ours" else []
        return ([*self.cli, "send", relays.url, code, str(src), *lanes],
                [*self.cli, "receive", relays.url, code, "--out", str(out), *lanes])

    def pairs_client(self) -> list[str]:
        return [self.python, SCRIPT, "_pairs-client", "--impl", "ours"]


class OursLanes(Ours):
    """Ours with its default lanes (adaptive, up to 8), on the long link only; ``ours``
    runs there with ``--lanes 1``."""

    name = "ours-lanes"
    label = "p2p-copy, adaptive lanes"
    cases = ("longlink",)

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.description = ("the same venv and commands as ours, without --lanes: lanes as "
                            "the sender's rule opens them (up to 8). Ours: " + self.description)


def _local_cluster() -> ModuleType:
    """server/local_cluster.py (not a package: loaded by path, as tests/test_cluster.py
    does), whose nginx configuration is the shipped one."""
    module = sys.modules.get("local_cluster")
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "local_cluster", REPO / "server" / "local_cluster.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["local_cluster"] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return module


class OursWss(Ours):
    """Ours as users run it: wss://, the relay terminating TLS itself."""

    name = "ours-wss"
    label = "p2p-copy, wss:// (relay TLS)"
    cases = ("random", "compressible", "files")
    reference = "socat-tls"

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.ours_description = self.description
        try:
            self.certs = bench.certificates()
        except RuntimeError as exc:
            self.available, self.reason = False, str(exc)
            return
        self.description = (
            "the same venv and commands as ours over TLS: run-relay-server 127.0.0.1 PORT "
            "--certfile CHAIN --keyfile KEY --log-level WARNING; send wss://127.0.0.1:PORT "
            "CODE PATH --cafile CA; receive wss://127.0.0.1:PORT CODE --out DIR --cafile CA "
            f"(certificates for 127.0.0.1 made once per run: {self.certs.how}). "
            "Ours: " + self.ours_description)

    def start_relay(self, work: Path, case: str) -> RelaySet:
        port = free_port()
        relay = self.bench.proc(
            "relay", [*self.cli, "run-relay-server", "127.0.0.1", str(port),
                      "--certfile", str(self.certs.chain), "--keyfile", str(self.certs.key),
                      "--log-level", "WARNING"], self.cwd(work), self.env(self.bench.tmp))
        wait_listening(port, [relay])
        return RelaySet(relay, ports={"relay": port}, url=f"wss://127.0.0.1:{port}")

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        send, recv = super().commands(relays, code, src, out, case)
        cafile = ["--cafile", str(self.certs.ca)]
        return [*send, *cafile], [*recv, *cafile]


class OursNginxTls(OursWss):
    """Ours behind the shipped nginx configuration, which terminates TLS in front of two
    relays speaking plain ws:// (the room hash picks the relay)."""

    name = "ours-nginx-tls"
    label = "p2p-copy, wss:// via nginx"
    relays = 2

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        lc = _local_cluster()
        self.nginx = lc.find_nginx()
        if self.nginx is None:
            self.available, self.reason = False, ("nginx is not installed (Debian: apt-get "
                                                  "install nginx)")
            return
        if not self.available:
            return
        self.version += "; " + subprocess.run(
            [self.nginx, "-v"], capture_output=True, text=True, timeout=30).stderr.strip()
        self.description = (
            f"{self.nginx} with the shipped configuration (server/nginx/local.conf.template "
            "around p2p-copy-http.conf, p2p-copy-locations.conf and p2p-copy-tls.conf, "
            "rendered by server/local_cluster.py: worker_processes 1, listen 127.0.0.1:PORT "
            f"ssl) in front of {self.relays} relays (run-relay-server 127.0.0.1 Pn --no-tls "
            "--log-level WARNING from the ours venv); peers as ours-wss (wss:// to nginx, "
            f"--cafile; certificates: {self.certs.how}). The relay role's CPU is nginx's "
            "(master and worker) plus every relay's. Ours: " + self.ours_description)

    def start_relay(self, work: Path, case: str) -> RelaySet:
        lc = _local_cluster()
        b = self.bench
        ports = [free_port() for _ in range(self.relays)]
        relays = [b.proc("relay" if i == 0 else f"relay{i + 1}",
                         [*self.cli, "run-relay-server", "127.0.0.1", str(port), "--no-tls",
                          "--log-level", "WARNING"], self.cwd(work), self.env(b.tmp))
                  for i, port in enumerate(ports)]
        prefix = work / "nginx"
        conf = prefix / "conf"
        (conf / "p2p-copy").mkdir(parents=True)
        for sub in ("logs", "tmp"):
            (prefix / sub).mkdir()
        for snippet in lc.SNIPPETS:
            shutil.copyfile(lc.NGINX_DIR / snippet, conf / "p2p-copy" / snippet)
        port = free_port()
        (conf / "nginx.conf").write_text(lc.render_nginx_conf(
            prefix=prefix, port=port, relay_ports=ports, certfile=str(self.certs.chain),
            keyfile=str(self.certs.key)))
        argv = [str(self.nginx), "-p", str(prefix), "-c", str(conf / "nginx.conf")]
        if lc.nginx_version(self.nginx) >= (1, 19, 5):
            argv += ["-e", str(prefix / "logs" / "error.log")]
        nginx = b.proc("nginx", argv, work, self.env(b.tmp))
        for p, procs in zip((*ports, port), (*[[r] for r in relays], [nginx]), strict=True):
            wait_listening(p, procs)
        return RelaySet(relays[0], parts=[*relays[1:], nginx],
                        ports={"relay": port, **{f"relay{i}": p for i, p in enumerate(ports)}},
                        url=f"wss://127.0.0.1:{port}")
