#!/usr/bin/env python
"""Load test: N browser sessions train on one Transfer Lab server at once.

Starts its own server on a free 127.0.0.1 port (or uses --url), opens N sessions (browser contexts
in one headless Chromium, driven concurrently with Playwright's async API), and in each one opens
the app on the demo set, goes to Train and presses Train with the default settings. It prints,
per session, the seconds from the click to "finished" and the time spent waiting in the queue, the
median and the maximum, and the server's peak memory. Every wait is bounded: the whole test stops
by itself after --timeout seconds, whatever the server does.

    python scripts/load_test.py --sessions 20
    python scripts/load_test.py --url http://127.0.0.1:8501 --pid 12345 --sessions 5
    python scripts/load_test.py --sessions 20 --pin   # browsers on the last core, server on the rest

The N browsers of a test share this machine's cores with the server; in a classroom they are on the
students' own machines. ``--pin`` puts the browsers on the last core and the server (and its
workers) on the others, so the figures say what the server does. Either way the server starts in
a session of its own, as it does from a terminal or as a service: Linux shares the CPU between
sessions before it shares it between threads (``--same-session`` puts it beside the browsers). The
server this script starts dumps its threads' stacks into its log at the end when a session timed
out (a page that stopped following its run: is a script run stuck on the server, or did the
browser stop asking?).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
STATUS = re.compile(r"Run ([0-9a-f]{16}) — (queued|preparing|running|finished|failed|cancelled|diverged)")
QUEUE = re.compile(r"Waiting for a free training slot: number (\d+) in the queue")
DONE = ("finished", "failed", "cancelled", "diverged")


@dataclass
class Session:
    index: int
    state: str = "not started"  # not started, opening, training, finished, failed, ..., timed out, error
    run_id: str = ""
    clicked: float | None = None
    clicked_at: float | None = None  # the click in wall-clock time, to compare with the run's record
    seconds: float | None = None  # click to finished
    queued_seconds: float = 0.0  # click to the first sign that the run left the queue
    queue_positions: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    error: str = ""
    poll_errors: int = 0
    exception_boxes: int = 0  # red exception boxes on the page when it timed out
    page_state: str = ""  # the page's status widget when it timed out ("idle" when it shows none)
    sockets: list = field(default_factory=list)  # (opened, closed or None) per websocket, monotonic seconds
    # the browser console's errors and warnings (Streamlit's frontend logs a websocket it closes for
    # good, and why): a page whose connection ended says why here
    console: list = field(default_factory=list)


# --- the server and its memory ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server runs with a stack dump on SIGUSR1 (faulthandler), for sessions that time out.
SERVE = ("import faulthandler, os, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
         "exec(open(os.environ['LOAD_DIAG']).read()) if os.environ.get('LOAD_DIAG') else None; "
         "from streamlit.web.cli import main; sys.argv = ['streamlit', *sys.argv[1:]]; main()")


def start_server(data_dir: str, slots: int | None, log_path: str, cores: set[int] | None = None,
                 own_session: bool = True) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TRANSFER_LAB_DATA_DIR": data_dir}
    if slots:
        env["TRANSFER_LAB_MAX_CONCURRENT_RUNS"] = str(slots)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,  # workers inherit it
        # as from a terminal or a service: not in the session of the browsers this script drives
        start_new_session=own_session,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"The server exited with code {proc.returncode}; see {log_path}")
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"The server did not answer within 120 s; see {log_path}")


def dump_stacks(proc: subprocess.Popen) -> None:
    """Every server thread's stack into its log (SERVE registered SIGUSR1 for it)."""
    try:
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2)
    except OSError:
        pass


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of the process so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """The process's children, grandchildren, … (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class MemorySampler:
    """Samples the server's VmHWM (the kernel's own peak) and VmRSS, plus its children's."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.server_hwm_kib = 0
        self.children_hwm_kib: dict[int, int] = {}
        self.peak_total_rss_kib = 0
        self.samples = 0
        self.cpu_start = self.cpu_end = cpu_seconds(pid) if pid else None
        # CPU seconds per process of each group, (at the start or birth, latest): the server's
        # workers, and this script's own descendants outside the server (Chromium, Playwright's driver)
        self.cpu: dict[str, dict[int, list[float]]] = {"workers": {}, "browser": {}}
        self._account(descendants(pid) if pid else [], start=True)

    def _account(self, workers: list[int], start: bool = False) -> None:
        """Add the latest CPU seconds of the server's ``workers`` and of the browser's processes."""
        server = set(workers)
        browser = [p for p in descendants(os.getpid()) if p not in server and p != self.pid]
        for group, pids in (("workers", workers), ("browser", browser)):
            seen = self.cpu[group]
            for pid in pids:
                used = cpu_seconds(pid)
                if used is None:
                    continue
                if pid not in seen:
                    seen[pid] = [used if start else 0.0, used]
                seen[pid][1] = used

    def cpu_used(self, group: str) -> float:
        return sum(latest - first for first, latest in self.cpu[group].values())

    def sample(self) -> None:
        if not self.pid:
            return
        self.server_hwm_kib = max(self.server_hwm_kib, _status_kib(self.pid, "VmHWM"))
        total = _status_kib(self.pid, "VmRSS")
        workers = descendants(self.pid)
        for child in workers:
            self.children_hwm_kib[child] = max(self.children_hwm_kib.get(child, 0), _status_kib(child, "VmHWM"))
            total += _status_kib(child, "VmRSS")
        self.peak_total_rss_kib = max(self.peak_total_rss_kib, total)
        self.samples += 1
        self.cpu_end = cpu_seconds(self.pid) or self.cpu_end
        self._account(workers)

    async def run(self, stop: asyncio.Event, every: float = 0.5) -> None:
        while not stop.is_set():
            self.sample()
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
        self.sample()


