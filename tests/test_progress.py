"""prefopt.progress: plain lines in a log when stderr is not a terminal."""

from prefopt.progress import Progress


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    import prefopt.progress

    clock = iter(range(0, 1000, 3))  # 3 s per call: a line every other 10% step (5 s apart), none quicker
    monkeypatch.setattr(prefopt.progress.time, "monotonic", lambda: next(clock))
    with Progress(20, "prefopt test: x") as progress:
        for _ in range(20):
            progress.advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("prefopt test: x 2/20 rows (10%), 6 s")
    assert lines[-1].startswith("prefopt test: x 20/20 rows (100%), ") and lines[-1].endswith(" s")
    with Progress(0, "prefopt test: none", unit="prompts"):
        pass
    assert capsys.readouterr().err.startswith("prefopt test: none 0/0 prompts, ")


def test_a_quick_stage_prints_its_final_line_only(capsys):
    with Progress(50, "prefopt test: quick") as progress:
        for _ in range(50):
            progress.advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefopt test: quick 50/50 rows (100%), ")
