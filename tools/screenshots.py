"""Regenerates the screenshots in docs/screenshots/ from an evaluated run.

    python -m tempret_jax.main --config configs/synthetic.py --workdir runs/demo   # train
    python -m tempret_jax.main --mode eval --workdir runs/demo    # eval/: plots and gallery
    python tools/screenshots.py --workdir runs/demo --tensorboard /path/to/tensorboard

Writes gallery.png and gallery_video_to_text.png (eval/gallery.html in headless Chromium),
verb_ap.png and training_curves.png (the evaluation's plots, re-encoded), search.png (the
search page of `tempret_jax.search_server` after a query) and tensorboard.png (TensorBoard's
Scalars dashboard of <workdir>/tensorboard: loss and mAP). Needs the system's Chromium and
Playwright (the test extra; tools/browser.py) and a TensorBoard executable, which is not a
dependency of the package: install it apart (``python3 -m venv tb && tb/bin/pip install
tensorboard``).
Each PNG is palette-quantised to stay small for the repository.
"""

import argparse
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from PIL import Image

import browser
from tempret_jax import search, search_server

REPO = pathlib.Path(__file__).resolve().parent.parent
WAIT_S = 60  # TensorBoard's start-up and a page's drawing are given this long


def small_png(source, target: pathlib.Path, max_width: int = 1200) -> None:
    """``source`` (a path or a PIL image) as a palette PNG at most ``max_width`` wide."""
    image = source if isinstance(source, Image.Image) else Image.open(source)
    image = image.convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)),
                             Image.Resampling.LANCZOS)
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    print(f"{target}: {target.stat().st_size // 1024} kB")


def shoot(page, target: pathlib.Path) -> None:
    """The page's viewport as a small PNG at ``target``."""
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    small_png(raw, target)
    raw.unlink()


def gallery(chromium, workdir: pathlib.Path, out: pathlib.Path) -> None:
    page = chromium.open((workdir / "eval" / "gallery.html").as_uri())
    page.evaluate("document.querySelector('#text-to-video').scrollIntoView()")
    shoot(page, out / "gallery.png")
    page.evaluate("document.querySelector('#video-to-text').scrollIntoView()")
    shoot(page, out / "gallery_video_to_text.png")


def search_page(chromium, workdir: pathlib.Path, out: pathlib.Path) -> None:
    searcher = search.Searcher.open(workdir)
    server = search_server.serve(searcher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = chromium.open(f"http://127.0.0.1:{server.server_address[1]}/")
        page.locator("#q").fill(str(searcher.index.narrations[0]))
        page.locator("button[type=submit]").click()
        page.wait_for_selector("#results li.result")
        shoot(page, out / "search.png")
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard(chromium, executable: str, workdir: pathlib.Path, out: pathlib.Path) -> None:
    """TensorBoard on a free loopback port, its Scalars page shot, then stopped."""
    port = free_port()
    process = subprocess.Popen([executable, "--logdir", str(workdir / "tensorboard"), "--host",
                                "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"TensorBoard did not answer on {url}") from None
                time.sleep(0.5)
        # The training loss and the evaluations' mAP; outliers kept: two evaluations are both.
        page = chromium.open(f"{url}/#scalars&tagFilter=loss%7CmAP_avg")
        page.wait_for_load_state("networkidle")
        page.get_by_text("Ignore outliers in chart scaling").click()
        page.wait_for_timeout(8000)  # the charts draw after their data arrives
        shoot(page, out / "tensorboard.png")
    finally:
        process.terminate()
        process.wait(WAIT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True,
                        help="a trained run evaluated with --mode eval")
    parser.add_argument("--tensorboard", default="tensorboard", help="TensorBoard executable")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    eval_dir = args.workdir / "eval"
    needed = [eval_dir / n for n in ("gallery.html", "verb_ap.png", "training_curves.png")]
    missing = [str(p) for p in needed + [args.workdir / "tensorboard"] if not p.exists()]
    if missing:
        sys.exit(f"error: {', '.join(missing)} missing: train and evaluate the run first "
                 "(see this script's docstring)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("verb_ap.png", "training_curves.png"):
        small_png(eval_dir / name, args.out / name)
    with browser.Chromium(width=1200, height=800) as chromium:
        gallery(chromium, args.workdir, args.out)
        search_page(chromium, args.workdir, args.out)
        tensorboard(chromium, args.tensorboard, args.workdir, args.out)


if __name__ == "__main__":
    main()