# --- one browser session ------------------------------------------------------------------------


# One look at a page: the headings' text and the queue notice, read in the page in one call.
# textContent needs no layout; the role and text locators this used before computed accessible
# names over the whole page at every look, 20 pages a second, on the cores the pages run on.
LOOK = """() => {
  const headings = [...document.querySelectorAll('h1, h2, h3, h4')].map(h => h.textContent);
  const queue = document.body.textContent.match(/Waiting for a free training slot: number (\\d+) in the queue/);
  return [headings, queue ? Number(queue[1]) : null];
}"""


async def look(page, s: Session) -> str | None:
    """The run's status as the page shows it now (None before its heading appears)."""
    headings, position = await asyncio.wait_for(page.evaluate(LOOK), 5)
    match = next((m for m in map(STATUS.search, headings) if m), None)
    if not match:
        return None
    s.run_id, status = match.groups()
    if not s.statuses or s.statuses[-1] != status:
        s.statuses.append(status)
    if status == "queued" and position is not None:
        s.queue_positions.append(position)
    return status


async def drive(browser, url: str, s: Session, deadline: float, poll: float) -> None:
    def left_ms() -> float:
        return max(1.0, deadline - time.monotonic()) * 1000

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()

        def opened(ws):
            entry = [time.monotonic(), None]
            s.sockets.append(entry)
            ws.on("close", lambda _: entry.__setitem__(1, time.monotonic()))

        page.on("websocket", opened)

        def logged(message):
            text = message.text
            if message.type in ("error", "warning"):
                when = (f"{time.monotonic() - s.clicked:+.0f} s" if s.clicked is not None else "before the click")
                s.console.append(f"{when} {text[:160]}")

        page.on("console", logged)
        s.state = "opening"
        await page.goto(url, timeout=left_ms())
        await page.get_by_role("heading", name="Data").first.wait_for(timeout=left_ms())
        await page.get_by_text("Demo shapes (source look): 80 images in 4 classes").wait_for(timeout=left_ms())
        await page.get_by_test_id("stSidebarNav").get_by_text("Train", exact=True).click(timeout=left_ms())
        await page.get_by_role("heading", name="Train").first.wait_for(timeout=left_ms())
        train = page.get_by_role("button", name="Train", exact=True)
        await train.wait_for(timeout=left_ms())
        s.state = "training"
        s.clicked, s.clicked_at = time.monotonic(), time.time()
        await train.click(timeout=left_ms())
        left_queue = False
        while time.monotonic() < deadline:
            now = time.monotonic()
            try:
                status = await look(page, s)
            except Exception as exc:  # a slow page: a look that timed out is retried, not fatal
                s.poll_errors += 1
                s.error = f"last failed look: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
                status = None
            if status is not None:
                if status != "queued" and not left_queue:
                    left_queue = True
                    s.queued_seconds = now - s.clicked if "queued" in s.statuses else 0.0
                if status in DONE:
                    s.seconds = now - s.clicked
                    s.state = status
                    return
            await page.wait_for_timeout(poll * 1000)
        s.state = "timed out"
        if not left_queue and "queued" in s.statuses:
            s.queued_seconds = time.monotonic() - s.clicked
        try:
            s.exception_boxes = await page.get_by_test_id("stException").count()
            # what the page itself says at the end: a script run in progress ("Running…"), a lost
            # connection ("Connecting"), or nothing (idle, waiting for its timer)
            widget = page.get_by_test_id("stStatusWidget")
            s.page_state = (await widget.inner_text(timeout=3000)).strip() if await widget.count() else "idle"
            # a connection Streamlit gave up on shows a dialog with the reason
            dialog = page.get_by_role("dialog")
            if await dialog.count():
                s.page_state += " · dialog: " + " ".join((await dialog.first.inner_text(timeout=3000)).split())[:200]
        except Exception:
            pass
    except Exception as exc:  # one broken session must not stop the others
        if time.monotonic() >= deadline - 1:
            s.state = "timed out"
        else:
            s.state = "error"
        s.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    finally:
        try:
            await asyncio.wait_for(context.close(), 15)
        except Exception:
            pass


