"""Long loops show a progress bar with rate and ETA on a terminal, and nothing otherwise."""

import io

from tempret_jax import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_shows_rate_and_eta_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress.bar(4, "embedding clips", unit="clips") as bar:
        bar.update(2)
        bar.refresh()
    shown = terminal.getvalue()
    assert "embedding clips" in shown and "2/4" in shown and "clips/s" in shown and "<" in shown


def test_a_bar_is_silent_when_stderr_is_not_a_terminal(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    with progress.bar(4, "embedding clips") as bar:
        bar.update(4)
    assert log.getvalue() == ""
