"""Run many rag_outcome.py rows at once, each in its own process: a sweep on one GPU (or many CPU cores).

    python experiments/rag_sweep.py experiments/sweep_rows.txt --workers 8 --deadline 480 --results results.jsonl

`rows.txt` holds one rag_outcome.py argument line per row (shell syntax; blank lines and `#` comments are
skipped), in priority order. A row waits while a running row makes what the two share (the same --out's data,
the SFT run of the same --sft until it is evaluated, the DPO data, the DPO run), so nothing runs twice.
Every finished row appends rag_outcome's JSON line, with `row` (its arguments) and `wall_s`, to --results; a
failed row appends `row`, `error` and its log's last lines. At --deadline seconds the rows still running are
killed (with the command each one runs), and the rows not started are listed as such: put the rows that matter
first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rag_outcome import eval_path, parser, run_dirs  # noqa: E402


def shared(argv: list[str]) -> list[tuple[Path, Path]] | None:
    """(what the row shares with rows of the same flags, the file that says it is done), as rag_outcome.py names
    them: its collected data, the SFT run (done once evaluated), the DPO data and the DPO run. None when
    rag_outcome.py would refuse the arguments."""
    try:
        a = parser().parse_args(argv)
    except SystemExit:
        return None
    sft_dir, dpo_dir, dpo_data = run_dirs(a)
    return [(a.out / "data", a.out / "data" / "card.json"), (dpo_data, dpo_data / "card.json"),
            (sft_dir, eval_path(a.out, sft_dir.name) / "eval.json"), (dpo_dir, dpo_dir / "run.json")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", type=Path, help="One rag_outcome.py argument line per row, in priority order.")
    ap.add_argument("--workers", type=int, default=4, help="Rows running at once.")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="Seconds; then running rows are killed.")
    ap.add_argument("--results", type=Path, default=Path("sweep.jsonl"))
    ap.add_argument("--logs", type=Path, default=Path("sweep-logs"), help="One log per row: row_N.log.")
    a = ap.parse_args()
    rows = [shlex.split(line) for line in a.rows.read_text().splitlines() if line.strip() and
            not line.lstrip().startswith("#")]
    a.logs.mkdir(parents=True, exist_ok=True)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve().parent / "rag_outcome.py"
    start, todo, running = time.time(), list(range(len(rows))), {}  # running: row index -> (process, start time)
    keys = [shared(row) for row in rows]

    def record(entry: dict) -> None:
        with a.results.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def ready(i: int) -> bool:  # nothing it shares is being made by a running row
        busy = {path for j in running for path, _ in keys[j]}
        return all(done.exists() or path not in busy for path, done in keys[i])

    for i in [i for i in todo if keys[i] is None]:
        todo.remove(i)
        record({"row": shlex.join(rows[i]), "error": "rag_outcome.py refuses these arguments"})
    while todo or running:
        for i, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[i]
            log = (a.logs / f"row_{i}.log").read_text(errors="replace").splitlines()
            entry = {"row": shlex.join(rows[i]), "wall_s": round(time.time() - t0, 1)}
            last = log[-1] if log else ""
            if proc.returncode == 0 and last.startswith("{"):
                record({**entry, **json.loads(last)})
            else:
                record({**entry, "error": f"exit {proc.returncode}", "log_tail": log[-15:]})
            print(f"[rag_sweep] row {i} done (exit {proc.returncode}, {entry['wall_s']} s)", flush=True)
        if time.time() - start > a.deadline:
            break
        for i in [i for i in todo if ready(i)][: a.workers - len(running)]:
            if not ready(i):  # a row started in this loop now makes something it shares
                continue
            todo.remove(i)
            with (a.logs / f"row_{i}.log").open("w") as log:  # the child keeps its own copy open
                running[i] = (subprocess.Popen([sys.executable, str(script), *rows[i]], stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True), time.time())
            print(f"[rag_sweep] row {i} started: {shlex.join(rows[i])}", flush=True)
        time.sleep(2)
    for i, (proc, t0) in running.items():
        os.killpg(proc.pid, signal.SIGKILL)  # rag_outcome and the prefopt command it runs
        record({"row": shlex.join(rows[i]), "error": "killed at the deadline", "wall_s": round(time.time() - t0, 1)})
    for i in todo:
        record({"row": shlex.join(rows[i]), "error": "not started before the deadline"})
    print(f"[rag_sweep] {len(rows)} rows, {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
