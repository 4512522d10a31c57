"""``runs/demo/index.html``: one static page (no server, no scripts, relative links) from the ``part.json`` of
every part found under the demo directory: each part's results table with the command of each row, its
figures (PR and loss curves) and its gallery (the same val images as teacher / baseline / distilled detections).
"""
from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path

PART_ORDER = ("faces", "shapes", "facerec")

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}details{margin:.3em 0}code{font-size:85%;word-break:break-all}
.gallery td{text-align:center;vertical-align:top}.gallery img{max-width:360px}img.fig{max-width:100%}
.note{color:#a40}"""


def _img(src: str, cls: str = "") -> str:
    return f'<img src="{escape(src)}" alt="{escape(Path(src).name)}"{f" class={cls!r}" if cls else ""}>'


def _part_html(part: dict, rel: str) -> list[str]:
    """The section of one part; ``rel`` is the part directory relative to the page (prefix of its paths)."""
    def link(p: str) -> str:
        return f"{rel}/{p}" if rel not in ("", ".") else p

    out = [f'<h2 id="{escape(part["key"])}">{escape(part["title"])}</h2>', f"<p>{escape(part['intro'])}</p>"]
    out += [f'<p class="note">{escape(n)}</p>' for n in part.get("notes", [])]
    if part["rows"]:
        out.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in part["header"]) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in part["rows"]]
        out.append("</table>")
        out.append("<details><summary>commands that reproduce each row</summary><ol>")
        out += [f"<li><code>{escape(c)}</code></li>" for c in part["commands"]]
        out.append("</ol></details>")
    for fig in part.get("figures", []):
        out.append(f"<p>{_img(link(fig), 'fig')}</p>")
    if part.get("gallery"):
        models = part.get("gallery_models", [])
        out.append('<table class="gallery"><tr><th>val image</th>'
                   + "".join(f"<th>{escape(m)}</th>" for m in models) + "</tr>")
        for image_id, paths in part["gallery"].items():
            out.append(f"<tr><td>{escape(image_id)}</td>" + "".join(f"<td>{_img(link(p))}</td>" for p in paths)
                       + "</tr>")
        out.append("</table><p>Red: detections with their scores; green: ground truth.</p>")
    out.append(f"<p>({part.get('wall_s', 0):.0f} s)</p>")
    return out


def find_parts(demo_dir: Path) -> list[tuple[Path, dict]]:
    """``(part directory, part.json content)`` of every part under ``demo_dir``, in the page's order."""
    found = [(p.parent, json.loads(p.read_text())) for p in sorted(Path(demo_dir).glob("*/part.json"))]
    rank = {k: i for i, k in enumerate(PART_ORDER)}
    return sorted(found, key=lambda x: rank.get(x[1].get("key"), len(rank)))


def write_index(demo_dir: Path, command: str = "detkd demo") -> Path:
    """Write ``<demo_dir>/index.html`` from the parts found there; returns its path."""
    demo_dir = Path(demo_dir)
    parts = find_parts(demo_dir)
    html = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>detkd demo</title>',
            f"<style>{STYLE}</style></head><body>", "<h1>detkd demo: teacher, baseline and distilled students</h1>",
            f"<p>Made by <code>{escape(command)}</code>. Every number is one seed of a CPU-sized schedule; it "
            "depends on the machine and the thread count (the repository's benchmarks pair several seeds).</p>"]
    if parts:
        html.append("<ul>" + "".join(f'<li><a href="#{escape(p["key"])}">{escape(p["title"])}</a></li>'
                                     for _, p in parts) + "</ul>")
    else:
        html.append('<p class="note">No part has run yet.</p>')
    for part_dir, part in parts:
        html += _part_html(part, Path(os.path.relpath(part_dir, demo_dir)).as_posix())
    html.append("</body></html>")
    out = demo_dir / "index.html"
    out.write_text("\n".join(html) + "\n")
    return out