async def run_sessions(url: str, n: int, timeout: float, poll: float, stagger: float,
                       sampler: MemorySampler) -> tuple[list[Session], float]:
    from playwright.async_api import async_playwright

    sessions = [Session(i + 1) for i in range(n)]
    started = time.monotonic()
    deadline = started + timeout
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            async def one(s: Session):
                await asyncio.sleep(stagger * (s.index - 1))
                await drive(browser, url, s, deadline, poll)

            tasks = [asyncio.create_task(one(s)) for s in sessions]
            done, pending = await asyncio.wait(tasks, timeout=timeout + 30)
            for task in pending:  # a hung call that ignored its own timeout
                task.cancel()
            for s in sessions:
                if s.state in ("not started", "opening", "training"):
                    s.state = "timed out"
        finally:
            try:
                await asyncio.wait_for(browser.close(), 30)
            except Exception:
                pass
    stop.set()
    await sampling
    return sessions, time.monotonic() - started


# --- the report ---------------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def summary(values: list[float]) -> str:
    if not values:
        return "—"
    return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s"


def timeline(sessions: list[Session], data_dir: str) -> dict[str, list[float]]:
    """Per completed session: the click until the server created its run (the click's script run),
    the run's creation until the worker finished it (the queue and the training), and that until the
    page showed "finished" (its follower's redraw, the browser's render and this script's next look)."""
    stages: dict[str, list[float]] = {"click → run created": [], "created → finished": [], "finished → seen": []}
    for s in sessions:
        if s.state != "finished" or not s.run_id or s.clicked_at is None or s.seconds is None:
            continue
        found = list(Path(data_dir).glob(f"**/{s.run_id}/run.json"))
        try:
            record = json.loads(found[0].read_text()) if found else None
        except (OSError, ValueError):
            record = None
        if not record or not record.get("finished"):
            continue
        stages["click → run created"].append(record["created"] - s.clicked_at)
        stages["created → finished"].append(record["finished"] - record["created"])
        stages["finished → seen"].append(s.clicked_at + s.seconds - record["finished"])
    return stages if stages["click → run created"] else {}


