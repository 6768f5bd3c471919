"""prefopt.progress: plain lines in a log when stderr is not a terminal."""

from prefopt.progress import Progress


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(capsys):
    with Progress(20, "prefopt test: x") as progress:
        for _ in range(20):
            progress.advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("prefopt test: x 2/20 rows (10%), ")
    assert lines[-1].startswith("prefopt test: x 20/20 rows (100%), ") and lines[-1].endswith(" s")
    with Progress(0, "prefopt test: none", unit="prompts"):
        pass
    assert capsys.readouterr().err.startswith("prefopt test: none 0/0 prompts, ")
