"""Markdown as agents write it -> Telegram's HTML, safely, and split into messages Telegram takes.

Everything the agent wrote is escaped first; only the tags made here appear in the output, and each
one is opened and closed within one line (a code block within its block), so no input can produce
an unbalanced or unsupported tag. What is understood:

- fenced code blocks (```lang) -> ``<pre><code class="language-lang">``; an unclosed fence runs to
  the end;
- `inline code`, **bold** / __bold__, *italic* / _italic_, ~~strike~~, [text](http(s) URL);
- headings (``# Title``) -> a bold line;
- everything else (lists, quotes, tables) stays as the text it is.

:func:`split_message` cuts the result into pieces of at most ``TELEGRAM_TEXT_LIMIT`` characters
(counted in UTF-16 code units, as Telegram counts; the HTML itself fits, so the text shown does
too): between paragraphs where it can, else between lines, else anywhere outside a tag or an
entity, closing the open tags at the end of a piece and opening them again in the next. A long code
block becomes several closed code blocks.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from core.contracts.chat import TELEGRAM_TEXT_LIMIT

FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$")
HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")

# Leftmost match wins; at one position the alternatives are tried in this order. Link URLs are
# kept short: a split reopens a link's tag in every piece the link spans.
INLINE = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<code_text>.+?)(?P=ticks))"
    r"|(?P<link>\[(?P<link_text>[^\[\]]+)\]\((?P<url>https?://[^\s()<>]{1,1000})\))"
    r"|(?P<bold>\*\*(?=\S)(?P<bold_text>.+?)(?<=\S)\*\*"
    r"|(?<!\w)__(?=\S)(?P<bold_text2>.+?)(?<=\S)__(?!\w))"
    r"|(?P<strike>~~(?=\S)(?P<strike_text>.+?)(?<=\S)~~)"
    r"|(?P<italic>(?<![*\w])\*(?=[^\s*])(?P<italic_text>.+?)(?<=[^\s*])\*(?![*\w])"
    r"|(?<!\w)_(?=[^\s_])(?P<italic_text2>.+?)(?<=[^\s_])_(?!\w))"
)
# The first part of a split block joins the piece before it only if this much room is left.
MIN_FIRST = 80
TOKEN = re.compile(r"<[^>]*>|&[#\w]+;|[\s\S]")


def escape(text: str) -> str:
    return html.escape(text, quote=False)


def tg_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


# --- rendering ----------------------------------------------------------------------------------


@dataclass
class Block:
    """A paragraph (its lines, each balanced HTML) or a code block (its lines, escaped)."""

    lines: list[str]
    code: bool = False
    language: str | None = None

    def opening(self) -> str:
        if not self.code:
            return ""
        if self.language:
            return f'<pre><code class="language-{self.language}">'
        return "<pre><code>"

    def closing(self) -> str:
        return "</code></pre>" if self.code else ""

    def html(self, lines: list[str] | None = None) -> str:
        return self.opening() + "\n".join(self.lines if lines is None else lines) + self.closing()


def render(markdown: str) -> str:
    """The whole text as one HTML string (which may be longer than one message)."""
    return "\n\n".join(block.html() for block in blocks(markdown))


def blocks(markdown: str) -> list[Block]:
    found: list[Block] = []
    paragraph: list[str] = []
    code: Block | None = None
    fence = ""

    def end_paragraph() -> None:
        if paragraph:
            found.append(Block(list(paragraph)))
            paragraph.clear()

    for line in markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if code is not None:
            stripped = line.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                found.append(code)
                code = None
            else:
                code.lines.append(escape(line))
            continue
        opened = FENCE.match(line)
        if opened:
            end_paragraph()
            fence = opened.group(1)
            language = opened.group(2) if LANGUAGE.fullmatch(opened.group(2) or "") else None
            code = Block([], code=True, language=language)
        elif not line.strip():
            end_paragraph()
        else:
            paragraph.append(render_line(line))
    if code is not None:
        found.append(code)  # an unclosed fence runs to the end
    end_paragraph()
    return [block for block in found if block.lines or block.code]


def render_line(line: str) -> str:
    heading = HEADING.match(line)
    if heading:
        return f"<b>{inline(heading.group(1))}</b>"
    return inline(line.rstrip())


def inline(text: str, *, links: bool = True) -> str:
    out: list[str] = []
    pos = 0
    for match in INLINE.finditer(text):
        if match.group("link") and not links:
            # Inside a link's text: no link in a link. Keep the brackets as text.
            out.append(escape(text[pos : match.start()]) + escape("["))
            out.append(inline(match.group("link_text"), links=False))
            out.append(escape("](" + match.group("url") + ")"))
            pos = match.end()
            continue
        out.append(escape(text[pos : match.start()]))
        out.append(_token(match, links))
        pos = match.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def _token(match: re.Match[str], links: bool) -> str:
    if match.group("code"):
        return f"<code>{escape(match.group('code_text'))}</code>"
    if match.group("link"):
        url = html.escape(match.group("url"), quote=True)
        return f'<a href="{url}">{inline(match.group("link_text"), links=False)}</a>'
    if match.group("bold"):
        inner = match.group("bold_text") or match.group("bold_text2")
        return f"<b>{inline(inner, links=links)}</b>"
    if match.group("strike"):
        return f"<s>{inline(match.group('strike_text'), links=links)}</s>"
    inner = match.group("italic_text") or match.group("italic_text2")
    return f"<i>{inline(inner, links=links)}</i>"


# --- splitting ----------------------------------------------------------------------------------


def split_message(markdown: str, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """The text rendered, in pieces of at most ``limit`` (UTF-16 units) each; [] for no text."""
    if limit < 200:
        raise ValueError("a limit under 200 leaves no room for the tags")
    pieces: list[str] = []
    current = ""
    for block in blocks(markdown):
        whole = block.html()
        if current and tg_len(current) + 2 + tg_len(whole) <= limit:
            current += "\n\n" + whole
            continue
        if tg_len(whole) <= limit:
            if current:
                pieces.append(current)
            current = whole
            continue
        # Too long for any message: its lines, the first ones filling what this piece has left.
        left = limit - tg_len(current) - 2 if current else limit
        parts = _split_block(block, limit, first=left)
        if current and parts and tg_len(current) + 2 + tg_len(parts[0]) <= limit:
            current += "\n\n" + parts.pop(0)
        if current:
            pieces.append(current)
        current = parts.pop() if parts else ""
        pieces.extend(parts)
    if current:
        pieces.append(current)
    return pieces


def _split_block(block: Block, limit: int, *, first: int) -> list[str]:
    """A block too long for one message in parts: its lines, grouped, the first group at most
    ``first`` long (if that leaves room for a line at all), the others ``limit``. A code
    block's parts are each a closed code block."""
    wrap = tg_len(block.opening() + block.closing())
    room = first - wrap if first - wrap >= MIN_FIRST else limit - wrap
    parts: list[str] = []
    group: list[str] = []
    size = 0
    for line in block.lines:
        for chunk in _cut_line(line, limit - wrap) if tg_len(line) > limit - wrap else [line]:
            extra = tg_len(chunk) + (1 if group else 0)
            if size + extra > room:
                if group:
                    parts.append(block.html(group))
                group, size, room = [], 0, limit - wrap
                extra = tg_len(chunk)
            group.append(chunk)
            size += extra
    if group:
        parts.append(block.html(group))
    return parts


