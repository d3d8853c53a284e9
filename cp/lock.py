"""The study lock: one pipeline (or one lone ``cpt`` command) works on a study folder at a time,
across processes, checkouts and machines that share the folder.

The lock is a file in the study folder (`cp.study.Study.lock_file`) that says who holds it:
host, pid, the process's start time, when it took the lock, its working directory and the cp
checkout it runs, and a heartbeat its holder refreshes every `HEARTBEAT_S` seconds. Reading
or changing it happens under an OS lock on a small guard file beside it (``flock``; over NFS,
the kernel turns that into an NFS lock), so two processes never both take it.

Who takes it:

- A pipeline: the Snakefile's ``onstart`` takes it (`hold_for_pipeline`) and puts a token in
  the environment (`ENV_TOKEN`); every ``cpt stage`` the pipeline starts inherits the token
  and joins the lock instead of being refused by it, recording its own pid as a member. The
  lock is released when Snakemake ends (``onsuccess``/``onerror``, or at exit).
- A lone command (``cpt stage``, ``cpt train``, ``cpt coord-check``, ``cpt report``, ``cpt
  sync``) with no pipeline's token takes it for as long as it runs (`hold`).

A lock whose processes are all gone is stale and is taken over, with a note naming it: on the
same host a process is gone when its pid is (or belongs to a process started later); a lock
held from another host is stale when its heartbeat is older than `STALE_AFTER_S`. A live lock
refuses with who holds it and what to do (`StudyLocked`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from .study import Study, storage_error, write_json

ENV_TOKEN = "CP_STUDY_LOCK"
"""The environment variable through which a pipeline's stage processes join its lock."""
HEARTBEAT_S = 30.0
"""How often a holder refreshes the lock's heartbeat."""
STALE_AFTER_S = 600.0
"""A lock held from another host with no heartbeat for this long is stale (its holder's
machine is gone, or cut off from the folder)."""


class StudyLocked(Exception):
    """Someone else works on the study folder now; the message says who and what to do."""


