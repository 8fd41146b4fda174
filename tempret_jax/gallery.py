"""The retrieval gallery: a self-contained HTML results page, and the pieces the search page
(`tempret_jax.search_server`) shares with it.

`write_gallery` shows, for random test sentences, their top clips (text to video) and, for clips
drawn from those results, their top sentences (video to text). Each query has its AP (the
EK-100 definition: `metrics.mir_per_row`) and an anchor (``#t<sentence>``, ``#v<clip>``);
each result has its rank, score and relevance (a number and a colour), and links to its own
section when it is also a shown query. Clips are strips of frames spread over the clip. Images
are data: URIs, so the page is one file; it is written atomically (`tempret_jax.atomic`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from tempret_jax import atomic, metrics

STRIP_HEIGHT = 112  # pixels of a clip's strip: frames readable at a glance
STRIP_FRAMES = 4

# Shared by the gallery and the search page.
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}
a{color:#1a5fb4} h3{margin:0.2em 0}
section.query{border-top:1px solid #ccc;padding:0.6em 0 1em}
ol.results{list-style:none;padding:0;margin:0.4em 0}
li.result{display:flex;gap:0.8em;align-items:center;margin:0.35em 0;padding:0.3em;
  border-left:8px solid #999;background:#fafafa}
.meta{min-width:9em;font-size:0.9em;line-height:1.5}
.rank{font-size:1.4em;font-weight:bold}
.rel{color:#fff;border-radius:3px;padding:0 0.35em;font-weight:bold}
.ap{font-weight:normal;color:#555;font-size:0.85em;margin-left:0.6em}
img.strip{height:%dpx;display:block}
table.sentences td,table.sentences th{padding:0.15em 0.6em;text-align:left}
nav ol{columns:2;font-size:0.9em}
""" % STRIP_HEIGHT


def frame_strip(frames: Sequence[np.ndarray], height: int = STRIP_HEIGHT,
                count: int = STRIP_FRAMES) -> bytes:
    """JPEG of ``count`` frames spread evenly over the clip, side by side, ``height`` pixels
    high. frames: (T,) of (H, W, 3) uint8."""
    t = len(frames)
    picks = np.linspace(0, t - 1, min(count, t)).round().astype(int)
    images = [Image.fromarray(np.asarray(frames[i], np.uint8)) for i in picks]
    width = [round(im.width * height / im.height) for im in images]
    strip = Image.new("RGB", (sum(width), height))
    x = 0
    for im, w in zip(images, width):
        strip.paste(im.resize((w, height), Image.Resampling.BICUBIC), (x, 0))
        x += w
    out = io.BytesIO()
    strip.save(out, format="JPEG", quality=80)
    return out.getvalue()


def strip_image(frames: Sequence[np.ndarray], alt: str) -> str:
    """An <img> of the clip's `frame_strip`, embedded as a data: URI."""
    data = base64.b64encode(frame_strip(frames)).decode()
    return f'<img class="strip" alt="{html.escape(alt)}" src="data:image/jpeg;base64,{data}">'


def _relevance_colour(rel: float) -> str:
    """Green for a hit (rel 1, what mAP counts), amber partly relevant, red not relevant."""
    if rel >= 1:
        return "#2e7d32"
    return "#e0a000" if rel > 0 else "#c62828"


def _relevance_badge(rel: float) -> str:
    return (f'<span class="rel" style="background:{_relevance_colour(rel)}">'
            f"rel {rel:.2f}</span>")


def result_item(rank: int, score: float, body: str, rel: float | None = None) -> str:
    """One ranked clip: rank, score, relevance (when known) and ``body`` (HTML: strip and
    caption)."""
    border = f' style="border-left-color:{_relevance_colour(rel)}"' if rel is not None else ""
    badge = f"<br>{_relevance_badge(rel)}" if rel is not None else ""
    return (f'<li class="result"{border}><div class="meta"><span class="rank">#{rank}</span><br>'
            f'<span class="score">score {score:.4f}</span>{badge}</div><div>{body}</div></li>')


def page(title: str, body: str) -> str:
    """A complete HTML document with the shared style."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def _ap_text(ap: float) -> str:
    return f"AP {100 * ap:.1f}%" if np.isfinite(ap) else "AP n/a (no relevant item)"


def _link(anchor: str, text: str, shown: bool) -> str:
    return f'<a href="#{anchor}">{text}</a>' if shown else text


def _pick_queries(sim: np.ndarray, n_sentences: int, n_clips: int, top: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(sentence indices, clip indices) to show, ascending: random sentences, then random clips
    among their top results (so the two directions link to each other), topped up with other
    random clips when those are too few."""
    rng = np.random.default_rng(seed)
    n_sentences, n_clips = min(n_sentences, sim.shape[1]), min(n_clips, sim.shape[0])
    sentences = np.sort(rng.choice(sim.shape[1], n_sentences, replace=False))
    shown = np.unique(np.argsort(-sim[:, sentences], axis=0, kind="stable")[:top])
    clips = rng.choice(shown, min(n_clips, len(shown)), replace=False)
    others = np.setdiff1d(np.arange(sim.shape[0]), shown)
    extra = rng.choice(others, n_clips - len(clips), replace=False)
    return sentences, np.sort(np.concatenate([clips, extra]).astype(int))