def _cut_line(line: str, room: int) -> list[str]:
    """One line of balanced HTML in pieces of at most ``room``, never inside a tag or an
    entity: the tags open at a cut are closed before it and opened again after it."""
    pieces: list[str] = []
    stack: list[str] = []  # opening tags in force
    current: list[str] = []
    size = 0  # of current
    closing = 0  # of the closing tags the stack needs
    fresh = 0  # opening tags at the very end of current, with nothing after them yet
    for token in TOKEN.findall(line):
        is_close = token.startswith("</")
        is_open = token.startswith("<") and not is_close
        grow = tg_len(token) + (tg_len(_closing([token])) if is_open else 0)
        # A closing tag never needs a cut: the room for it was kept all along.
        if not is_close and size + grow + closing > room and len(current) > fresh:
            # Tags opened right before the cut would be empty here: they start the next piece.
            kept = len(current) - fresh
            pieces.append("".join(current[:kept]) + _closing(stack[: len(stack) - fresh]))
            current = list(stack)
            size = sum(tg_len(tag) for tag in stack)
            fresh = len(stack)
        current.append(token)
        size += tg_len(token)
        if is_close:
            closing -= tg_len(token)
            stack.pop()
            fresh = 0
        elif is_open:
            stack.append(token)
            closing += tg_len(_closing([token]))
            fresh += 1
        else:
            fresh = 0
    if current:
        pieces.append("".join(current))
    return pieces


def _closing(stack: list[str]) -> str:
    return "".join(f"</{_tag_name(tag)}>" for tag in reversed(stack))


def _tag_name(tag: str) -> str:
    return tag[1:-1].split()[0]


def plain(piece: str) -> str:
    """A rendered piece as plain text: what Telegram would show, without the formatting."""
    return html.unescape(re.sub(r"<[^>]*>", "", piece))
