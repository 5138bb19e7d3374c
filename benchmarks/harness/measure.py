"""How a process is measured: the launcher (its own wait4 rusage), the measured
processes, what /proc says about them and the machine, medians and ratios.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import GB, LAUNCHER_DIR

# The launcher: fork, exec, wait4, write "pid N" then "exit C user U sys S maxrss KB".
LAUNCHER_C = r"""
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child = -1;

static void forward(int sig) {
    if (child > 0) kill(child, sig);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: launcher OUT CMD [ARG...]\n"); return 127; }
    FILE *out = fopen(argv[1], "w");
    if (!out) { perror("launcher: open"); return 127; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) { perror("launcher: fork"); return 127; }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror("launcher: exec");
        _exit(127);
    }
    child = pid;
    fprintf(out, "pid %d\n", (int)pid);
    fflush(out);
    int status = 0;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) { perror("launcher: wait4"); return 127; }
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status)
             : WIFSIGNALED(status) ? -WTERMSIG(status) : 1;
    fprintf(out, "exit %d user %ld.%06ld sys %ld.%06ld maxrss %ld\n", code,
            (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
            (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, ru.ru_maxrss);
    fclose(out);
    return code >= 0 ? code : 128 - code;
}
"""

LAUNCHER_PY = r"""
import os, signal, sys
out = open(sys.argv[1], "w")
child = -1
def forward(sig, frame):
    if child > 0:
        try: os.kill(child, sig)
        except OSError: pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
child = pid
out.write(f"pid {pid}\n"); out.flush()
while True:
    try:
        _, status, ru = os.wait4(pid, 0); break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
out.write(f"exit {code} user {ru.ru_utime:.6f} sys {ru.ru_stime:.6f} maxrss {ru.ru_maxrss}\n")
out.close()
sys.exit(code if code >= 0 else 128 - code)
"""


def build_launcher(force_python: bool = False) -> tuple[list[str], str]:
    """The launcher command prefix and its kind ("c" if a C compiler is here, else "python")."""
    cc = None if force_python else (shutil.which("cc") or shutil.which("gcc"))
    if cc:
        digest = hashlib.sha256(LAUNCHER_C.encode()).hexdigest()[:12]
        exe = LAUNCHER_DIR / f"launcher-{digest}"
        if not exe.exists():
            LAUNCHER_DIR.mkdir(parents=True, exist_ok=True)
            src = LAUNCHER_DIR / f"launcher-{digest}.c"
            src.write_text(LAUNCHER_C)
            tmp = exe.with_suffix(f".tmp{os.getpid()}")
            try:
                subprocess.run([cc, "-O2", "-o", str(tmp), str(src)], check=True,
                               capture_output=True, timeout=60)
                os.replace(tmp, exe)
            except (OSError, subprocess.SubprocessError):
                with contextlib.suppress(OSError):
                    tmp.unlink()
        if exe.exists():
            return [str(exe)], "c"
    return [sys.executable, "-I", "-S", "-c", LAUNCHER_PY, ], "python"


CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIVE: set[Proc] = set()


class Proc:
    """One measured process (under the launcher), in its own process group."""

    def __init__(self, launcher: list[str], name: str, argv: Sequence[str], *,
                 logdir: Path, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.rusage_path = logdir / f"{name}.rusage"
        self.log_path = logdir / f"{name}.log"
        self.ended: float | None = None
        self._child: int | None = None
        with open(self.log_path, "wb") as log:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                [*launcher, str(self.rusage_path), *self.argv], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                start_new_session=True,
            )
        _LIVE.add(self)

    def child_pid(self, timeout: float = 10.0) -> int | None:
        """The measured process's pid (the launcher's child)."""
        deadline = time.monotonic() + timeout
        while self._child is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.rusage_path.read_text().splitlines():
                    if line.startswith("pid "):
                        self._child = int(line.split()[1])
            if self._child is None:
                if self.popen.poll() is not None:
                    break
                time.sleep(0.005)
        return self._child

    def cpu_now(self) -> float | None:
        """User+sys CPU seconds of the measured process so far (/proc, 10 ms ticks)."""
        pid = self.child_pid()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, TypeError):
            return None
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kb(self, key: str) -> int | None:
        """A /proc/PID/status field in kB (VmRSS, VmHWM) of the measured process."""
        pid = self.child_pid()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (OSError, TypeError):
            pass
        return None

    def fd_count(self) -> int | None:
        pid = self.child_pid()
        try:
            return len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, TypeError):
            return None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, grace: float = 10.0) -> None:
        """SIGTERM (forwarded by the launcher), then SIGKILL to the whole group."""
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self.ended is None:
            self.ended = time.monotonic()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        _LIVE.discard(self)

    def rusage(self) -> dict[str, Any]:
        """exit code, user/sys/total CPU seconds and peak RSS (kB) from the launcher."""
        result: dict[str, Any] = {"exit": self.popen.returncode}
        with contextlib.suppress(OSError):
            for line in self.rusage_path.read_text().splitlines():
                parts = line.split()
                if parts and parts[0] == "exit":
                    kv = dict(zip(parts[0::2], parts[1::2], strict=True))
                    result.update(exit=int(kv["exit"]), user_s=float(kv["user"]),
                                  sys_s=float(kv["sys"]), maxrss_kb=int(kv["maxrss"]))
                    result["cpu_s"] = result["user_s"] + result["sys_s"]
        return result

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.strip().splitlines()[-lines:])
        return ""


def wait_all(procs: Sequence[Proc], timeout: float) -> bool:
    """Wait until every process exited (recording each exit time precisely) or timeout."""
    deadline = time.monotonic() + timeout
    pending = [p for p in procs if p.ended is None]
    fds: dict[int, Proc] = {}
    try:
        poller = select.poll()
        for p in pending:
            try:
                fd = os.pidfd_open(p.popen.pid)
            except (AttributeError, OSError):
                fds = {}
                break
            fds[fd] = p
            poller.register(fd, select.POLLIN)
        if fds:
            while fds:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for fd, _ in poller.poll(remaining * 1000):
                    p = fds.pop(fd)
                    p.ended = time.monotonic()
                    poller.unregister(fd)
                    os.close(fd)
                    p.popen.wait()
            return True
        # No pidfd: poll every 2 ms.
        while pending:
            for p in list(pending):
                if p.popen.poll() is not None:
                    p.ended = time.monotonic()
                    pending.remove(p)
            if not pending:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True
    finally:
        for fd in fds:
            os.close(fd)


def kill_everything() -> None:
    for p in list(_LIVE):
        p.kill()


def cpu_times() -> tuple[float, float]:
    """Machine-wide busy CPU seconds (all cores, idle and iowait excluded) and steal."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


