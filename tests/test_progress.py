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


def test_reading_a_checkpoint_shows_its_bytes_read_with_rate_and_eta(monkeypatch, tmp_path):
    import torch

    from tempret_jax import torch_files

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.arange(300_000, dtype=torch.float32)}, path)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    contents = torch_files.read(path)
    assert torch.equal(contents["w"], torch.arange(300_000, dtype=torch.float32))
    shown = terminal.getvalue()
    size_kib = path.stat().st_size / 1024
    assert "reading weights.pt" in shown and "B/s" in shown
    assert f"{size_kib:.2f}k" in shown or f"{size_kib / 1024:.2f}M" in shown, shown[-300:]