def report(sessions: list[Session], wall: float, url: str, sampler: MemorySampler, log_path: str | None,
           slots: str, data_dir: str | None = None) -> None:
    completed = [s for s in sessions if s.state == "finished"]
    failed = [s for s in sessions if s.state != "finished"]
    print(f"\n{len(sessions)} sessions against {url} (training slots: {slots}), wall time {wall:.0f} s")
    print(f"{'session':>7}  {'result':<10} {'click→finished':>15} {'queued':>8} {'queue pos':>9}  run id            statuses")
    for s in sessions:
        secs = f"{s.seconds:.1f} s" if s.seconds is not None else "—"
        queued = (f"{s.queued_seconds:.1f} s" if s.statuses else "—") + ("+" if s.statuses[-1:] == ["queued"] else "")
        pos = f"{max(s.queue_positions)}" if s.queue_positions else "—"
        line = f"{s.index:>7}  {s.state:<10} {secs:>15} {queued:>8} {pos:>9}  {s.run_id or '—':<16}  {'→'.join(s.statuses)}"
        if s.exception_boxes:
            line += "  [exception box on the page]"
        if s.page_state:
            line += f"  [page at the end: {s.page_state!r}]"
        if len(s.sockets) > 1 or any(closed is not None for _, closed in s.sockets):
            line += "  [websockets: " + ", ".join(
                f"{opened - s.clicked:+.0f}…{'open' if closed is None else f'{closed - s.clicked:+.0f}'} s"
                for opened, closed in s.sockets) + " from the click]" if s.clicked else ""
        if s.state != "finished" and s.console:
            line += "  [console: " + " | ".join(s.console[-4:]) + "]"
        if s.error:
            line += f"  [{s.error}{f'; {s.poll_errors} failed looks' if s.poll_errors else ''}]"
        print(line)
    print(f"completed: {len(completed)}, failed: {len(failed)}"
          + (f" ({', '.join(f'{k} {sum(s.state == k for s in failed)}' for k in sorted({s.state for s in failed}))})"
             if failed else ""))
    print(f"click to finished (completed sessions): {summary([s.seconds for s in completed])}")
    print(f"time queued (sessions whose run showed): {summary([s.queued_seconds for s in sessions if s.statuses])}"
          + (" — '+': still queued when the test stopped" if any(s.statuses[-1:] == ["queued"] for s in sessions) else ""))
    if data_dir:
        stages = timeline(sessions, data_dir)
        if stages:
            print("where the time went (from the runs' records): "
                  + "; ".join(f"{name} {summary(values)}" for name, values in stages.items()))
    if sampler.pid:
        children = sum(sampler.children_hwm_kib.values())
        print(f"server peak memory: VmHWM {mib(sampler.server_hwm_kib)} (pid {sampler.pid}); "
              f"{len(sampler.children_hwm_kib)} child process(es), VmHWM sum {mib(children)}; "
              f"peak sampled RSS server+children {mib(sampler.peak_total_rss_kib)} ({sampler.samples} samples)")
        if sampler.cpu_start is not None and sampler.cpu_end is not None:
            used = sampler.cpu_end - sampler.cpu_start
            print(f"server CPU during the test: {used:.0f} s in {wall:.0f} s ({used / max(wall, 1):.2f} cores on average; "
                  f"this machine has {os.cpu_count()}, load average now {os.getloadavg()[0]:.1f})")
            workers, browser = sampler.cpu_used("workers"), sampler.cpu_used("browser")
            print(f"CPU of the training workers: {workers:.0f} s ({workers / max(wall, 1):.2f} cores); of the "
                  f"browser and its driver: {browser:.0f} s ({browser / max(wall, 1):.2f} cores)")
    else:
        print("server peak memory: unknown (pass --pid with --url to sample it)")
    if log_path:
        text = Path(log_path).read_text(errors="replace")
        errors = [line for line in text.splitlines() if re.match(r"^\w*(Error|Exception)\b", line)]
        print(f"server log: {text.count('Traceback')} traceback(s)"
              + (f"; last: {errors[-1]}" if errors else "") + f" ({log_path})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="browser sessions (default 20)")
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, to sample its memory")
    parser.add_argument("--slots", type=int, help="TRANSFER_LAB_MAX_CONCURRENT_RUNS for the server this script "
                                                  "starts (default: the app's own default)")
    parser.add_argument("--timeout", type=float, default=900, help="stop after this many seconds (default 900)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks at each page (default 1)")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between session starts (default 0)")
    parser.add_argument("--pin", action="store_true", help="browsers on the last core, the server on the others")
    parser.add_argument("--same-session", action="store_true",
                        help="start the server in this script's session, beside the browsers, as every test "
                             "before 2026-11-30 did: Linux then shares the CPU among all their threads alike")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing (scripts/ensure-chromium.sh)")

    proc = log_path = data_dir = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
        slots = "server's own"
    else:
        workdir = tempfile.mkdtemp(prefix="transfer-lab-load-")
        log_path = os.path.join(workdir, "server.log")
        cores = sorted(os.sched_getaffinity(0))
        if args.pin and len(cores) < 2:
            raise SystemExit("--pin needs at least two cores")
        server_cores = set(cores[:-1]) if args.pin else None
        data_dir = os.path.join(workdir, "data")
        proc, url = start_server(data_dir, args.slots, log_path, server_cores, own_session=not args.same_session)
        pid = proc.pid
        if args.pin:  # this process's children (Playwright's driver, Chromium) inherit the last core
            os.sched_setaffinity(0, {cores[-1]})
            print(f"server on core(s) {sorted(server_cores)}, browsers on core {cores[-1]}", flush=True)
        slots = str(args.slots) if args.slots else "app default"
        print(f"server pid {pid} at {url}, data and log in {workdir}", flush=True)
    sampler = MemorySampler(pid)
    sessions = None
    try:
        sessions, wall = asyncio.run(run_sessions(url, args.sessions, args.timeout, args.poll, args.stagger, sampler))
    finally:
        if proc is not None:
            sampler.sample()
            if any(s.state == "timed out" for s in sessions or []):
                dump_stacks(proc)
            stop_server(proc)
    report(sessions, wall, url, sampler, log_path, slots, data_dir)
    return 0 if all(s.state == "finished" for s in sessions) else 1


if __name__ == "__main__":
    sys.exit(main())