def write_gallery(path, sim: np.ndarray, rel: np.ndarray, clip_ids: Sequence[str],
                  clip_narrations: Sequence[str], sentences: Sequence[str],
                  clip_frames: Callable[[int], Sequence[np.ndarray]], *, n_sentences: int = 30,
                  n_clips: int = 15, top: int = 5, seed: int = 0, title: str = "",
                  per_row: dict | None = None) -> int:
    """Writes the gallery (module docstring) to ``path``; returns the number of images.

    Args:
      path: output .html.
      sim, rel: (n_clips, n_sentences).
      clip_ids, clip_narrations: (n_clips,) the clips' narration_ids and narrations.
      sentences: (n_sentences,) the sentence texts.
      clip_frames: clip index -> its frames, (T,) of (H, W, 3) uint8; called once per shown clip.
      n_sentences, n_clips: how many queries of each direction to show; top: results per query.
      per_row: `metrics.mir_per_row(sim, rel)` when the caller has it (else computed here).
    """
    sim, rel = np.asarray(sim), np.asarray(rel)
    per_row = per_row if per_row is not None else metrics.mir_per_row(sim, rel)
    texts, clips = _pick_queries(sim, n_sentences, n_clips, top, seed)
    g = _Gallery(sim, rel, clip_ids, clip_narrations, sentences, clip_frames,
                 set(texts.tolist()), set(clips.tolist()))
    ap_t2v, ap_v2t = per_row["mAP", "t2v"], per_row["mAP", "v2t"]
    contents = _contents([(f"t{j}", g.sentence(j), ap_t2v[j]) for j in texts],
                         [(f"v{i}", g.clip_label(i), ap_v2t[i]) for i in clips])
    t2v = "".join(g.text_query(j, top, ap_t2v[j]) for j in texts)
    v2t = "".join(g.clip_query(i, top, ap_v2t[i]) for i in clips)
    body = (f"<h1>{html.escape(title or 'Retrieval gallery')}</h1>{_legend()}{contents}"
            f'<h2 id="text-to-video">Text to video: the top {top} clips of {len(texts)} '
            f"sentences</h2>{t2v}"
            f'<h2 id="video-to-text">Video to text: the top {top} sentences of {len(clips)} '
            f"clips</h2>{v2t}")
    atomic.write_bytes(path, page(title or "retrieval gallery", body).encode())
    return g.images


class _Gallery:
    """The sections of one gallery; each shown clip's strip is made once (``images`` counts
    the <img> tags written)."""

    def __init__(self, sim, rel, clip_ids, clip_narrations, sentences, clip_frames,
                 shown_texts: set[int], shown_clips: set[int]):
        self.sim, self.rel, self.sentences = sim, rel, sentences
        self.clip_ids, self.clip_narrations = clip_ids, clip_narrations
        self.clip_frames = clip_frames
        self.shown_texts, self.shown_clips = shown_texts, shown_clips
        self.strips: dict[int, str] = {}
        self.images = 0

    def sentence(self, j: int) -> str:
        return html.escape(str(self.sentences[j]))

    def clip_label(self, i: int) -> str:
        return f"{html.escape(str(self.clip_ids[i]))}: {html.escape(str(self.clip_narrations[i]))}"

    def strip(self, i: int) -> str:
        if i not in self.strips:
            self.strips[i] = strip_image(self.clip_frames(i), str(self.clip_ids[i]))
        self.images += 1
        return self.strips[i]

    def text_query(self, j: int, top: int, ap: float) -> str:
        """A sentence's section: its top clips, each linked to its own section if shown."""
        items = "".join(
            result_item(r + 1, self.sim[i, j], self.strip(i) + _link(
                f"v{i}", self.clip_label(i), i in self.shown_clips), self.rel[i, j])
            for r, i in enumerate(np.argsort(-self.sim[:, j], kind="stable")[:top]))
        return (f'<section class="query" id="t{j}"><h3>&ldquo;{self.sentence(j)}&rdquo;'
                f'<span class="ap">{_ap_text(ap)}</span></h3>'
                f'<ol class="results">{items}</ol></section>')

    def clip_query(self, i: int, top: int, ap: float) -> str:
        """A clip's section: its strip and its top sentences, each linked if shown."""
        rows = "".join(
            f"<tr><td>#{r + 1}</td><td>{self.sim[i, j]:.4f}</td>"
            f"<td>{_relevance_badge(self.rel[i, j])}</td>"
            f"<td>{_link(f't{j}', self.sentence(j), j in self.shown_texts)}</td></tr>"
            for r, j in enumerate(np.argsort(-self.sim[i], kind="stable")[:top]))
        return (f'<section class="query" id="v{i}"><h3>{self.clip_label(i)}<span class="ap">'
                f'{_ap_text(ap)}</span></h3>{self.strip(i)}<table class="sentences">'
                f"<tr><th>rank</th><th>score</th><th>relevance</th><th>sentence</th></tr>"
                f"{rows}</table></section>")


def _legend() -> str:
    return ("<p>Each query shows its AP (EK-100 mAP's definition: precision over raw relevance "
            "at each hit). Results: rank, score, relevance: "
            f"{_relevance_badge(1.0)} a hit, {_relevance_badge(0.5)} partly relevant, "
            f"{_relevance_badge(0.0)} not relevant. A linked result is also a query on this "
            "page.</p>")


def _contents(texts: list[tuple[str, str, float]], clips: list[tuple[str, str, float]]) -> str:
    """The table of contents: every query (anchor, label HTML, AP), linked to its section."""
    texts, clips = ("".join(f'<li><a href="#{anchor}">{label}</a> ({_ap_text(ap)})</li>'
                            for anchor, label, ap in queries) for queries in (texts, clips))
    return (f'<nav id="contents"><h2>Contents</h2><h3><a href="#text-to-video">Text to video'
            f"</a></h3><ol>{texts}</ol><h3><a href=\"#video-to-text\">Video to text</a></h3>"
            f"<ol>{clips}</ol></nav>")
