"""Warm workers: rank processes started ahead of need, that have already imported torch and
the engine, so that a replica starting on them pays no interpreter start (1.5-2.5 s each
on a small CPU).

A warm worker waits for one line on its stdin: the path of its rank's arguments (see
worker.warm_main). A replica takes one per rank (`start`); once it has loaded, the pool
starts others in a thread (`refill`), one at a time, to be `size` strong again. Like every
rank, a warm worker exits when its parent does.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading

_COLD = "import sys; from mgpud.engine.core.worker import main; main(sys.argv[1])"
_WARM = "from mgpud.engine.core.worker import warm_main; warm_main()"


def start_worker(args_file: str | None) -> subprocess.Popen:
    """A rank process: on `args_file` at once, or (None) a warm one waiting for its line."""
    command = [_COLD, args_file] if args_file else [_WARM]
    # A session of their own: a Ctrl-C meant for the owner must not kill the workers mid-step;
    # the owner stops them, and they exit by themselves if it dies.
    return subprocess.Popen([sys.executable, "-c", *command], start_new_session=True,
                            stdin=None if args_file else subprocess.PIPE,
                            stdout=None if args_file else subprocess.PIPE)


class WarmPool:
    def __init__(self, size: int):
        self.size = size
        self._warm: list[subprocess.Popen] = []  # imported, waiting
        self._starting: list[subprocess.Popen] = []  # still importing
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._closed = False
        self._wanted.set()
        threading.Thread(target=self._refill, name="mgpud-warm-pool", daemon=True).start()

    def counts(self) -> tuple[int, int]:
        """(warm, starting) workers now."""
        with self._lock:
            return len(self._warm), len(self._starting)

    def start(self, args_file: str) -> subprocess.Popen:
        """A rank process on `args_file`: a waiting worker (one still importing when none is
        warm: it is further along than a new one), else a new one."""
        while (proc := self._take()) is not None:
            try:
                proc.stdin.write(f"{args_file}\n".encode())
                proc.stdin.close()
                return proc
            except OSError:  # it died since: try the next
                proc.kill()
                proc.wait()
        return start_worker(args_file)

    def refill(self) -> None:
        """Start workers again up to the pool's size. Called once a replica has loaded: imports
        running beside a load would slow it down on a small machine."""
        self._wanted.set()

    def _take(self) -> subprocess.Popen | None:
        with self._lock:
            for queue in (self._warm, self._starting):
                while queue:
                    proc = queue.pop(0)
                    if proc.poll() is None:
                        return proc
                    proc.wait()
        return None

    def close(self) -> None:
        """Stop refilling and end the waiting workers (closing its stdin tells one to exit)."""
        with self._lock:
            self._closed = True
            procs = self._warm + self._starting
            self._warm, self._starting = [], []
        self._wanted.set()
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _refill(self) -> None:
        while True:
            self._wanted.wait()
            with self._lock:
                if self._closed:
                    return
                if len(self._warm) + len(self._starting) >= self.size:
                    self._wanted.clear()
                    continue
                proc = start_worker(None)
                self._starting.append(proc)
            # One at a time: imports on a busy machine compete with the loads they serve.
            warm = proc.stdout.readline().strip() == b"warm"
            with self._lock:
                if proc not in self._starting:
                    continue  # taken while it imported
                self._starting.remove(proc)
                if warm and not self._closed:
                    self._warm.append(proc)
                    continue
            proc.kill()
            proc.wait()
            if not warm:
                return  # it could not even import: replicas start their own workers, which say why
