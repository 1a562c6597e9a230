"""Running a stage: skipped when its inputs are unchanged since the last run, its log kept, its time shown."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


class StageFailed(RuntimeError):
    pass


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tree_digest(*paths: Path) -> str:
    """Names, sizes and modification times: cheap, and any edit changes it."""
    entries = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        entries += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if "__pycache__" not in p.parts]
    return digest(entries)


class Progress:
    """The running stage's line: a bar on a terminal, nothing otherwise."""

    def __init__(self, name: str, live: bool):
        self.name, self.live, self.start = name, live, time.monotonic()

    def update(self, done: int, total: int, what: str) -> None:
        if self.live and total:
            width = 24
            bar = "#" * int(width * done / total) + "." * (width - int(width * done / total))
            print(
                f"\r  {self.name:<9} [{bar}] {done}/{total} {what}  {time.monotonic() - self.start:.0f} s",
                end="",
                flush=True,
            )


class StageRunner:
    """The state of a work directory (state.json), and the stages run in it."""

    def __init__(self, args, env: dict):
        self.args, self.env = args, env
        self.workdir = args.workdir.resolve()
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_file = self.workdir / "state.json"
        self.state: dict[str, dict] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.live = sys.stdout.isatty()
        self.timings: dict[str, tuple[float, bool]] = {}

    def unchanged(self, name: str, fingerprint: str) -> bool:
        previous = self.state.get(name)
        if not previous:
            return False
        return (
            previous["fingerprint"] == fingerprint
            and not self.args.force
            and all(Path(p).exists() for p in previous["result"].get("outputs", []))
        )

    def stage(self, name: str, fingerprint: str, func, redo: bool = False):
        """Run `func(log, progress)`, unless it ran before on the same inputs (or was not selected)."""
        selected = not self.args.stage or name in self.args.stage
        redo = redo or bool(self.args.stage) and selected  # a stage asked for by name always runs
        if func is None or not redo and (not selected or self.unchanged(name, fingerprint)):
            if name not in self.state:
                raise SystemExit(f"stage {name} has not run yet: run it first (without --stage)")
            self.timings[name] = (0.0, True)
            why = "inputs unchanged" if func is None or self.unchanged(name, fingerprint) else "not asked for"
            print(f"  {name:<9} skipped ({why})")
            return self.state[name]["result"]
        log_path = self.logs / f"{name}.log"
        progress = Progress(name, self.live)
        if self.live:
            print(f"  {name:<9} ...", end="", flush=True)
        with open(log_path, "w") as log:
            try:
                result = func(log, progress)
            except (StageFailed, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
                log.flush()
                clear = "\r\033[K" if self.live else ""
                print(f"{clear}  {name:<9} FAILED after {time.monotonic() - progress.start:.0f} s: {exc}")
                print("\n".join(f"    | {line}" for line in log_path.read_text().splitlines()[-40:]))
                print(f"  full log: {log_path}")
                raise SystemExit(1) from None
        seconds = time.monotonic() - progress.start
        self.timings[name] = (seconds, False)
        self.state[name] = {"fingerprint": fingerprint, "result": result, "seconds": seconds}
        self.state_file.write_text(json.dumps(self.state, indent=1))
        print(f"{chr(13) + chr(27) + '[K' if self.live else ''}  {name:<9} done in {seconds:.0f} s")
        return result

    def sh(self, log, cmd: list[str], on_line=None) -> None:
        """Run `cmd`, its output to the stage log; `on_line` sees each line (progress)."""
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, text=True, bufsize=1
        )
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            log.write(line)
            if on_line:
                on_line(line)
        if proc.wait() != 0:
            raise StageFailed(f"`{' '.join(cmd[:3])} ...` exited with {proc.returncode}")
