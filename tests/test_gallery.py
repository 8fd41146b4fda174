"""The retrieval gallery: valid self-contained HTML whose queries show their AP (the EK-100
definition) and whose results show rank, score and relevance in rank order, with links
between queries; and in headless Chromium it loads, every image decodes, a link navigates and
the console stays clean."""

import html.parser
import io
import re

import numpy as np
import pytest
from PIL import Image

from tempret_jax import gallery, metrics


class _Page(html.parser.HTMLParser):
    """The page's images, ids, local links and nesting errors."""

    VOID = ("meta", "br", "img")

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.ids, self.links = [], [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href", "").startswith("#"):
            self.links.append(attrs["href"][1:])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _random_gallery(tmp_path, n_clips=30, n_sentences=60, **kwargs):
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((n_clips, n_sentences))
    rel = rng.choice([0, 0.5, 1], (n_clips, n_sentences))
    frames = rng.integers(0, 255, (8, 48, 64, 3), dtype=np.uint8)
    read = []

    def clip_frames(i):
        read.append(i)
        return frames

    count = gallery.write_gallery(tmp_path / "gallery.html", sim, rel,
                                  [f"c{i}" for i in range(n_clips)],
                                  [f"cut <onion> {i}" for i in range(n_clips)],
                                  [f"s{j}" for j in range(n_sentences)], clip_frames, **kwargs)
    return (tmp_path / "gallery.html").read_text(), count, read, sim, rel


def test_gallery_is_valid_self_contained_html_with_every_link_resolved(tmp_path):
    text, count, read, _, _ = _random_gallery(tmp_path)
    page = _Page()
    page.feed(text)
    assert text.startswith("<!DOCTYPE html>") and not page.errors and not page.stack
    assert count == 30 * 5 + 15 == len(page.images)  # defaults: 30 sentences, 15 clips, top 5
    assert all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    assert "cut &lt;onion&gt;" in text and "<onion>" not in text  # text is escaped
    assert len(read) == len(set(read))  # each clip's frames are read once
    assert set(page.links) <= page.ids  # no dangling anchor
    queries = {i for i in page.ids if re.fullmatch(r"[tv]\d+", i)}
    assert len(queries) == 45 and queries <= set(page.links)  # the contents lists every query
    # Clips are drawn from the sentences' results: results link to other queries.
    assert sum(link.startswith("v") for link in page.links) > 15
    assert not (tmp_path / "gallery.html.tmp").exists() and len(list(tmp_path.iterdir())) == 1


def _section(text: str, anchor: str) -> str:
    return re.search(rf'<section class="query" id="{anchor}">(.*?)</section>', text)[1]


def test_a_sentence_shows_its_ap_and_its_clips_with_rank_score_and_relevance(tmp_path):
    # Sentence 0 ranks clips 2, 0, 1: relevance 0.5, 1, 0. Its AP: at the one hit (rank 2) the
    # precision counts raw relevance, (0.5 + 1) / 2 = 75%.
    sim = np.array([[0.8, 0.1], [0.2, 0.9], [0.9, 0.3]])
    rel = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    assert metrics.mir_per_row(sim, rel)["mAP", "t2v"][0] == 0.75
    gallery.write_gallery(tmp_path / "g.html", sim, rel, ["c0", "c1", "c2"],
                          ["wash pan", "open tap", "take pan"], ["pick pan", "turn on tap"],
                          lambda i: np.full((4, 8, 8, 3), 40 * i, np.uint8), top=3,
                          n_sentences=2, n_clips=3)
    text = (tmp_path / "g.html").read_text()
    section = _section(text, "t0")
    assert "pick pan" in section and "AP 75.0%" in section
    ranks = re.findall(r'class="rank">#(\d)</span>.*?score ([\d.-]+)</span>.*?rel ([\d.]+)<.*?'
                       r'<a href="#v(\d)">', section)
    assert ranks == [("1", "0.9000", "0.50", "2"), ("2", "0.8000", "1.00", "0"),
                     ("3", "0.2000", "0.00", "1")]
    # Clip 1 ranks sentence 1 first (a hit, AP 100%) and links to that sentence's section.
    clip = _section(text, "v1")
    assert "open tap" in clip and "AP 100.0%" in clip
    assert re.search(r'<td>#1</td><td>0.9000</td>.*?rel 1.00.*?<a href="#t1">turn on tap</a>',
                     clip)
    assert 'href="#t0"' in text and "(AP 75.0%)" in text  # the contents: query and its AP


def test_a_query_without_a_hit_says_its_ap_is_undefined(tmp_path):
    sim, rel = np.eye(2), np.array([[1.0, 0.0], [0.5, 0.0]])  # sentence 1: nothing relevant
    gallery.write_gallery(tmp_path / "g.html", sim, rel, ["c0", "c1"], ["a", "b"], ["x", "y"],
                          lambda i: np.zeros((2, 8, 8, 3), np.uint8), top=2)
    assert "AP n/a (no relevant item)" in _section((tmp_path / "g.html").read_text(), "t1")


def test_frame_strips_are_taller_and_span_the_clip():
    frames = np.stack([np.full((48, 64, 3), 20 * t, np.uint8) for t in range(10)])
    with Image.open(io.BytesIO(gallery.frame_strip(frames))) as strip:
        assert strip.height == gallery.STRIP_HEIGHT >= 112
        assert strip.width == gallery.STRIP_FRAMES * round(64 * strip.height / 48)
        grey = np.asarray(strip.convert("L"))
        width = strip.width // gallery.STRIP_FRAMES
        firsts = [int(grey[5, k * width + width // 2]) for k in range(gallery.STRIP_FRAMES)]
    assert firsts[0] == pytest.approx(0, abs=3) and firsts[-1] == pytest.approx(180, abs=3)


def test_the_gallery_in_headless_chromium(tmp_path, load_tool):
    browser = load_tool("browser")
    text, count, _, _, _ = _random_gallery(tmp_path)
    with browser.Chromium() as chromium:
        page = chromium.open((tmp_path / "gallery.html").as_uri())
        assert page.title() == "retrieval gallery"
        assert page.locator("img").count() == count
        assert browser.broken_images(page) == []
        assert page.locator("li.result .rank").first.inner_text() == "#1"
        score = page.locator("li.result .score").first.inner_text()
        assert re.fullmatch(r"score -?\d\.\d{4}", score)
        assert re.fullmatch(r"AP \d+\.\d%", page.locator("section.query .ap").first.inner_text())
        target = page.locator("nav#contents a[href^='#v']").first.get_attribute("href")
        page.locator(f"nav#contents a[href='{target}']").click()
        page.wait_for_function(f"location.hash === '{target}'")
        top = page.evaluate(
            f"document.getElementById('{target[1:]}').getBoundingClientRect().top")
        assert abs(top) < 5 and page.evaluate("window.scrollY") > 0  # scrolled to the section
        assert chromium.console_errors == []
