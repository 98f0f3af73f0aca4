"""Answer extraction (`\\boxed{…}`, else the last "Answer:" line, else "#### n") and comparison."""

from __future__ import annotations

import re

_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed")
    if start == -1:
        return None
    brace = text.find("{", start)
    if brace == -1:
        return None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index]
    return None


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = _ANSWER.findall(text)
    if found:
        return str(found[-1]).strip()
    if "####" in text:
        return text.rsplit("####", 1)[-1].strip()
    return None


def normalize(answer: str) -> str:
    text = answer.strip().strip("$").strip()
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("\\!", "").replace("\\,", "").replace(" ", "").rstrip(".")
    text = text.replace("dfrac", "frac").replace("tfrac", "frac").replace("\\left", "").replace("\\right", "")
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", text):
        text = text.replace(",", "")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return text


def is_correct(response: str, reference: str) -> bool:
    got = extract_answer(response)
    return got is not None and normalize(got) == normalize(reference)
