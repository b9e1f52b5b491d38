"""Markdown -> Telegram HTML, checked by the Bot API stand-in's parser (Telegram's rules)."""

from __future__ import annotations

import random

import pytest

from bot.render import plain, render, split_message, tg_len
from core.contracts.chat import TELEGRAM_TEXT_LIMIT
from testing.standins.telegram_api import parse_html


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("plain & <simple> \"text\"", 'plain &amp; &lt;simple&gt; "text"'),
        ("# Title with *stress*", "<b>Title with <i>stress</i></b>"),
        ("### Closed heading ###", "<b>Closed heading</b>"),
        ("#hashtag is not a heading", "#hashtag is not a heading"),
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*italic* and _italic_", "<i>italic</i> and <i>italic</i>"),
        ("~~gone~~", "<s>gone</s>"),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4"),
        ("a*b*c stays", "a*b*c stays"),
        ("`<b>not bold</b>` & **`code` in bold**",
         "<code>&lt;b&gt;not bold&lt;/b&gt;</code> &amp; <b><code>code</code> in bold</b>"),
        ("``with ` tick``", "<code>with ` tick</code>"),
        ("[the PR](https://forge.example/pr/1?a=1&b=\"2\")",
         '<a href="https://forge.example/pr/1?a=1&amp;b=&quot;2&quot;">the PR</a>'),
        ("[**bold** link](http://x.example)", '<a href="http://x.example"><b>bold</b> link</a>'),
        ("[no](javascript:alert(1)) [no](ftp://x)", "[no](javascript:alert(1)) [no](ftp://x)"),
        ("- one\n- two *2*\n1. three", "- one\n- two <i>2</i>\n1. three"),
        ("> quoted <b>", "&gt; quoted &lt;b&gt;"),
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("**unclosed bold and *unclosed italic", "**unclosed bold and *unclosed italic"),
        ("&amp; &#60; &bogus;", "&amp;amp; &amp;#60; &amp;bogus;"),
        ("one\n\n\n\ntwo", "one\n\ntwo"),
        ("```python\nif a < b:\n    print('**no**')\n```\nafter",
         '<pre><code class="language-python">if a &lt; b:\n    print(\'**no**\')</code></pre>'
         "\n\nafter"),
        ("```\nno language\n```", "<pre><code>no language</code></pre>"),
        ('```"><b>x\nbad language\n```', "<pre><code>bad language</code></pre>"),
        ("~~~\n<unclosed fence>\n**runs to the end**",
         "<pre><code>&lt;unclosed fence&gt;\n**runs to the end**</code></pre>"),
    ],
)  # fmt: skip
def test_markdown_renders_to_telegram_html(markdown: str, html: str) -> None:
    rendered = render(markdown)
    assert rendered == html
    parse_html(rendered)  # Telegram takes it


def test_whatever_an_agent_writes_gives_html_telegram_takes() -> None:
    pieces = ["*", "**", "_", "__", "`", "```", "~~", "[", "]", "(", ")", "<", ">", "&", "#",
              "# ", "\n", "\n\n", " ", "a", "word", "https://x.example/a", "[x](https://e.x/",
              "&amp;", "<b>", "</i>", "```py\n", "- ", "😀", '"']  # fmt: skip
    chooser = random.Random(5)
    for _ in range(2000):
        markdown = "".join(chooser.choice(pieces) for _ in range(chooser.randint(1, 200)))
        split = split_message(markdown, limit=200)
        for piece in [*split, render(markdown)]:
            try:
                parse_html(piece)
            except ValueError as exc:
                raise AssertionError(f"{markdown!r} -> {piece!r}: {exc}") from None
        assert all(tg_len(piece) <= 200 for piece in split), (markdown, split)
        # Nothing lost in the cutting (but the whitespace at the cuts).
        shown = "".join(plain(render(markdown)).split())
        assert "".join("".join(plain(piece) for piece in split).split()) == shown


def test_a_long_text_is_cut_between_paragraphs_first() -> None:
    paragraphs = [f"{i} " + "word " * 390 for i in range(5)]  # ~1950 characters each
    pieces = split_message("\n\n".join(paragraphs))
    assert len(pieces) == 3
    # Two paragraphs fit one message; none of them was cut.
    assert [piece.count("\n\n") for piece in pieces] == [1, 1, 0]
    assert plain("\n\n".join(pieces)).split() == " ".join(paragraphs).split()


def test_then_between_lines_then_anywhere_outside_a_tag() -> None:
    lines = "\n".join(f"line {i} with **bold {i}**" for i in range(400))  # one paragraph
    by_line = split_message(lines)
    assert len(by_line) > 1
    assert all(piece.endswith("</b>") for piece in by_line)  # each ends at a line's end
    assert all(piece.startswith("line ") for piece in by_line)

    one_line = "**" + "bold " * 1500 + "end** then [a link](https://x.example/" + "y" * 900 + ")"
    hard = split_message(one_line + " " + "z" * 5000)
    assert len(hard) >= 3
    for piece in hard:
        assert tg_len(piece) <= TELEGRAM_TEXT_LIMIT
        parse_html(piece)
    # The bold part was closed at the cut and opened again after it.
    assert hard[0].startswith("<b>") and hard[0].endswith("</b>")
    assert hard[1].startswith("<b>")
    assert "".join(plain(piece) for piece in hard) == plain(render(one_line + " " + "z" * 5000))


def test_a_long_code_block_becomes_several_closed_blocks() -> None:
    code = "\n".join(f"x{i} = '<{i}>' & {i}" for i in range(800))
    pieces = split_message(f"Here:\n\n```python\n{code}\n```\n\nDone.")
    assert len(pieces) > 2
    for piece in pieces:
        assert tg_len(piece) <= TELEGRAM_TEXT_LIMIT
        parse_html(piece)
    blocks = [p for p in pieces if '<pre><code class="language-python">' in p]
    assert len(blocks) == len(pieces)  # the text before and after shares a piece with the code
    shown = "\n".join(
        plain(piece).removeprefix("Here:\n\n").removesuffix("\n\nDone.") for piece in pieces
    )
    assert shown == code


def test_a_single_huge_line_of_code_and_emoji_count_as_telegram_counts() -> None:
    pieces = split_message("```\n" + "<&>" * 3000 + "\n```")
    for piece in pieces:
        assert tg_len(piece) <= TELEGRAM_TEXT_LIMIT
        parse_html(piece)  # never cut inside an entity
    assert "".join(plain(p) for p in pieces) == "<&>" * 3000

    emoji = split_message("😀" * 3000)  # two UTF-16 code units each
    assert [tg_len(piece) for piece in emoji] == [4096, 1904]


def test_no_text_is_no_message() -> None:
    assert split_message("") == []
    assert split_message("\n\n  \n") == []