def _process_start(pid: int) -> Optional[int]:
    """The start time of process ``pid`` (clock ticks since boot; Linux), None if unknown.
    With the pid it names one process: a pid reused by a later process has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) if fields[0] != "Z" else -1  # a zombie has exited


def _alive(proc: dict) -> bool:
    """Whether a process recorded on this host still runs."""
    pid = proc.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    start = _process_start(pid)
    if start == -1:
        return False
    return start is None or proc.get("pid_start") in (None, start)


def _me(what: str) -> dict[str, Any]:
    from . import __file__ as cp_init

    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "what": what, "since": time.time(), "cwd": os.getcwd(),
            "code": str(Path(cp_init).resolve().parent.parent)}


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(
        t, (int, float)) else "?"


def stale_reason(lock: dict, now: Optional[float] = None) -> Optional[str]:
    """Why ``lock`` is stale (its processes are gone), or None while it is live."""
    now = time.time() if now is None else now
    here = socket.gethostname()
    procs = [lock, *lock.get("members", [])]
    if any(p.get("host") != here for p in procs):
        beat = lock.get("heartbeat")
        age = now - beat if isinstance(beat, (int, float)) else float("inf")
        if age < STALE_AFTER_S:
            return None
        return (f"no heartbeat from host {lock.get('host')} for {age / 60:.0f} min "
                f"(a lock is stale after {STALE_AFTER_S / 60:.0f} min)")
    if any(_alive(p) for p in procs):
        return None
    return f"pid {lock.get('pid')} on {here} is gone"


def describe(lock: dict) -> str:
    """Who holds ``lock``, in a line."""
    members = [m for m in lock.get("members", []) if m.get("host") != lock.get("host")
               or m.get("pid") != lock.get("pid")]
    extra = "".join(f"; with {m.get('what')} (pid {m.get('pid')} on {m.get('host')})"
                    for m in members)
    return (f"{lock.get('what', '?')} (pid {lock.get('pid')} on host {lock.get('host')}, since "
            f"{_when(lock.get('since'))}, working in {lock.get('cwd')}, cp from "
            f"{lock.get('code')}; last heartbeat {_when(lock.get('heartbeat'))}){extra}")


class StudyLock:
    """This process's hold on a study's lock: as its holder, or as a member of a pipeline's
    lock (``token`` from `ENV_TOKEN`)."""

    def __init__(self, study: Study, what: str, token: Optional[str] = None):
        self.study, self.what = study, what
        self.token = token or uuid.uuid4().hex
        self.me = _me(what)
        self.role: Optional[str] = None  # "holder" or "member" once acquired
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    # -- the guard and the file ------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        import fcntl

        root = self.study.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.study.lock_guard, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise storage_error(e, self.study.lock_guard) or e from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _read(self) -> Optional[dict]:
        try:
            lock = json.loads(self.study.lock_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: nobody can be shown to hold it (stale below)
        return lock if isinstance(lock, dict) else {}

    # -- taking and leaving ------------------------------------------------------------------
    def acquire(self, join: bool = False) -> None:
        """Take the lock (or, with ``join``, join the pipeline's lock our token names). Raises
        `StudyLocked` while someone else holds a live lock."""
        with self._guard():
            lock = self._read()
            if join and lock and lock.get("token") == self.token:
                lock.setdefault("members", []).append(self.me)
                lock["heartbeat"] = time.time()
                write_json(self.study.lock_file, lock)
                self.role = "member"
            else:
                if lock is not None:
                    why = "unreadable" if not lock else stale_reason(lock)
                    if why is None:
                        raise StudyLocked(self._refusal(lock))
                    print(f"cpt: note: {self.study.lock_file}: taking over a stale lock of "
                          f"{describe(lock) if lock else 'nobody'}: {why}", file=sys.stderr)
                write_json(self.study.lock_file, {**self.me, "token": self.token,
                                                  "heartbeat": time.time(), "members": []})
                self.role = "holder"
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name="cp-study-lock")
        self._beat.start()

    def _refusal(self, lock: dict) -> str:
        return (f"the study folder {self.study.root} is in use by {describe(lock)}. Two "
                "pipelines (or commands) on one study would train runs twice. Wait for it to "
                "finish, or stop it. If it is gone, its lock is taken over by the next run: "
                "at once on the same host, after "
                f"{STALE_AFTER_S / 60:.0f} min without a heartbeat from another host (or "
                f"remove {self.study.lock_file} when you are sure nothing runs).")

    def release(self) -> None:
        """Leave the lock (a holder removes it, a member takes itself off it)."""
        self._stop.set()
        if self.role is None:
            return
        role, self.role = self.role, None
        try:
            with self._guard():
                lock = self._read()
                if not lock or lock.get("token") != self.token:
                    return  # taken over meanwhile: not ours any more
                if role == "holder":
                    self.study.lock_file.unlink()
                else:
                    lock["members"] = [m for m in lock.get("members", [])
                                       if m.get("pid") != self.me["pid"]
                                       or m.get("host") != self.me["host"]]
                    write_json(self.study.lock_file, lock)
        except Exception:  # a full or read-only disk: the lock goes stale, which is enough
            pass

    def _heartbeat(self) -> None:
        warned = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self._guard():
                    lock = self._read()
                    if not lock or lock.get("token") != self.token:
                        if not warned:
                            print(f"cpt: warning: the lock of {self.study.root} was taken over "
                                  f"by {describe(lock) if lock else 'nobody'}",
                                  file=sys.stderr, flush=True)
                            warned = True
                        continue
                    lock["heartbeat"] = time.time()
                    write_json(self.study.lock_file, lock)
            except Exception:
                continue  # a full disk: try again at the next beat

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold(study: Study, what: str) -> Iterator[StudyLock]:
    """Work on ``study`` under its lock: the pipeline's (when `ENV_TOKEN` names the lock the
    study has), else one of our own for as long as the block runs."""
    token = os.environ.get(ENV_TOKEN)
    lock = StudyLock(study, what, token)
    lock.acquire(join=token is not None)
    try:
        yield lock
    finally:
        lock.release()


def hold_for_pipeline(study: Study, what: str = "a snakemake pipeline") -> StudyLock:
    """Take ``study``'s lock for a whole pipeline (the Snakefile's ``onstart``): its stage
    processes inherit the token and join it. Released by `StudyLock.release` (``onsuccess``,
    ``onerror``) or when the process exits."""
    import atexit

    lock = StudyLock(study, what)
    lock.acquire()
    os.environ[ENV_TOKEN] = lock.token
    atexit.register(lock.release)
    return lock