def add_noise(result: dict[str, Any], before: tuple[float, float]) -> None:
    """CPU that other processes used on this machine while we measured (noise)."""
    busy, steal = cpu_times()
    ours = sum(v for k, v in result.items() if k.endswith("_cpu_s") and k.split("_")[0] in
               ("sender", "receiver", "relay", "mailbox", "link")
               and isinstance(v, (int, float)))
    result["other_cpu_s"] = max(0.0, busy - before[0] - ours)
    result["steal_s"] = steal - before[1]


def wait_quiet(max_wait: float, busy_cores: float = 0.15) -> float:
    """Wait (up to max_wait s) until other processes use under busy_cores for 0.25 s."""
    start = time.monotonic()
    while True:
        b0, t0 = cpu_times()[0], time.monotonic()
        time.sleep(0.25)
        busy = (cpu_times()[0] - b0) / (time.monotonic() - t0)
        if busy < busy_cores or time.monotonic() - start >= max_wait:
            return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """True if something listens on 127.0.0.1:port (read from /proc; never connects)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_listening(port: int, procs: Sequence[Proc], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not listening(port):
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited early ({p.popen.returncode}): "
                                   f"{p.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")
        time.sleep(0.01)


def machine_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"nproc": int(nproc) if nproc.isdigit() else os.cpu_count(), "cpu_model": model,
            "mem_total": mem, "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg())}


#: the three roles whose CPU per GB is reported, each against the same role of a reference
ROLES = ("sender", "receiver", "relay")


def add_per_gb(result: dict[str, Any], nbytes: int) -> None:
    """Each role's CPU per GB moved (ROLE_cpu_s_per_gb), and all processes' together (what
    2 cores must do; the long link's process is not one of them)."""
    gb = nbytes / GB
    for role in ROLES:
        if isinstance(result.get(f"{role}_cpu_s"), (int, float)):
            result[f"{role}_cpu_s_per_gb"] = result[f"{role}_cpu_s"] / gb
    parts = [result.get(k) for k in ("sender_cpu_s", "receiver_cpu_s", "relay_cpu_s",
                                     "mailbox_cpu_s")]
    if all(isinstance(v, (int, float)) for v in parts[:3]):
        result["all_cpu_s_per_gb"] = sum(v for v in parts if isinstance(v, (int, float))) / gb

#: metrics summarised as medians, and whether bigger is better (for the printed ratio).
METRICS = ["mb_s", "files_s", "pairs_s", "wall_s", "connect_s", "transfer_s",
           "sender_cpu_s", "receiver_cpu_s", "relay_cpu_s", "sender_cpu_s_per_gb",
           "receiver_cpu_s_per_gb", "relay_cpu_s_per_gb", "all_cpu_s_per_gb", "link_cpu_s",
           "mailbox_cpu_s", "sender_maxrss_kb", "receiver_maxrss_kb", "relay_maxrss_kb",
           "relay_rss_idle_kb", "mailbox_maxrss_kb", "relay_kb_per_pair", "peak_connections",
           "intact_pairs", "sender_user_s", "sender_sys_s", "receiver_user_s",
           "receiver_sys_s", "other_cpu_s", "steal_s", "noise"]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r.get("ok") and r.get("counted", True)]
    median: dict[str, float] = {}
    for m in METRICS:
        values = [r[m] for r in good if isinstance(r.get(m), (int, float))]
        if values:
            median[m] = statistics.median(values)
    failed = [r for r in runs if not r.get("ok")]
    return {"runs": runs, "ok": bool(good) and not failed, "failures": len(failed),
            "counted": len(good), "discarded_noisy": sum(1 for r in runs
                                   if r.get("noisy") and not r.get("counted", True)),
            "median": median}


def add_ratios(case: dict[str, Any], references: dict[str, str] | None = None) -> None:
    """ratio_to_baseline (and ratio_to_wsmin where wsmin ran): each median ÷ theirs; and
    ratio_to_reference: each median ÷ that of the tool's reference (``references``: tool
    -> reference; the raw baseline for tools over plain TCP or ws://, socat-tls for those
    over TLS), with ``reference`` naming it, where the reference ran."""
    base = case["results"].get("baseline", {}).get("median", {})
    wsmin = case["results"].get("wsmin", {}).get("median", {})
    for name, res in case["results"].items():
        res["ratio_to_baseline"] = {
            m: res["median"][m] / base[m]
            for m in res.get("median", {}) if base.get(m)
        }
        if wsmin:
            res["ratio_to_wsmin"] = {
                m: res["median"][m] / wsmin[m]
                for m in res.get("median", {}) if wsmin.get(m)
            }
        ref_name = (references or {}).get(name, "baseline")
        ref = case["results"].get(ref_name, {}).get("median", {})
        if ref and "median" in res:
            res["reference"] = ref_name
            res["ratio_to_reference"] = {m: res["median"][m] / ref[m]
                                         for m in res["median"] if ref.get(m)}
