"""The three-tag answer format every game uses, and the pieces of it the parsers and rewards read.

A well-formed answer is ``<perception>…</perception><think>…</think><answer>…</answer>``: each tag
pair exactly once, in that order, with only white space around and between the blocks.
"""

from __future__ import annotations

import re

TAGS = ("perception", "think", "answer")

_BLOCK = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL) for tag in TAGS}
_ORDER = tuple(f"<{edge}{tag}>" for tag in TAGS for edge in ("", "/"))
_ANY_TAG = re.compile(r"</?(?:perception|think|answer)>")


def block(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>…</tag>`` block, or None when there is none."""
    found = _BLOCK[tag].findall(text)
    return found[-1] if found else None


def is_well_formed(text: str) -> bool:
    """True when the three tag pairs each appear exactly once, in the order perception, think, answer.

    Text outside the blocks (a leading "Sure," say) is allowed; the check is linear in the reply's length.
    """
    if any(text.count(tag) != 1 for tag in _ORDER):
        return False
    positions = [text.index(tag) for tag in _ORDER]
    return positions == sorted(positions)


def answer_text(text: str) -> str | None:
    """The part of a model's reply that holds the move.

    The ``<answer>`` block when there is one; the whole reply when it uses no tags at all (a bare
    ``(0, 1) (2, 3)`` or ``2``); None when it has tags but no complete answer block.
    """
    content = block(text, "answer")
    if content is not None:
        return content
    if _ANY_TAG.search(text):
        return None
    return text


def perception_matches(text: str, truth: str) -> bool:
    """Perception reward test: the ground-truth board text appears verbatim in the perception block."""
    content = block(text, "perception")
    return content is not None and truth in content


def perception_exact(text: str, truth: str) -> bool:
    """Exact-match test: the perception block is the ground-truth board text, give or take edge newlines."""
    content = block(text, "perception")
    return content is not None and content.strip("\r\n") == truth.strip("\r\n")


def _cells(board: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")] for line in board.strip("\r\n").splitlines()]


def perception_cell_accuracy(text: str, truth: str) -> float:
    """Share of the ground-truth board's cells that the perception block gets right, row by row and
    column by column ('|'-separated, spaces ignored); 0 without a perception block. It shows a model
    learning to read long before whole boards come out exact."""
    want = _cells(truth)
    content = block(text, "perception")
    got = _cells(content) if content is not None else []
    total = sum(len(row) for row in want)
    right = sum(
        cell == (got[r][c] if r < len(got) and c < len(got[r]) else None)
        for r, row in enumerate(want)
        for c, cell in enumerate(row)
    )
    return right / total if total else 0.0


def with_perception(text: str, truth: str) -> str:
    """The reply with its (last) perception block replaced by the exact board text -- G1's
    perception-enhanced cold start. A reply without a perception block is returned unchanged."""
    spans = [m.span(1) for m in _BLOCK["perception"].finditer(text)]
    if not spans:
        return text
    start, end = spans[-1]
    return text[:start] + "\n" + truth + "\n" + text[end:]


def compose(perception: str, think: str, answer: str) -> str:
    """Write a well-formed three-tag answer."""
    return f"<perception>\n{perception}\n</perception>\n<think>{think}</think>\n<answer>{answer}</answer>"


_PAIR = re.compile(r"\(\s*([+-]?[0-9]{1,9})\s*,\s*([+-]?[0-9]{1,9})\s*\)")
_INT = re.compile(r"(?<![\w.])[+-]?[0-9]+(?!\w|\.[0-9])")  # "2" and "2." but not "2.5" or "x2"


def parse_cell_pair(text: str, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """``(r1, c1) (r2, c2)`` (a comma between the pairs and any spacing allowed) -> (r1, c1, r2, c2).

    None unless the answer names exactly two cells, both on the board.
    """
    content = answer_text(text)
    if content is None:
        return None
    pairs = _PAIR.findall(content)
    if len(pairs) != 2:
        return None
    (r1, c1), (r2, c2) = ((int(r), int(c)) for r, c in pairs)
    if not (0 <= r1 < rows and 0 <= r2 < rows and 0 <= c1 < cols and 0 <= c2 < cols):
        return None
    return r1, c1, r2, c2


def parse_choice(text: str, n: int, words: tuple[str, ...] = ()) -> int | None:
    """A single action number in ``range(n)`` (or one of ``words``, by index) -> that number, else None."""
    content = answer_text(text)
    if content is None:
        return None
    numbers = _INT.findall(content)
    if len(numbers) == 1:
        value = int(numbers[0]) if len(numbers[0]) < 12 else -1
        return value if 0 <= value < n else None
    if numbers:
        return None
    lowered = re.findall(r"[a-z]+", content.lower())
    hits = {words.index(w) for w in lowered if w in words}
    return hits.pop() if len(hits) == 1 else None
