"""Write `chatterbot_qa_sharegpt.jsonl`: the chat recipe's instruction pairs as ShareGPT conversations.

Each line of `chatterbot_qa.jsonl` (`instruction`, `response`, `topic`) becomes
`{"conversations": [{"from": "human", "value": instruction}, {"from": "gpt", "value": response}], "topic": topic}`,
in the same order, so `load_data` splits both files alike. The recipe reads either; a test checks that they give
the same tokenized training examples. Run from anywhere: `python pipelines/recipes/data/make_sharegpt_copy.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE, COPY = HERE / "chatterbot_qa.jsonl", HERE / "chatterbot_qa_sharegpt.jsonl"


def sharegpt_lines(text: str) -> list[str]:
    """The ShareGPT line for each JSON line of the pairs file."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        turns = [{"from": "human", "value": row["instruction"]}, {"from": "gpt", "value": row["response"]}]
        out.append(json.dumps({"conversations": turns, "topic": row.get("topic")}, ensure_ascii=False))
    return out


def main() -> None:
    """Write the copy next to the source."""
    lines = sharegpt_lines(SOURCE.read_text(encoding="utf-8"))
    COPY.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} conversations to {COPY}")


if __name__ == "__main__":
    main()
